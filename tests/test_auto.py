"""moco.m=auto and moco.queue_size=auto (mocolab.auto): the config accepts them, the rule's
shape, and runs that resolve them for an epoch schedule and under a time budget."""

import json
import math

import pytest
import torch
from conftest import cifar_subset

from mocolab.auto import AGE_SHARE, K_MAX, M_RANGE, W_AT_1K, auto_momentum, auto_queue_size, auto_values
from mocolab.config import ConfigError, build_config
from mocolab.queue import KeyQueue


def test_config_takes_auto_or_a_number_and_refuses_anything_else():
    cfg = build_config("cifar10_cpu", ["moco.m=auto", "moco.queue_size=AUTO"])
    assert cfg.moco.m == "auto" and cfg.moco.queue_size == "auto"
    cfg = build_config("cifar10_cpu", ["moco.m=0.99", "moco.queue_size=1024"])
    assert cfg.moco.m == 0.99 and cfg.moco.queue_size == 1024
    with pytest.raises(ConfigError, match="moco.queue_size='big' is not a valid int or auto"):
        build_config("cifar10_cpu", ["moco.queue_size=big"])
    with pytest.raises(ConfigError, match="moco.m=auto is fitted for moco.method=moco only, not e2e"):
        build_config("cifar10_cpu", ["moco.method=e2e", "moco.m=auto"])


def test_the_rule_grows_with_the_schedule_and_stays_in_bounds():
    lengths = [10, 78, 234, 780, 10_000, 1_001_000, 10**9]
    ms = [auto_momentum(s) for s in lengths]
    assert ms == sorted(ms) and all(M_RANGE[0] <= m <= M_RANGE[1] for m in ms)
    assert 1 / (1 - auto_momentum(1000)) == pytest.approx(W_AT_1K)
    assert 0.998 < auto_momentum(1_001_000) < 0.9995  # the paper's 200 ImageNet epochs: its best m is 0.999
    ks = [auto_queue_size(s, 128) for s in lengths]
    assert ks == sorted(ks) and all(128 <= k <= K_MAX and math.log2(k).is_integer() for k in ks)
    for s in lengths:  # the oldest key within the age share of the window (x 2: the power-of-2 rounding)
        assert auto_queue_size(s, 128) / 128 <= max(2 * AGE_SHARE / (1 - auto_momentum(s)), 1)
    # at most half the training set (rounded down to a power of 2), at least one step's keys
    assert auto_queue_size(10**8, 128, n_train=5000) == 2048
    assert auto_queue_size(10**8, 4096, n_train=5000) == 4096
    cfg = build_config("cifar10_cpu", ["moco.m=auto", "moco.symmetric=true"])
    assert set(auto_values(cfg, 1000)) == {"moco.m"}


def test_resize_keeps_the_newest_keys_in_order():
    queue = KeyQueue(6, 2)
    for i in range(4):  # 8 keys through 6 slots: keys 2..7 remain, key 7 newest
        queue.enqueue(torch.full((2, 2), float(i * 2)) + torch.tensor([[0.0], [1.0]]))
    queue.resize(4)
    assert queue.keys[:, 0].tolist() == [4, 5, 6, 7] and queue.ptr.item() == 0
    assert queue.born.tolist() == [2, 2, 3, 3] and queue.age().item() == 2
    queue.enqueue(torch.full((1, 2), 8.0))
    assert queue.keys[:, 0].tolist() == [8, 5, 6, 7]  # the oldest (4) goes first
    queue.resize(8)
    assert queue.keys[:4, 0].tolist() == [5, 6, 7, 8] and queue.ptr.item() == 4


def _run(cifar_dir, tmp_path, *args):
    from mocolab.cli import main

    data = cifar_subset(cifar_dir, tmp_path / "data", 64)
    out = tmp_path / "run"
    rc = main(["pretrain", "--preset", "cifar10_cpu", "--data", str(data), "--out", str(out), "moco.m=auto",
               "moco.queue_size=auto", "model.width=8", "optim.batch_size=16", "model.bn_splits=2",
               "run.compile=false", "run.amp=off", "run.threads=1", "data.workers=0", *args])
    assert rc == 0
    state = torch.load(out / "checkpoints" / "final.pth", weights_only=True)
    return json.loads((out / "summary.json").read_text()), state, out


def test_an_epoch_run_resolves_auto_for_its_schedule(cifar_dir, tmp_path):
    summary, state, out = _run(cifar_dir, tmp_path, "--epochs", "2")
    steps = 2 * (128 // 16)
    n_train = 128
    assert summary["auto"] == {"moco.m": auto_momentum(steps), "for_steps": steps,
                               "moco.queue_size": auto_queue_size(steps, 16, n_train)}
    # the run folder keeps what was asked; the checkpoint what was used (a resume builds the same model)
    assert "m: auto" in (out / "config.yaml").read_text()
    assert state["config"]["moco"]["queue_size"] == summary["auto"]["moco.queue_size"]
    assert state["model"]["queue.keys"].shape[0] == summary["auto"]["moco.queue_size"]
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert {r["m"] for r in lines if "m" in r} == {summary["auto"]["moco.m"]}


def test_a_budget_run_resolves_auto_once_the_schedule_is_timed(cifar_dir, tmp_path):
    summary, state, _ = _run(cifar_dir, tmp_path, "--budget-minutes", "0.2", "run.epochs=1")
    K = summary["auto"]["moco.queue_size"]
    # provisional values were for 1 epoch (8 steps); these are for the timed schedule, longer
    S = summary["auto"]["for_steps"]  # the first timed estimate of the schedule
    assert S > 8 and summary["steps"] > 8
    assert summary["auto"] == {"moco.m": auto_momentum(S), "moco.queue_size": auto_queue_size(S, 16, 128),
                               "for_steps": S}
    assert state["model"]["queue.keys"].shape[0] == K == state["config"]["moco"]["queue_size"]
    assert state["config"]["moco"]["m"] == summary["auto"]["moco.m"]
