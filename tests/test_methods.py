"""The three dictionary mechanisms (MoCo, end-to-end, memory bank): each loss against a hand
computation, the bank's update rule and draws, what each method trains and keeps."""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config
from torch import nn

from mocolab.bank import FeatureBank
from mocolab.config import ConfigError
from mocolab.losses import pretext_top1
from mocolab.methods import applies, build_method
from mocolab.methods.bank import MemoryBank
from mocolab.methods.e2e import EndToEnd
from mocolab.step import train_step


class Flat(nn.Module):
    """A tiny encoder: N x 3 x 2 x 2 -> L2-normalised N x 4 (no BN: exact hand computations)."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Flatten()
        self.fc = nn.Linear(12, 4)

    def forward(self, x, normalize=True):
        z = self.fc(self.backbone(x))
        return F.normalize(z, dim=1) if normalize else z


def _xent(logits_row, positive):
    """-log softmax(row)[positive], by hand."""
    return -(logits_row[positive] - math.log(sum(math.exp(v) for v in logits_row)))


def test_end_to_end_loss_is_cross_entropy_over_the_batch_by_hand():
    torch.manual_seed(0)
    enc, T = Flat(), 0.5
    method = EndToEnd(enc, T, shuffle_bn=False)
    x_q, x_k = torch.randn(3, 3, 2, 2), torch.randn(3, 3, 2, 2)
    loss, out = method(x_q, x_k)
    q, k = enc(x_q).tolist(), enc(x_k).tolist()
    dot = lambda a, b: sum(u * v for u, v in zip(a, b))  # noqa: E731
    rows = [[dot(q[i], k[j]) / T for j in range(3)] for i in range(3)]  # positive on the diagonal, K = N - 1
    expect = sum(_xent(rows[i], i) for i in range(3)) / 3
    assert loss.item() == pytest.approx(expect, rel=1e-5)
    top1 = sum(max(range(3), key=lambda j: rows[i][j]) == i for i in range(3)) / 3 * 100
    assert out["logs"]["pretext_acc"].item() == pytest.approx(top1)
    loss.backward()  # the keys carry gradients: f_q gets them through both views
    assert enc.fc.weight.grad is not None and enc.fc.weight.grad.abs().sum() > 0


def test_end_to_end_keys_have_gradients_and_shuffle_bn_changes_only_bn():
    """With Shuffle BN the key batch is permuted before the encoder and put back after: without
    BN the loss is the same as without the shuffle, and gradients flow through the unshuffle."""
    torch.manual_seed(0)
    enc = Flat()
    x_q, x_k = torch.randn(6, 3, 2, 2), torch.randn(6, 3, 2, 2)
    plain = EndToEnd(enc, 0.2, shuffle_bn=False)(x_q, x_k)[0]
    shuffled = EndToEnd(enc, 0.2, shuffle_bn=True)(x_q, x_k, generator=torch.Generator().manual_seed(3))[0]
    torch.testing.assert_close(plain, shuffled)
    g_plain = torch.autograd.grad(plain, enc.fc.weight)[0]
    g_shuf = torch.autograd.grad(shuffled, enc.fc.weight)[0]
    torch.testing.assert_close(g_plain, g_shuf)


def test_memory_bank_loss_by_hand_with_the_banks_own_draw():
    torch.manual_seed(0)
    enc, T, K = Flat(), 0.3, 5
    method = MemoryBank(enc, n=10, dim=4, K=K, T=T, m=0.5, seed=1)
    x, index = torch.randn(2, 3, 2, 2), torch.tensor([7, 2])
    bank = method.bank.features.clone()
    draw = torch.randint(10, (K,), generator=torch.Generator().manual_seed(1 + 1))  # the bank's generator
    loss, out = method(x, index=index)
    q = enc(x).tolist()
    dot = lambda a, b: sum(u * v for u, v in zip(a, b))  # noqa: E731
    expect = 0.0
    for i, idx in enumerate(index.tolist()):
        row = [dot(q[i], bank[idx].tolist()) / T] + [dot(q[i], bank[j].tolist()) / T for j in draw.tolist()]
        expect += _xent(row, 0) / 2  # the positive is the image's own (stale) entry
    assert loss.item() == pytest.approx(expect, rel=1e-5)
    assert torch.equal(out["index"], index) and torch.equal(out["f"], enc(x).detach())


def test_memory_bank_k_all_is_a_softmax_over_every_entry():
    torch.manual_seed(0)
    enc = Flat()
    method = MemoryBank(enc, n=6, dim=4, K=0, T=0.2, seed=0)
    x, index = torch.randn(3, 3, 2, 2), torch.tensor([4, 0, 5])
    loss, out = method(x, index=index)
    logits = enc(x) @ method.bank.features.t() / 0.2  # 3 x 6
    torch.testing.assert_close(loss, F.cross_entropy(logits, index))
    assert out["logs"]["pretext_acc"].item() == pytest.approx(pretext_top1(logits, index).item())


def test_bank_update_rule_and_untouched_entries():
    bank = FeatureBank(8, 4, seed=0)
    before = bank.features.clone()
    idx, f = torch.tensor([1, 6]), F.normalize(torch.randn(2, 4), dim=1)
    bank.update(idx, f, 0.5)
    expect = F.normalize(0.5 * before[idx] + 0.5 * f, dim=1)  # v <- normalize(m v + (1 - m) f)
    torch.testing.assert_close(bank.features[idx], expect)
    rest = [i for i in range(8) if i not in (1, 6)]
    assert torch.equal(bank.features[rest], before[rest])
    torch.testing.assert_close(bank.features.norm(dim=1), torch.ones(8))
    bank.update(torch.tensor([3]), f[:1], 0.0)  # m = 0: the entry becomes the new feature
    torch.testing.assert_close(bank.features[3], f[0])


def test_bank_draws_are_seeded_and_resumable():
    a, b = FeatureBank(100, 4, seed=3), FeatureBank(100, 4, seed=3)
    assert torch.equal(a.sample(7), b.sample(7))
    state = a.gen.get_state()
    first = a.sample(7)
    a.gen.set_state(state)
    assert torch.equal(a.sample(7), first)


@pytest.mark.parametrize("method", ["e2e", "bank"])
def test_train_step_updates_what_each_method_declares(method):
    cfg = tiny_config(**{"moco.method": method, "moco.queue_size": 16})
    torch.manual_seed(0)
    model = build_method(cfg, n_train=32)
    model.train()
    assert model.momentum_pairs() == [] and not hasattr(model, "encoder_k")  # no key encoder
    opt = torch.optim.SGD(model.learnable_params(), lr=0.1)
    before = [p.clone() for p in model.encoder_q.parameters()]
    bank = model.bank.features.clone() if method == "bank" else None
    views = (torch.randn(8, 3, 16, 16),) if method == "bank" else (torch.randn(8, 3, 16, 16),) * 2
    index = torch.arange(8, 16)
    loss, logs = train_step(model, opt, views, index=index, generator=torch.Generator().manual_seed(0))
    assert math.isfinite(loss.item()) and 0 <= logs["pretext_acc"].item() <= 100
    assert any(not torch.equal(b, p) for b, p in zip(before, model.encoder_q.parameters()))
    if method == "bank":  # exactly the batch's entries moved
        moved = (model.bank.features != bank).any(dim=1)
        assert moved.nonzero().flatten().tolist() == list(range(8, 16))


def test_method_keys_and_config_checks():
    assert applies("moco", "moco.m") and not applies("bank", "moco.m") and not applies("e2e", "moco.queue_size")
    assert applies("bank", "moco.queue_size") and applies("e2e", "optim.lr")
    tiny_config(**{"moco.method": "bank", "moco.queue_size": 0})  # K = all
    with pytest.raises(ConfigError, match="moco.method"):
        tiny_config(**{"moco.method": "simclr"})
    with pytest.raises(ConfigError, match="queue_size"):
        tiny_config(**{"moco.queue_size": 0})  # MoCo needs a queue
    with pytest.raises(ConfigError, match="bank_m"):
        tiny_config(**{"moco.method": "bank", "moco.bank_m": 1.0})


def test_end_to_end_shuffle_bn_changes_the_keys_bn_groups(identity_randperm):
    """With split BN (2 groups, as 2 devices) the keys' BN statistics depend on which images share
    a group: Shuffle BN changes the loss; without it q_i and k_i sit in matching groups."""
    cfg = tiny_config(**{"moco.method": "e2e", "model.bn_splits": 2})
    torch.manual_seed(0)
    method = build_method(cfg)
    method.train()
    x_q, x_k = torch.randn(8, 3, 16, 16), torch.randn(8, 3, 16, 16)
    method.shuffle_bn = False
    plain = method(x_q, x_k)[0]
    method.shuffle_bn = True
    shuffled = method(x_q, x_k, generator=torch.Generator().manual_seed(1))[0]
    assert not torch.allclose(plain, shuffled)
    identity = method(x_q, x_k, generator=_IdentityPerm())[0]  # a shuffle that moves nothing
    torch.testing.assert_close(identity, plain)


class _IdentityPerm(torch.Generator):
    """A generator whose randperm is the identity (patched below through torch.randperm)."""


@pytest.fixture
def identity_randperm(monkeypatch):
    real = torch.randperm

    def randperm(n, *a, generator=None, **k):
        if isinstance(generator, _IdentityPerm):
            return torch.arange(n)
        return real(n, *a, generator=generator, **k)

    monkeypatch.setattr(torch, "randperm", randperm)
