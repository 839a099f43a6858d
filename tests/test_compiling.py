"""When a run compiles: the policy on a fake inductor cache (a folder of markers), and one real
short-budget CLI run that stays eager."""

import json
import logging

import pytest
import torch
from conftest import cifar_subset

from mocolab import compiling
from mocolab.cli import main
from mocolab.config import build_config


def cfg_of(*over):
    return build_config("cifar10_cpu", list(over))


@pytest.fixture
def fake_cache(tmp_path, monkeypatch):
    """An empty inductor cache folder of this test's own."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    return tmp_path / "inductor"


@pytest.mark.parametrize("budget, warm, expected", [
    (0, False, False), (0, True, False),  # epoch runs stay eager, warm or not
    (0.5, True, False),  # under WARM_MIN_MINUTES even a warm compile is too much of the run
    (1, True, True), (10, True, True),  # warm: seconds, repaid
    (10, False, False),  # cold: below run.compile_min_minutes
])
def test_decision_by_budget_and_cache(budget, warm, expected):
    min_minutes = 30
    cfg = cfg_of(f"run.budget_minutes={budget}", f"run.compile_min_minutes={min_minutes}", "run.compile=true")
    ok, why = compiling.compile_decision(cfg, warm)
    assert ok is expected and why
    cold_long = cfg_of(f"run.budget_minutes={min_minutes}", f"run.compile_min_minutes={min_minutes}")
    assert compiling.compile_decision(cold_long, False)[0]  # long enough to repay a cold compile


def test_decision_switches():
    assert compiling.compile_decision(cfg_of("run.compile=false", "run.budget_minutes=60"), True) == \
        (False, "run.compile=false")
    always = cfg_of("run.compile_min_minutes=0")  # an epoch run, cold: compiles as asked
    assert compiling.compile_decision(always, False)[0]


def test_marker_keys_the_graphs_not_the_run(fake_cache):
    cfg = cfg_of("run.budget_minutes=10")
    assert not compiling.cache_holds(cfg)
    compiling.remember(cfg)
    assert (fake_cache / "mocolab_graphs").is_dir()
    # the budget, seed, loader settings and subset size change no graph
    assert compiling.cache_holds(cfg_of("run.budget_minutes=3", "run.seed=4", "data.workers=0", "data.limit=99"))
    # the batch, width, precision or compile mode do
    for over in ("optim.batch_size=64", "model.width=8", "run.amp=off", "run.compile_mode=max-autotune",
                 "moco.queue_size=1024"):
        assert not compiling.cache_holds(cfg_of(over)), over


def test_compiles_reads_the_cache(fake_cache, caplog):
    """A cold 10-minute budget stays eager (one log line says why); once a compiled run has
    remembered its graphs, the same budget compiles warm, and a half-minute budget still does not."""
    caplog.set_level(logging.INFO, logger="mocolab")
    cfg = cfg_of("run.budget_minutes=10", "run.compile_min_minutes=30")
    assert not compiling.compiles(cfg)
    assert "training eagerly" in caplog.text and "compile_min_minutes=30" in caplog.text
    assert compiling.compiles(cfg_of("run.budget_minutes=40", "run.compile_min_minutes=30"))  # cold, long enough
    compiling.remember(cfg)
    info = json.loads(next((fake_cache / "mocolab_graphs").glob("*.json")).read_text())
    assert info["arch"] == "resnet10" and info["batch_size"] == 128
    assert compiling.compiles(cfg)  # warm now: the 10-minute budget compiles
    assert "a warm compile" in caplog.text
    assert not compiling.compiles(cfg_of("run.budget_minutes=0.5", "run.compile_min_minutes=30"))


def test_split_bn_compiles_without_mix_order_reduction(fake_cache, monkeypatch):
    """SplitBatchNorm's grouped backward fails inductor's mix-order reduction fusion (torch 2.11 on an
    H200, RESULTS.md): a compiling run with bn_splits > 1 switches it off; plain BN keeps it."""
    import torch._inductor.config as inductor_config

    from mocolab.pretrain import build_model

    cpu = torch.device("cpu")
    monkeypatch.setattr(inductor_config.triton, "mix_order_reduction", True)
    assert build_model(cfg_of("run.compile_min_minutes=0", "model.bn_splits=1"), cpu).compiled
    assert inductor_config.triton.mix_order_reduction is True
    assert not build_model(cfg_of("run.compile=false", "model.bn_splits=8"), cpu).compiled  # no compile: untouched
    assert inductor_config.triton.mix_order_reduction is True
    assert build_model(cfg_of("run.compile_min_minutes=0", "model.bn_splits=8"), cpu).compiled
    assert inductor_config.triton.mix_order_reduction is False


@pytest.mark.slow
def test_short_budget_cli_run_stays_eager(cifar_dir, tmp_path, fake_cache, caplog):
    """`mocolab pretrain --preset cifar10_cpu --budget-minutes 0.1` on a cold cache: no compile
    (it would take a minute), and the run completes inside its budget."""
    caplog.set_level(logging.INFO, logger="mocolab")
    data = cifar_subset(cifar_dir, tmp_path / "c10", 64)
    out = tmp_path / "run"
    assert main(["pretrain", "--preset", "cifar10_cpu", "--data", str(data), "--out", str(out),
                 "--budget-minutes", "0.1", "model.width=8", "optim.batch_size=32", "moco.queue_size=64",
                 "data.workers=0", "run.threads=1"]) == 0
    assert "run.compile: training eagerly" in caplog.text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] > 0 and summary["wall_seconds"] < 60
    assert not (fake_cache / "mocolab_graphs").exists()
