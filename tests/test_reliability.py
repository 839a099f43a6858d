"""Exact resume, preemption, the NaN guard and bad run settings (issue: reliability)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import tiny_config

from mocolab.checkpoint import safe_load
from mocolab.config import ConfigError, build_config
from mocolab.data import TensorData
from mocolab.engine import Trainer
from mocolab.methods import build_method
from mocolab.methods.moco import MoCo
from mocolab.runtime import NonFiniteLoss


def _trainer(cfg, out=None, init_seed=0, n=48):
    g = torch.Generator().manual_seed(0)
    data = TensorData(torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8, generator=g),
                      torch.zeros(n, dtype=torch.long), [])
    torch.manual_seed(init_seed)
    return Trainer(cfg, build_method(cfg), data, torch.device("cpu"), out, None)


def _assert_same_state(a: Trainer, b: Trainer):
    for (ka, va), (kb, vb) in zip(a.method.state_dict().items(), b.method.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb), ka  # both encoders, the queue and its pointer
    sa, sb = a.optimizer.state_dict()["state"], b.optimizer.state_dict()["state"]
    assert sa.keys() == sb.keys() and all(torch.equal(sa[i]["momentum_buffer"], sb[i]["momentum_buffer"]) for i in sa)
    for field in ("epoch", "it", "step", "total_steps", "images"):
        assert getattr(a.progress, field) == getattr(b.progress, field), field
    assert torch.equal(a.gen.get_state(), b.gen.get_state())


@pytest.mark.parametrize("backend", ["tensor", "pil"])
@pytest.mark.parametrize("stop_at", [6, 7])  # an epoch boundary (6 steps an epoch) and mid-epoch
def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path, backend, stop_at):
    over = {"run.epochs": 3, "data.backend": backend, "data.workers": 0}
    a = _trainer(tiny_config(**over))  # uninterrupted: 18 steps
    a.fit()

    b = _trainer(tiny_config(**over), tmp_path)  # killed after `stop_at` steps (same schedule)
    b._done = lambda: b.progress.step >= stop_at or Trainer._done(b)
    b.fit()
    state = safe_load(b.save("last.pth"))

    c = _trainer(tiny_config(**over), None, init_seed=99)  # a new process: other weights and queue
    assert not torch.equal(c.method.queue.keys, a.method.queue.keys)
    c.load_state_dict(state)
    torch.manual_seed(1234)  # the global RNG of a fresh process differs; nothing may depend on it
    c.fit()
    _assert_same_state(a, c)


def test_pil_views_do_not_depend_on_the_workers():
    """Per-sample seeds: the same epoch gives the same views with 0 or 2 loader workers."""
    views = []
    for workers in (0, 2):
        t = _trainer(tiny_config(**{"data.backend": "pil", "data.workers": workers}))
        views.append([torch.cat(v) for v, _ in t.feed.batches(torch.arange(48), 2, epoch=1)])
    assert len(views[0]) == 4 and all(torch.equal(x, y) for x, y in zip(*views, strict=True))
    t = _trainer(tiny_config(**{"data.backend": "pil", "data.workers": 0}))
    other_epoch = [torch.cat(v) for v, _ in t.feed.batches(torch.arange(48), 2, epoch=2)]
    assert not torch.equal(other_epoch[0], views[0][0])


def _nan_at(monkeypatch, steps):
    """Makes the loss NaN at the given 1-based steps (counted over MoCo.forward calls)."""
    real, calls = MoCo.forward, {"n": 0}

    def fake(*a, **k):
        loss, keys = real(*a, **k)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] in steps else loss), keys

    monkeypatch.setattr(MoCo, "forward", fake)


def test_nan_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    t = _trainer(tiny_config(**{"run.epochs": 3, "run.checkpoint_every": 2, "run.log_every": 5}), tmp_path)
    _nan_at(monkeypatch, {5})
    with pytest.raises(NonFiniteLoss, match="at step 5 "):
        t.fit()
    saved = sorted(p.name for p in (tmp_path / "checkpoints").glob("*.pth"))
    assert saved == ["step_00000002.pth", "step_00000004.pth"]  # nothing written after the NaN
    last = safe_load(tmp_path / "checkpoints" / "step_00000004.pth")
    assert last["progress"]["step"] == 4
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())


def test_skip_nonfinite_skips_up_to_the_limit(tmp_path, monkeypatch):
    t = _trainer(tiny_config(**{"run.epochs": 2, "run.skip_nonfinite": 2}))
    _nan_at(monkeypatch, {3, 8})
    with pytest.warns(UserWarning, match="skipped step 3 .*1 of at most 2"):
        t.fit()
    assert t.skipped == 2 and t.progress.step == 12
    assert all(torch.isfinite(v).all() for v in t.method.state_dict().values() if v.is_floating_point())

    # a skipped step changes nothing: weights, momentum buffers, key encoder, queue
    t = _trainer(tiny_config(**{"run.epochs": 2, "run.skip_nonfinite": 1}))
    t.progress.total_steps = 2
    t.fit()
    before = {k: v.clone() for k, v in t.method.state_dict().items()}
    _nan_at(monkeypatch, {1, 3})
    t.progress.total_steps = 3
    with pytest.warns(UserWarning, match="skipped step 3"):
        t.fit()
    assert all(torch.equal(before[k], v) for k, v in t.method.state_dict().items())
    t.progress.total_steps = 5
    with pytest.raises(NonFiniteLoss, match="more than run.skip_nonfinite=1"), pytest.warns(UserWarning):
        t.fit()


def test_keep_last_n_periodic_checkpoints(tmp_path):
    t = _trainer(tiny_config(**{"run.epochs": 2, "run.checkpoint_every": 4, "run.keep_checkpoints": 2}), tmp_path)
    t.fit()
    # steps 4 and 8 mid-epoch, 6 and 12 at epoch ends: the newest two by step remain
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("*.pth")) == ["epoch_0002.pth", "step_00000008.pth"]


def test_epoch_checkpoints_every_n_epochs(tmp_path):
    """run.save_every=2: epoch-end checkpoints at epochs 2 and 4 only (fast epochs on a GPU
    need not write every one); the newest is a full, resumable state."""
    t = _trainer(tiny_config(**{"run.epochs": 5, "run.save_every": 2, "run.keep_checkpoints": 5}), tmp_path)
    t.fit()
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("*.pth")) == ["epoch_0002.pth", "epoch_0004.pth"]
    assert safe_load(tmp_path / "checkpoints" / "epoch_0004.pth")["progress"]["step"] == 4 * t.steps_per_epoch
    with pytest.raises(ConfigError, match="run.save_every"):
        build_config("cifar10_cpu", ["run.save_every=-1"])


def test_step_checkpoints_fill_in_the_epoch_ends_fit_does_not_save(tmp_path):
    """run.checkpoint_every of one epoch with run.save_every=0: the epoch ends are saved as step
    checkpoints, and a run resumed from the first ends as the uninterrupted one."""
    cfg = tiny_config(**{"run.epochs": 2, "run.save_every": 0, "run.checkpoint_every": 6, "run.keep_checkpoints": 5})
    (tmp_path / "a").mkdir()
    a = _trainer(cfg, tmp_path / "a")
    assert a.steps_per_epoch == 6
    a.fit()
    names = sorted(p.name for p in (tmp_path / "a" / "checkpoints").glob("*.pth"))
    assert names == ["step_00000006.pth", "step_00000012.pth"]
    b = _trainer(cfg, None, init_seed=1)
    b.load_state_dict(safe_load(tmp_path / "a" / "checkpoints" / "step_00000006.pth"))
    b.fit()
    _assert_same_state(a, b)


def test_queue_smaller_than_the_batch_is_refused():
    with pytest.raises(ConfigError,
                       match=r"moco.queue_size \(K=128\) is smaller than the keys enqueued per step \(256\)"):
        build_config("cifar10_cpu", ["moco.queue_size=128", "optim.batch_size=256"])
    with pytest.raises(ConfigError, match=r"\(512\)"):
        build_config("cifar10_cpu", ["moco.queue_size=300", "moco.symmetric=true", "optim.batch_size=256"])


def _cli(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "mocolab", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


SMALL = ["model.width=8", "model.hidden_dim=32", "model.dim=16", "data.limit=200", "optim.batch_size=16",
         "moco.queue_size=64", "run.log_every=1", "run.amp=off", "run.channels_last=false", "run.threads=1",
         "data.workers=0"]


def _one_line_error(res, text):
    errors = [line for line in res[1].splitlines() if line.startswith("mocolab: error:")]
    assert "Traceback" not in res[1] and len(errors) == 1 and text in errors[0], res[1]


def test_batch_larger_than_the_dataset_is_one_clear_line(cifar_dir, tmp_path):
    p = _cli("pretrain", "--data", str(cifar_dir), "--out", str(tmp_path), "model.width=8", "data.limit=100",
             "optim.batch_size=512", "moco.queue_size=1024")
    res = p.communicate(timeout=300)
    assert p.returncode == 2
    _one_line_error(res, "optim.batch_size=512 is larger than the dataset (100 images)")


def test_queue_smaller_than_the_batch_is_one_clear_line(tmp_path):
    p = _cli("pretrain", "--data", str(tmp_path), "--out", str(tmp_path / "o"), "optim.batch_size=64",
             "moco.queue_size=32")
    res = p.communicate(timeout=300)
    assert p.returncode == 2
    _one_line_error(res, "moco.queue_size (K=32) is smaller than the keys enqueued per step (64)")


@pytest.mark.slow
@pytest.mark.parametrize("sig,backend",
                         [(signal.SIGTERM, "tensor"), (signal.SIGINT, "tensor"), (signal.SIGTERM, "pil")])
def test_signal_finishes_the_step_saves_and_resumes(cifar_dir, tmp_path, sig, backend):
    out = tmp_path / "run"
    args = ["pretrain", "--data", str(cifar_dir), "--out", str(out), "--epochs", "50", *SMALL]
    if backend == "pil":  # loader workers get the signal too (scancel, Ctrl-C): they must ignore it
        args += ["data.backend=pil", "data.workers=2"]
    p = _cli(*args, start_new_session=True)
    send = (lambda s: os.killpg(p.pid, s)) if backend == "pil" else p.send_signal
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 240
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 3):  # a few steps done
        assert p.poll() is None and time.time() < deadline, p.communicate()
        time.sleep(0.2)
    send(sig)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 75, err
    assert f"stopped by {sig.name} after step" in err and "--resume auto" in err and "Traceback" not in err
    step = int(err.split("after step ")[1].split(";")[0])
    ckpt = out / "checkpoints" / f"step_{step:08d}.pth"
    state = safe_load(ckpt)
    assert state["progress"]["step"] == step
    assert json.loads(metrics.read_text().splitlines()[-1])["step"] == step  # the step was finished

    p = _cli(*args[:5], "--epochs", "2", "--resume", "auto", *args[7:])  # a shorter schedule now
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    assert f"resuming from {ckpt}" in err
    final = safe_load(out / "checkpoints" / "final.pth")
    assert final["progress"]["step"] == 2 * (200 // 16) and final["progress"]["epoch"] == 2


def test_a_run_does_not_depend_on_the_decoded_cache(tmp_path, monkeypatch):
    """The first run decodes the images (a DataLoader, which draws from the global RNG); the
    second finds them cached. Both must start from the same weights and end identical."""
    import numpy as np
    from PIL import Image

    from mocolab.pretrain import pretrain

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for cls in ("a", "b"):
            (tmp_path / "data" / split / cls).mkdir(parents=True)
            for i in range(12):
                Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(
                    tmp_path / "data" / split / cls / f"{i}.png")
    monkeypatch.setenv("MOCOLAB_CACHE", str(tmp_path / "cache"))
    finals = []
    for run in ("fresh", "cached"):
        pretrain(tiny_config(**{"run.epochs": 1, "data.workers": 0}), str(tmp_path / "data"), tmp_path / run)
        finals.append(safe_load(tmp_path / run / "checkpoints" / "final.pth")["model"])
    assert all(torch.equal(finals[0][k], finals[1][k]) for k in finals[0])


def test_unwritable_output_folder_or_a_full_disk_fail_before_training(tmp_path, monkeypatch):
    import shutil

    from mocolab.runtime import check_out_dir

    (tmp_path / "taken").write_text("a file where the run folder should be")
    with pytest.raises(OSError, match="cannot write to the output folder"):
        check_out_dir(tmp_path / "taken")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 2**20, 2**20))
    with pytest.raises(OSError, match="only 1 MiB free"):
        check_out_dir(tmp_path / "ok")


def test_unwritable_output_folder_is_one_clear_line(tmp_path):
    (tmp_path / "taken").write_text("x")
    p = _cli("pretrain", "--data", str(tmp_path), "--out", str(tmp_path / "taken"))
    res = p.communicate(timeout=300)
    assert p.returncode == 2
    _one_line_error(res, "is a file; give a folder for the run")


def test_large_seeds_work():
    t = _trainer(tiny_config(**{"run.seed": 20240101, "run.epochs": 1}))
    t.fit()
    assert t.progress.step == 6
