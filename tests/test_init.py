"""Continued pretraining (--init / model.init): both encoders start from given weights, a training
checkpoint also gives f_k and the head, the queue starts full of real keys, and the schedule and
optimizer start fresh; a backbone of another architecture is a one-line error naming both."""

import json

import pytest
import torch
from conftest import cifar_subset

from mocolab.cli import main
from mocolab.config import build_config
from mocolab.data import load_splits
from mocolab.engine import Trainer
from mocolab.methods import build_method
from mocolab.pretrain import init_weights, prime_dictionary

TINY = ["--epochs", "1", "model.width=8", "optim.batch_size=16", "model.bn_splits=2", "moco.queue_size=32",
        "run.compile=false", "run.amp=off", "run.threads=1", "data.workers=0"]


@pytest.fixture(scope="module")
def source(cifar_dir, tmp_path_factory):
    """A tiny finished pretraining (its folder) and its data."""
    tmp = tmp_path_factory.mktemp("init")
    data = cifar_subset(cifar_dir, tmp / "data", 16)
    run = tmp / "src_run"
    assert main(["pretrain", "--data", str(data), "--out", str(run), *TINY]) == 0
    return run, data


def _config(*extra):
    return build_config("cifar10_cpu", [t for t in TINY if "=" in t] + ["data.image_size=32", *extra])


def test_init_loads_both_encoders_and_fills_the_queue_with_real_keys(source):
    run, data = source
    cfg = _config()
    model = build_method(cfg)
    random_queue = model.queue.keys.clone()
    assert "tensors of" in init_weights(model, str(run), cfg)  # the training checkpoint, not only the export
    trained = torch.load(run / "checkpoints" / "final.pth", weights_only=True)["model"]
    for name, t in model.state_dict().items():
        if name.startswith(("encoder_q.", "encoder_k.")):
            assert torch.equal(t, trained[name]), name  # f_q, f_k and the head, as the run left them
    splits = load_splits(str(data), 32)
    trainer = Trainer(cfg, model, splits.train, torch.device("cpu"), None, None)
    assert prime_dictionary(trainer) == 2  # K 32 = 2 batches of 16 keys
    keys = model.queue.keys
    assert not (keys[:, None, :] == random_queue[None]).all(-1).any()  # no random key left
    assert torch.allclose(keys.norm(dim=1), torch.ones(32), atol=1e-5)


def test_priming_under_bf16_autocast_augments_as_training_does(source):
    """The v2 augmentation (blur on a subset) runs outside autocast, as in training, and the keys
    under it: with bf16 it once mixed a float batch with bfloat16 blurred images and stopped."""
    run, data = source
    cfg = _config("run.amp=bf16", "data.augment=v2", "data.backend=tensor", "data.image_size=96")
    assert cfg.data.crop_size in (0, 96)  # v2 blurs at 96 px (not at CIFAR's 32)
    model = build_method(cfg)
    init_weights(model, str(run), cfg)
    trainer = Trainer(cfg, model, load_splits(str(data), 96).train, torch.device("cpu"), None, torch.bfloat16)
    assert trainer.feed.aug.spec.p_blur > 0
    assert prime_dictionary(trainer) == 2
    assert torch.allclose(model.queue.keys.norm(dim=1), torch.ones(32), atol=1e-2)


def test_init_from_a_backbone_export_copies_it_to_the_key_encoder(source):
    run, _ = source
    cfg = _config()
    model = build_method(cfg)
    assert init_weights(model, str(run / "backbone.pth"), cfg) == "backbone"
    exported = torch.load(run / "backbone.pth", weights_only=True)
    for name, t in model.encoder_q.backbone.state_dict().items():
        assert torch.equal(t, exported[name]) and torch.equal(model.encoder_k.backbone.state_dict()[name], t)


def test_init_through_the_cli_records_it_and_starts_a_fresh_schedule(source, tmp_path):
    run, data = source
    out = tmp_path / "continued"
    assert main(["pretrain", "--data", str(data), "--out", str(out), "--init", str(run), *TINY]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["init"] == str(run) and summary["steps"] == 2  # the schedule from step 0
    assert f"init: {run}" in (out / "config.yaml").read_text()


def test_init_through_the_api(source, tmp_path):
    import mocolab

    run, data = source
    over = {k.replace(".", "__"): v for k, v in (t.split("=") for t in TINY if "=" in t)}
    s = mocolab.pretrain(data, tmp_path / "api", "cifar10_cpu", init=run, run__epochs=1, **over)
    assert s["init"] == str(run)


def test_init_of_another_architecture_is_one_line(source, tmp_path, capsys):
    run, data = source
    rc = main(["pretrain", "--data", str(data), "--out", str(tmp_path / "x"), "--init", str(run), *TINY,
               "model.width=16"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert "resnet10 width 8" in err[0] and "resnet10 width 16" in err[0]


def test_init_from_an_unknown_source_is_one_line(source, tmp_path, capsys):
    _, data = source
    rc = main(["pretrain", "--data", str(data), "--out", str(tmp_path / "x"), "--init", str(tmp_path / "nope.pth"),
               *TINY])
    assert rc == 2 and "not found" in capsys.readouterr().err


def test_init_from_a_model_folder(source, tmp_path):
    """A shareable model folder (export --format folder: model.safetensors) starts both encoders."""
    run, _ = source
    folder = tmp_path / "model"
    assert main(["export", str(run), "--format", "folder", "--out", str(folder)]) == 0
    cfg = _config()
    model = build_method(cfg)
    assert init_weights(model, str(folder), cfg) == "backbone"
    exported = torch.load(run / "backbone.pth", weights_only=True)
    for name, t in model.encoder_k.backbone.state_dict().items():
        assert torch.equal(t, exported[name])
