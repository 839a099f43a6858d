"""The classifier loops (supervised baseline, linear protocol, fine-tuning) run on the engine:
SIGTERM writes a checkpoint and a rerun with the same settings continues exactly; other
settings start afresh; each parameter group's lr scale is honoured."""

import os
import signal

import pytest
import torch

from mocolab.augment import BatchAugment
from mocolab.data import TensorData
from mocolab.eval.classify import Classifier, FitConfig, crop_flip, fit
from mocolab.models.backbones import build_backbone
from mocolab.runtime import Preempted


def _data():
    g = torch.Generator().manual_seed(0)
    return TensorData(torch.randint(0, 256, (64, 3, 16, 16), dtype=torch.uint8, generator=g),
                      torch.arange(64) % 4, ["a", "b", "c", "d"])


def _model(seed=0):
    torch.manual_seed(seed)
    net, dim = build_backbone("resnet10", 8, "cifar")
    return Classifier(net, dim, 4)


def _fit(out, model, logger=None, settings=None, lr_scale=1.0):
    aug = BatchAugment(crop_flip(16), [0.5] * 3, [0.25] * 3, False)
    fc = FitConfig(epochs=3, batch_size=16, lr=0.05, weight_decay=5e-4, schedule="cosine", log_every=2, seed=1)
    groups = [{"params": model.backbone.parameters(), "lr_scale": lr_scale}, {"params": model.fc.parameters()}]
    return fit(model, groups, _data(), aug, fc, torch.device("cpu"), out=out, logger=logger,
               settings=settings or {"weights": "w"})


def test_a_stopped_loop_resumes_exactly(tmp_path):
    ref = _model()
    stats = _fit(tmp_path / "ref", ref)
    assert stats["steps"] == 12 and (tmp_path / "ref" / "checkpoints" / "final.pth").is_file()

    def stop_at_step_6(rec):
        if rec["step"] == 6:
            os.kill(os.getpid(), signal.SIGTERM)  # as a scheduler would: finish the step, save, exit

    with pytest.raises(Preempted):
        _fit(tmp_path / "run", _model(), logger=stop_at_step_6)
    assert (tmp_path / "run" / "checkpoints" / "step_00000006.pth").is_file()
    resumed = _model(seed=5)  # other weights: all of them must come from the checkpoint
    stats = _fit(tmp_path / "run", resumed)
    assert stats["steps"] == 12
    for (name, a), b in zip(ref.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_other_settings_start_afresh(tmp_path):
    def stop_at_step_4(rec):
        if rec["step"] == 4:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(Preempted):
        _fit(tmp_path, _model(), logger=stop_at_step_4)
    seen = []
    _fit(tmp_path, _model(), logger=seen.append, settings={"weights": "another checkpoint"})
    assert seen[0]["step"] == 2  # from the start, not from step 4


def test_group_lr_scale_zero_freezes_its_group(tmp_path):
    model = _model()
    backbone = {k: v.clone() for k, v in model.backbone.named_parameters()}
    fc = model.fc.weight.clone()
    _fit(None, model, lr_scale=0.0)
    assert all(torch.equal(backbone[k], v) for k, v in model.backbone.named_parameters())
    assert not torch.equal(fc, model.fc.weight)


def test_rerunning_a_finished_loop_trains_nothing_and_reports_its_losses(tmp_path):
    first = _fit(tmp_path, _model())
    again = _fit(tmp_path, _model(seed=3))  # resumed from final.pth: 0 steps to go
    assert again["steps"] == first["steps"] == 12 and again["history"] == []
    assert again["first_loss"] == first["first_loss"] and again["final_loss"] == first["final_loss"]


@pytest.mark.slow
def test_linear_paper_killed_by_sigterm_resumes_bit_identical(cifar_dir, tmp_path, caplog):
    """`mocolab linear --mode paper` stopped by SIGTERM mid-run (checkpoint, exit 75) and started
    again with --resume auto ends with the classifier and numbers of an uninterrupted run. The
    signalled run is a real process; the uninterrupted run and the resumed one run in this
    process on one thread, as the process does (OMP_NUM_THREADS=1)."""
    import json
    import logging
    import subprocess
    import sys
    import time

    from conftest import cifar_subset

    from mocolab.checkpoint import safe_load
    from mocolab.cli import main

    data = cifar_subset(cifar_dir, tmp_path / "data", 128)  # 256 train images: 8 steps of 32 per epoch
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def cmd(results):
        return ["linear", "--mode", "paper", "--random-init", "cifar10_cpu", "--data", str(data), "--epochs", "10",
                "--batch-size", "32", "--lr", "1.0", "--device", "cpu", "--results-dir", str(results)]

    def in_process(argv):
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return main(argv)
        finally:
            torch.set_num_threads(threads)

    def outcome(results):
        (result,) = results.glob("*.linear_paper.seed0.*.json")
        rec = json.loads(result.read_text())
        final = safe_load(result.with_suffix(".run") / "checkpoints" / "final.pth")
        numbers = {k: rec[k] for k in ("top1", "top5", "first_loss", "final_loss", "steps", "images")}
        return numbers, final["model"]

    assert in_process(cmd(tmp_path / "ref")) == 0

    proc = subprocess.Popen([sys.executable, "-m", "mocolab", *cmd(tmp_path / "run")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 300
    while not list((tmp_path / "run").glob("*.run/checkpoints/*.pth")) and proc.poll() is None:  # epoch 1 saved
        assert time.time() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)  # as a scheduler would: finish the step, save, exit 75
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 75, err[-2000:]
    (ckpt,) = (tmp_path / "run").glob("*.run/checkpoints/step_*.pth")
    stopped_at = safe_load(ckpt)["progress"]["step"]
    assert 8 <= stopped_at < 80 and not list((tmp_path / "run").glob("*.json"))  # mid-run, no result yet

    caplog.set_level(logging.INFO, logger="mocolab")
    assert in_process([*cmd(tmp_path / "run"), "--resume", "auto"]) == 0
    assert f"continuing from {ckpt}" in caplog.text
    (want, want_model), (got, got_model) = outcome(tmp_path / "ref"), outcome(tmp_path / "run")
    assert got == want and want["steps"] == 80
    assert want_model.keys() == got_model.keys()
    for name, v in want_model.items():  # the classifier (and the frozen backbone) bit-identical
        assert torch.equal(v, got_model[name]), name
