import os
import pickle

import pytest
import torch
from conftest import tiny_config

from mocolab.checkpoint import CheckpointError, atomic_save, extract_backbone, safe_load
from mocolab.data import TensorData
from mocolab.engine import Trainer
from mocolab.methods import build_method
from mocolab.models.backbones import torchvision_model


def _trainer(cfg, tmp_path, init_seed=0):
    g = torch.Generator().manual_seed(0)
    data = TensorData(torch.randint(0, 256, (48, 3, 16, 16), dtype=torch.uint8, generator=g),
                      torch.zeros(48, dtype=torch.long), [])
    torch.manual_seed(init_seed)
    return Trainer(cfg, build_method(cfg, len(data)), data, torch.device("cpu"), tmp_path, None)



@pytest.mark.parametrize("over", [{"moco.m_schedule": "constant"}, {"moco.m_schedule": "cosine"},
                                  {"data.small_crops": 2, "data.small_crop_size": 8},  # multi-crop too
                                  {"moco.method": "e2e"},  # and the other two mechanisms
                                  {"moco.method": "bank", "moco.queue_size": 16},
                                  {"moco.method": "bank", "moco.queue_size": 0},
                                  {"moco.method": "mocov3", "model.head": "mlp3_bn", "model.predictor_dim": 32,
                                   "optim.name": "lars"},
                                  pytest.param({"moco.method": "mocov3", "model.arch": "vit_tiny_patch4",
                                                "optim.name": "adamw"}, marks=pytest.mark.slow)])  # ViT: ~1 min
def test_checkpoint_round_trip_gives_identical_next_step(tmp_path, over):
    """Queue and pointer, bank and its draws, weights, optimizer, progress and RNG: a resumed
    run continues exactly as the uninterrupted one."""
    cfg = tiny_config(**{"run.epochs": 3, **over})
    (tmp_path / "a").mkdir()
    a = _trainer(cfg, tmp_path / "a")
    a.progress.total_steps = 7  # stop mid-epoch (6 steps an epoch)
    a.fit()
    path = a.save("mid.pth")
    state = safe_load(path)

    b = _trainer(tiny_config(**{"run.epochs": 3, **over}), None, init_seed=99)  # different weights and queue
    state_name = {"moco": "queue.keys", "bank": "bank.features"}.get(cfg.moco.method, "encoder_q.head.0.weight")
    assert not torch.equal(b.method.state_dict()[state_name], a.method.state_dict()[state_name])
    if cfg.moco.method == "bank":
        b.method.bank.gen.manual_seed(123)  # the draws' state comes from the checkpoint too
    b.load_state_dict(state)
    for t in (a, b):
        t.progress.total_steps = 18
        t.fit()
    for (ka, va), (kb, vb) in zip(a.method.state_dict().items(), b.method.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka
    sa, sb = a.optimizer.state_dict()["state"], b.optimizer.state_dict()["state"]
    assert sa.keys() == sb.keys() and all(  # SGD's and LARS's momentum buffers, AdamW's moments and steps
        torch.equal(sa[i][k], sb[i][k]) and k in sb[i] for i in sa for k in sa[i] if torch.is_tensor(sa[i][k]))
    for field in ("epoch", "it", "step", "total_steps", "images"):
        assert getattr(a.progress, field) == getattr(b.progress, field)
    assert torch.equal(a.gen.get_state(), b.gen.get_state())
    for name, g in a.method.generators().items():
        assert torch.equal(g.get_state(), b.method.generators()[name].get_state()), name
    if "data.small_crops" in over:  # the small views: 2 per image, at their own size
        x_q, _, x_small = a.feed.augment(a.feed.train.images[:8])
        assert x_q.shape == (8, 3, 16, 16) and x_small.shape == (16, 3, 8, 8)


def test_atomic_save_survives_a_crash_before_rename(tmp_path, monkeypatch):
    path = tmp_path / "ck.pth"
    atomic_save({"x": torch.ones(3)}, path)

    def boom(*a, **k):
        raise OSError("simulated crash between write and rename")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic_save({"x": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.equal(safe_load(path)["x"], torch.ones(3))  # the old file is intact


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_malicious_pickle_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": _Evil()}, f)
    with pytest.raises(CheckpointError, match="refused to load"):
        safe_load(path)
    torch.save({"model": _Evil()}, tmp_path / "evil2.pth")
    with pytest.raises(CheckpointError, match="refused to load"):
        safe_load(tmp_path / "evil2.pth")


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "x.pth").write_text("hello")
    with pytest.raises(CheckpointError, match="is not a PyTorch checkpoint"):
        safe_load(tmp_path / "x.pth")
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        safe_load(tmp_path / "missing.pth")


def test_foreign_checkpoints_are_recognised():
    cfg = tiny_config()
    model = build_method(cfg)
    sd = {f"module.encoder_q.{k}": v for k, v in model.encoder_q.backbone.state_dict().items()}
    sd["module.encoder_q.fc.weight"] = torch.zeros(128, 64)
    sd["module.queue"] = torch.zeros(16, 10)
    got, _ = extract_backbone({"state_dict": sd, "epoch": 200, "arch": "resnet50"})
    assert set(got) == set(model.encoder_q.backbone.state_dict())
    tv = torchvision_model("resnet18", 8, "cifar")
    tv.load_state_dict(got, strict=True)
    with pytest.raises(CheckpointError, match="expected a mocolab checkpoint"):
        extract_backbone({"weights": torch.zeros(3)})


@pytest.mark.parametrize("m_schedule", ["constant", "cosine"])
def test_trainer_applies_the_momentum_schedule(tmp_path, monkeypatch, m_schedule):
    import mocolab.step
    from mocolab.momentum import cosine_momentum

    seen = []
    real = mocolab.step.momentum_update
    monkeypatch.setattr(mocolab.step, "momentum_update", lambda q, k, m: (seen.append(m), real(q, k, m)))
    t = _trainer(tiny_config(**{"moco.m": 0.5, "moco.m_schedule": m_schedule}), None)
    t.progress.total_steps = 4
    t.fit()
    expect = [0.5] * 4 if m_schedule == "constant" else [cosine_momentum(0.5, s / 4) for s in range(4)]
    assert seen == pytest.approx(expect) and (m_schedule == "constant" or seen[-1] > 0.9)
