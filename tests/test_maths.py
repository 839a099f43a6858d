import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mocolab.losses import info_nce
from mocolab.momentum import cosine_momentum, momentum_update
from mocolab.schedules import StepBudget, lr_at, scaled_lr


def _pair():
    torch.manual_seed(0)
    a, b = nn.Sequential(nn.Linear(4, 5), nn.Linear(5, 3)), nn.Sequential(nn.Linear(4, 5), nn.Linear(5, 3))
    return a, b


def test_momentum_zero_copies_query_weights():
    q, k = _pair()
    momentum_update(q, k, 0.0)
    for pq, pk in zip(q.parameters(), k.parameters()):
        assert torch.equal(pq, pk)


def test_momentum_one_changes_nothing():
    q, k = _pair()
    before = [p.clone() for p in k.parameters()]
    momentum_update(q, k, 1.0)
    for b, p in zip(before, k.parameters()):
        assert torch.equal(b, p)


def test_momentum_general_matches_formula():
    q, k = _pair()
    m = 0.99
    expect = [m * pk + (1 - m) * pq for pq, pk in zip(q.parameters(), k.parameters())]
    momentum_update(q, k, m)
    for e, p in zip(expect, k.parameters()):
        torch.testing.assert_close(p, e, rtol=0, atol=1e-7)


def test_cosine_momentum_schedule():
    assert cosine_momentum(0.99, 0.0) == pytest.approx(0.99)
    assert cosine_momentum(0.99, 1.0) == pytest.approx(1.0)
    assert cosine_momentum(0.99, 0.5) == pytest.approx(0.995)


def test_info_nce_equals_hand_computed_cross_entropy():
    torch.manual_seed(0)
    N, K, C, T = 5, 7, 6, 0.2
    q, k = F.normalize(torch.randn(N, C), dim=1), F.normalize(torch.randn(N, C), dim=1)
    queue = F.normalize(torch.randn(K, C), dim=1)
    expect = 0.0
    for i in range(N):  # -log( exp(q.k+/T) / (exp(q.k+/T) + sum_j exp(q.k_j/T)) )
        pos = math.exp(float(q[i] @ k[i]) / T)
        neg = sum(math.exp(float(q[i] @ queue[j]) / T) for j in range(K))
        expect += -math.log(pos / (pos + neg))
    assert info_nce(q, k, queue, T).item() == pytest.approx(expect / N, rel=1e-5)


def test_info_nce_is_low_when_positive_dominates():
    q = F.normalize(torch.randn(1, 8), dim=1)
    queue = -q.repeat(3, 1)  # every negative points away from the query
    assert info_nce(q, q, queue, 0.1).item() < 1e-6


def test_lr_schedules():
    assert lr_at(0, 100, 1.0, "cosine") == pytest.approx(1.0)
    assert lr_at(50, 100, 1.0, "cosine") == pytest.approx(0.5)
    assert lr_at(100, 100, 1.0, "cosine") == pytest.approx(0.0, abs=1e-12)
    assert lr_at(59, 100, 1.0, "step", (0.6, 0.8)) == pytest.approx(1.0)
    assert lr_at(60, 100, 1.0, "step", (0.6, 0.8)) == pytest.approx(0.1)
    assert lr_at(80, 100, 1.0, "step", (0.6, 0.8)) == pytest.approx(0.01)
    assert lr_at(0, 100, 1.0, "cosine", warmup_steps=10) == pytest.approx(0.1)
    assert lr_at(9, 100, 1.0, "cosine", warmup_steps=10) == pytest.approx(1.0)
    assert scaled_lr(0.03, 512, 256) == pytest.approx(0.06)


def test_step_budget_fits_the_schedule_to_the_time_left():
    # warm-up steps of 1 s, then 0.1 s per step, 2 s of evaluation counted against a 12 s budget:
    # after the warm-up (5 steps, 5 s) 12 - 5 - 2 = 5 s are left for 50 more steps
    b = StepBudget(12.0, start_step=0)
    clock, totals = 0.0, {}
    for step in range(1, 31):
        clock += 1.0 if step <= 5 else 0.1
        t = b.total_steps(step, clock, clock + 2.0)
        if t is not None:
            totals[step] = t
    assert list(totals) == [15, 25]  # every 10 steps after the warm-up, never during it
    assert totals[15] == pytest.approx(15 + (12.0 - 8.0) / 0.1, abs=1)  # 55
    assert totals[25] == pytest.approx(25 + (12.0 - 9.0) / 0.1, abs=1)  # 55
    assert StepBudget(0.0, 0).total_steps(15, 1.0, 1.0) is None  # no budget: the schedule stands
    # a resumed run measures from its own first steps; an exhausted budget still gives step + 1
    late = StepBudget(1.0, start_step=100)
    assert late.total_steps(105, 50.0, 50.0) is None and late.total_steps(115, 51.0, 60.0) == 116
    assert not b.spent(11.9) and b.spent(12.0) and not StepBudget(0.0, 0).spent(1e9)
