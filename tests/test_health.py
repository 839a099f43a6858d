"""Run health (mocolab.health): the figures against hand-computed values, the key age against the
queue's pointer arithmetic, the warnings' rules, and a deliberately collapsing run flagged within
its first epoch while the preset's healthy run is not."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import cifar_subset, load_benchmark

from mocolab.bank import FeatureBank
from mocolab.health import HealthWatch, alignment, effective_rank, feature_std, figures, momentum_window, uniformity
from mocolab.queue import KeyQueue
from mocolab.registry import METHODS

# ---- the figures on small tensors -------------------------------------------------------


def test_alignment_is_the_mean_squared_distance_of_positive_pairs():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    k = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    # pair 0: identical (0); pair 1: orthogonal unit vectors (|q - k|^2 = 2)
    assert alignment(q, k).item() == pytest.approx(1.0)


def test_uniformity_is_the_log_mean_gaussian_potential_over_pairs():
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    # squared distances of the 3 pairs: 2, 4, 2
    expected = math.log((math.exp(-4) + math.exp(-8) + math.exp(-4)) / 3)
    assert uniformity(f).item() == pytest.approx(expected, rel=1e-6)
    assert uniformity(torch.ones(5, 3) / math.sqrt(3)).item() == pytest.approx(0.0, abs=1e-6)  # one point
    # far apart pairs only: finite (a plain log(mean(exp)) would underflow to -inf at t = 2000)
    assert math.isfinite(uniformity(f, t=2000.0).item())


def test_feature_std_is_the_mean_per_dimension_std():
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # each dimension holds {1, 0}: unbiased std sqrt(0.5)
    assert feature_std(f).item() == pytest.approx(math.sqrt(0.5))
    assert feature_std(F.normalize(torch.ones(8, 4), dim=1)).item() == 0.0


def test_effective_rank_of_equal_spread_collapse_and_one_direction():
    two_dirs = torch.tensor([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, -1.0, 0.0]])
    # centred singular values (sqrt 2, sqrt 2, 0): p = (1/2, 1/2) -> exp(ln 2) = 2
    assert effective_rank(two_dirs).item() == pytest.approx(2.0, rel=1e-5)
    assert effective_rank(torch.ones(6, 4)).item() == 1.0  # every row the same
    line = torch.arange(6.0)[:, None] * torch.tensor([[1.0, 2.0, 0.5]])
    assert effective_rank(line).item() == pytest.approx(1.0, rel=1e-4)
    g = torch.Generator().manual_seed(0)
    spread = F.normalize(torch.randn(512, 16, generator=g), dim=1)
    assert 14 < effective_rank(spread).item() <= 16


def test_figures_are_float32_zero_dim_and_work_under_bf16():
    g = torch.Generator().manual_seed(1)
    q = F.normalize(torch.randn(32, 8, generator=g), dim=1)
    out = figures(q.bfloat16(), q.bfloat16())
    assert set(out) == {"alignment", "uniformity", "feature_std", "effective_rank"}
    assert all(v.dim() == 0 and v.dtype == torch.float32 for v in out.values())
    assert out["alignment"].item() == 0.0
    assert momentum_window(0.99) == pytest.approx(100.0) and momentum_window(1.0) == math.inf


# ---- key age -------------------------------------------------------------------------------


def _age_by_pointer_arithmetic(K: int, B: int, steps: int) -> int:
    """The oldest slot's age after `steps` enqueues of B keys into a ring of K slots, from the
    write positions alone: slot j last held key n (the largest n < steps * B with n = j mod K),
    written at step n // B; a slot never written holds a start key (step 0)."""
    written = steps * B
    born = []
    for j in range(K):
        n = j + ((written - 1 - j) // K) * K if written > j else None
        born.append(n // B if n is not None else 0)
    return steps - min(born)


@pytest.mark.parametrize("K,B", [(10, 3), (12, 4), (7, 7), (5, 8)])
def test_key_age_follows_the_queue_pointer(K, B):
    queue = KeyQueue(K, 4)
    for step in range(1, 25):
        queue.enqueue(torch.randn(B, 4))
        # B >= K: each step replaces every key, so the oldest is one step old
        expected = _age_by_pointer_arithmetic(K, B, step) if B < K else 1
        assert queue.age().item() == expected
    if K % B == 0:  # a full queue of K fed B a step: its oldest key is K / B steps old
        assert queue.age().item() == K // B


def test_primed_keys_do_not_advance_the_clock_and_old_checkpoints_load():
    queue = KeyQueue(8, 4)
    queue.enqueue(torch.randn(8, 4), tick=False)  # primed before step 0
    assert queue.age().item() == 0 and queue.clock.item() == 0
    queue.enqueue(torch.randn(4, 4))
    state = {k: v for k, v in queue.state_dict().items() if k not in ("born", "clock")}  # an older checkpoint
    fresh = KeyQueue(8, 4)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.keys, queue.keys) and fresh.ptr.item() == 4


def test_bank_age_is_the_mean_age_of_the_entries_drawn():
    bank = FeatureBank(6, 4)
    bank.update(torch.tensor([0, 1]), torch.randn(2, 4), 0.5)  # step 0
    bank.update(torch.tensor([2, 3]), torch.randn(2, 4), 0.5)  # step 1
    # now (clock 2): entries 0, 1 are 2 steps old, 2, 3 one step, 4, 5 were never updated (2)
    assert bank.age(torch.tensor([0, 2])).item() == pytest.approx(1.5)
    assert bank.age().item() == pytest.approx((2 + 2 + 1 + 1 + 2 + 2) / 6)


# ---- the warnings --------------------------------------------------------------------------


def test_watch_raises_each_warning_once_with_advice():
    watch = HealthWatch(chance=math.log(513), dim=128, warmup_steps=20)
    healthy = {"step": 40, "loss": 5.0, "feature_std": 0.06, "effective_rank": 40.0, "key_age": 4.0, "m": 0.98}
    assert watch.check(healthy) == []
    collapsed = {**healthy, "step": 60, "feature_std": 0.005}
    [text] = watch.check(collapsed)
    assert "collapsing at step 60" in text and "lower optim.lr" in text
    assert watch.check(collapsed) == []  # once per run
    assert HealthWatch(6.0, 128).check({"step": 1, "effective_rank": 1.2})  # rank 1: collapse too


def test_watch_stuck_loss_needs_three_lines_after_warmup():
    chance = math.log(4097)
    watch = HealthWatch(chance=chance, dim=128, warmup_steps=20)
    at_chance = 0.995 * chance
    assert watch.check({"step": 10, "loss": chance}) == []  # in the warm-up
    assert watch.check({"step": 30, "loss": at_chance}) == []
    assert watch.check({"step": 40, "loss": 0.95 * chance}) == []  # learning: the count restarts
    assert watch.check({"step": 50, "loss": at_chance}) == []
    assert watch.check({"step": 60, "loss": at_chance}) == []
    [text] = watch.check({"step": 70, "loss": at_chance})
    assert "ln(K + 1) = 8.318" in text


def test_watch_stale_keys_and_the_shuffle_bn_cheat():
    watch = HealthWatch(chance=8.0, dim=128)
    assert watch.check({"step": 100, "key_age": 4.0, "m": 0.98}) == []  # cifar10_cpu: 0.08 windows of 50 steps
    assert watch.check({"step": 120, "key_age": 256.0, "m": 0.999}) == []  # the paper's: 0.26 windows
    [text] = watch.check({"step": 140, "key_age": 8.0, "m": 0.9})  # 0.8 windows
    assert "0.8 of the window" in text and "smaller moco.queue_size" in text
    # kNN monitors with the pretext accuracy of the last log line
    assert watch.check({"step": 200, "knn_top1": 30.0, "pretext_acc": 10.0}) == []
    assert watch.check({"step": 300, "knn_top1": 32.0, "pretext_acc": 15.0}) == []  # both rise
    assert watch.check({"step": 400, "knn_top1": 31.5, "pretext_acc": 30.0}) == []  # kNN down 0.5 only
    [text] = watch.check({"step": 500, "knn_top1": 30.5, "pretext_acc": 25.0})
    assert "from 15.0 to 25.0" in text and "moco.shuffle_bn" in text


def test_watch_state_round_trip():
    watch = HealthWatch(chance=8.0, dim=128)
    watch.check({"step": 1, "effective_rank": 1.0, "knn_top1": 20.0, "pretext_acc": 5.0})
    again = HealthWatch(chance=8.0, dim=128)
    again.load_state_dict(json.loads(json.dumps(watch.state_dict())))  # saved in checkpoints
    assert again.raised == watch.raised and again.best_knn == watch.best_knn
    assert again.check({"step": 2, "effective_rank": 1.0}) == []


# ---- runs ----------------------------------------------------------------------------------


@pytest.fixture
def constant_key():
    METHODS.register(load_benchmark("health_demo").ConstantKey)
    yield
    METHODS.remove("constant_key")


def _pretrain(data, out, *over):
    from mocolab.cli import main

    rc = main(["pretrain", "--preset", "cifar10_cpu", "--data", str(data), "--out", str(out), "--epochs", "1",
               "model.width=8", "optim.batch_size=32", "run.compile=false", "run.amp=off", "run.threads=1",
               "data.workers=0", "run.log_every=2", *over])
    assert rc == 0
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return json.loads((out / "summary.json").read_text()), [r for r in lines if "loss" in r]


def test_a_collapsing_run_is_flagged_in_its_first_epoch_and_the_healthy_one_is_not(constant_key, cifar_dir,
                                                                                     tmp_path):
    # 1024 images, batch 32: one epoch is 32 steps
    data = cifar_subset(cifar_dir, tmp_path / "data", 256, classes=("airplane", "cat", "dog", "ship"))
    summary, lines = _pretrain(data, tmp_path / "collapse", "moco.method=constant_key", "moco.queue_size=4096")
    # collapse; and stale keys too: a queue of 4096 fed 32 keys a step holds keys up to 128 steps old,
    # 2.6 windows of 50 steps (m 0.98), and passes half a window within this epoch
    assert [w.split(" ")[1:3] for w in summary["health_warnings"]] == [["features", "are"], ["are", "up"]]
    flagged = [r for r in lines if any("collapsing" in w for w in r.get("warnings", []))]
    assert flagged and flagged[0]["step"] <= 32 and flagged[0]["feature_std"] < 0.2 / math.sqrt(128)

    summary, lines = _pretrain(data, tmp_path / "healthy")
    assert summary["health_warnings"] == [] and not any("warnings" in r for r in lines)
    # every log line has the figures; the queue of 512 fed 32 keys a step is full after 16 steps
    assert all({"alignment", "uniformity", "feature_std", "effective_rank", "key_age"} <= set(r) for r in lines)
    assert [r["key_age"] for r in lines if r["step"] > 20] == [16.0] * len([r for r in lines if r["step"] > 20])
    assert all(r["key_window"] == pytest.approx(50.0) for r in lines)  # m 0.98
    assert all(r["feature_std"] > 0.2 / math.sqrt(128) for r in lines)
    assert all(r["chance_loss"] == pytest.approx(math.log(513)) for r in lines)

    # the report's health panel: the figures, and the warning with its run and step
    from mocolab.report.build import Options, write_report

    index = write_report([str(tmp_path / "collapse"), str(tmp_path / "healthy")], tmp_path / "report",
                         Options(features=False)).read_text()
    assert (tmp_path / "report" / "health.png").stat().st_size > 10_000
    health = index[index.index(">Health<"):]
    assert f"<td>collapse</td><td class=\"num\">{flagged[0]['step']}</td>" in health and "collapsing" in health


def test_health_off_logs_no_figures(cifar_dir, tmp_path):
    data = cifar_subset(cifar_dir, tmp_path / "data", 16)
    summary, lines = _pretrain(data, tmp_path / "off", "run.health=false", "optim.batch_size=16",
                               "moco.queue_size=64")
    assert "health_warnings" not in summary and not any("alignment" in r for r in lines)
