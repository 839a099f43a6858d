"""eval/load.py: a training checkpoint is read once when more than its backbone is wanted."""

import pytest
import torch
from conftest import tiny_config

import mocolab.eval.load as load
from mocolab.checkpoint import CheckpointError
from mocolab.methods import build_method


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    cfg = tiny_config()
    model = build_method(cfg)
    path = tmp_path / "final.pth"
    torch.save({"model": model.state_dict(), "config": cfg.to_dict()}, path)
    return path, model


def _count_reads(monkeypatch) -> list:
    reads = []
    real = load.safe_load

    def counting(path, *a, **kw):
        reads.append(str(path))
        return real(path, *a, **kw)

    monkeypatch.setattr(load, "safe_load", counting)
    return reads


@pytest.mark.parametrize("features", ["head", "backbone"])
def test_load_for_eval_reads_a_training_checkpoint_once(checkpoint, monkeypatch, features):
    path, model = checkpoint
    reads = _count_reads(monkeypatch)
    net, cfg = load.load_for_eval(str(path), features, None)
    assert reads == [str(path)]
    # the network is f_q (with its head) or its backbone, weights as saved
    want = model.encoder_q if features == "head" else model.encoder_q.backbone
    got = net.state_dict()
    assert set(got) == set(want.state_dict())
    assert all(torch.equal(got[k], v) for k, v in want.state_dict().items())


def test_load_weights_takes_the_content_already_read(checkpoint, monkeypatch):
    path, model = checkpoint
    obj = torch.load(path, map_location="cpu", weights_only=True)
    reads = _count_reads(monkeypatch)
    sd, meta = load.load_weights(path, obj)
    assert reads == [] and "config" in meta
    assert sd.keys() == model.encoder_q.backbone.state_dict().keys()
    assert load.load_weights(path)[0].keys() == sd.keys() and reads == [str(path)]


def test_head_features_of_an_export_are_a_one_line_error(checkpoint, tmp_path):
    from mocolab.export import export

    path, _ = checkpoint
    out = tmp_path / "backbone.safetensors"
    export(path, "safetensors", out)
    with pytest.raises(CheckpointError, match="needs a mocolab training checkpoint"):
        load.load_for_eval(str(out), "head", None)
