"""moco.m=auto and moco.queue_size=auto (mocolab.auto): the config accepts them, the rule's
shape, and runs that resolve them for an epoch schedule and under a time budget."""

import json
import math

import pytest
import torch
from conftest import cifar_subset

from mocolab.auto import AGE_SHARE, K_MAX, M_RANGE, W_PER_EPOCH, auto_momentum, auto_queue_size, auto_values
from mocolab.config import ConfigError, build_config
from mocolab.queue import KeyQueue


def test_config_takes_auto_or_a_number_and_refuses_anything_else():
    cfg = build_config("cifar10_cpu", ["moco.m=auto", "moco.queue_size=AUTO"])
    assert cfg.moco.m == "auto" and cfg.moco.queue_size == "auto"
    cfg = build_config("cifar10_cpu", ["moco.m=0.99", "moco.queue_size=1024"])
    assert cfg.moco.m == 0.99 and cfg.moco.queue_size == 1024
    with pytest.raises(ConfigError, match="moco.queue_size='big' is not a valid int or auto"):
        build_config("cifar10_cpu", ["moco.queue_size=big"])
    with pytest.raises(ConfigError, match="for moco.method=moco"):
        build_config("cifar10_cpu", ["moco.method=e2e", "moco.m=auto"])


def test_the_rule_at_the_fitted_lengths_and_in_bounds():
    # 78 steps an epoch (10,000 images at batch 128): the window is W_PER_EPOCH epochs at 1 epoch
    assert 1 / (1 - auto_momentum(78, 78)) == pytest.approx(W_PER_EPOCH * 78)
    # a longer run of the same data: a smaller share of an epoch (W_POWER < 0), yet m stays in range
    windows = [1 / (1 - auto_momentum(78 * e, 78)) for e in (1, 3, 10, 100)]
    assert windows == sorted(windows, reverse=True)
    assert all(M_RANGE[0] <= auto_momentum(s, spe) <= M_RANGE[1] for s in (1, 78, 10**6) for spe in (1, 78, 5005))
    # the paper's 200 epochs of 5,005 steps: close to its best m, 0.999
    assert 0.998 < auto_momentum(200 * 5005, 5005) < 0.9995
    for s, spe in [(78, 78), (780, 78), (10**6, 5005)]:
        k = auto_queue_size(s, spe, 128)
        assert 128 <= k <= K_MAX and math.log2(k).is_integer()
        window = 1 / (1 - auto_momentum(s, spe))
        assert k / 128 <= max(2 * AGE_SHARE * window, 1)  # the oldest key within the age share (x2: rounding)
    # at most half the training set (rounded down to a power of 2), at least one step's keys
    assert auto_queue_size(10**6, 5005, 256, n_train=5000) == 2048
    assert auto_queue_size(10**6, 5005, 4096, n_train=5000) == 4096
    cfg = build_config("cifar10_cpu", ["moco.m=auto", "moco.symmetric=true"])
    assert set(auto_values(cfg, 1000, 100)) == {"moco.m"}


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
    assert summary["auto"] == {"moco.m": auto_momentum(steps, 8), "for_steps": steps,
                               "moco.queue_size": auto_queue_size(steps, 8, 16, n_train)}
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
    assert summary["auto"] == {"moco.m": auto_momentum(S, 8), "moco.queue_size": auto_queue_size(S, 8, 16, 128),
                               "for_steps": S}
    assert state["model"]["queue.keys"].shape[0] == K == state["config"]["moco"]["queue_size"]
    assert state["config"]["moco"]["m"] == summary["auto"]["moco.m"]
