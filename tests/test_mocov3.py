"""MoCo v3: the loss against a hand computation (2T factor, symmetric, the gathered batch's keys
as negatives, under 2 ranks too), the momentum schedule's end points, what a step trains."""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config
from torch import nn

from mocolab.config import ConfigError
from mocolab.methods import applies, build_method
from mocolab.methods.mocov3 import MoCoV3
from mocolab.models.heads import v3_mlp
from mocolab.step import train_step


class Flat(nn.Module):
    """N x 3 x 2 x 2 -> N x 4 (no BN: exact hand computations)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(12, 4)

    def forward(self, x, normalize=True):
        z = self.fc(x.flatten(1))
        return F.normalize(z, dim=1) if normalize else z


def _hand_loss(q1, q2, k1, k2, T, offset=0):
    """2T (ctr(q1, k2) + ctr(q2, k1)) with plain Python; k*: the global batch's keys, q*: this
    rank's queries, whose positives sit at offset + i."""
    dot = lambda a, b: sum(u * v for u, v in zip(a, b))  # noqa: E731

    def ctr(q, k):
        total = 0.0
        for i, qi in enumerate(q):
            row = [dot(qi, kj) / T for kj in k]
            total += -(row[offset + i] - math.log(sum(math.exp(v) for v in row)))
        return total / len(q) * 2 * T

    return ctr(q1, k2) + ctr(q2, k1)


def _views(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 2, 2, generator=g), torch.randn(n, 3, 2, 2, generator=g)


@pytest.mark.parametrize("T", [0.2, 1.0])
def test_loss_is_2T_times_the_symmetric_contrastive_loss_by_hand(T):
    torch.manual_seed(0)
    method = MoCoV3(Flat(), None, T=T, m=0.99)
    with torch.no_grad():  # f_k differs from f_q, as after some steps
        method.encoder_k.fc.weight.add_(0.3 * torch.randn(4, 12))
    x1, x2 = _views(5)
    loss, out = method(x1, x2)
    q1, q2 = method.encoder_q(x1).tolist(), method.encoder_q(x2).tolist()
    k1, k2 = method.encoder_k(x1).tolist(), method.encoder_k(x2).tolist()
    assert loss.item() == pytest.approx(_hand_loss(q1, q2, k1, k2, T), rel=1e-5)
    assert 0 <= out["logs"]["pretext_acc"].item() <= 100
    loss.backward()  # gradients reach f_q, never f_k
    assert method.encoder_q.fc.weight.grad.abs().sum() > 0 and method.encoder_k.fc.weight.grad is None


def test_predictor_is_on_the_query_side_only():
    torch.manual_seed(0)
    pred = v3_mlp(2, 4, 8, 4, last_bn=False)
    method = MoCoV3(Flat(), pred, T=0.5).eval()  # BN in eval mode: a fixed function
    x1, x2 = _views(4)
    loss = method(x1, x2)[0]
    q = [F.normalize(pred(method.encoder_q(x, normalize=False)), dim=1).tolist() for x in (x1, x2)]
    k = [method.encoder_k(x).tolist() for x in (x1, x2)]
    assert loss.item() == pytest.approx(_hand_loss(q[0], q[1], k[0], k[1], 0.5), rel=1e-5)
    assert [type(m).__name__ for m in pred] == ["Linear", "SplitBatchNorm1d", "ReLU", "Linear"]
    assert all(p.requires_grad for p in method.learnable_params()) and not hasattr(method.encoder_k, "predictor")


def test_official_mlps():
    head = v3_mlp(3, 6, 8, 4)  # ViT projector: 3 layers, the last BN without affine
    names = [type(m).__name__ for m in head]
    assert names == ["Linear", "SplitBatchNorm1d", "ReLU", "Linear", "SplitBatchNorm1d", "ReLU", "Linear",
                     "SplitBatchNorm1d"]
    assert all(m.bias is None for m in head if isinstance(m, nn.Linear)) and not head[-1].affine


def test_momentum_rises_from_m_to_1_along_a_cosine():
    method = MoCoV3(Flat(), None, m=0.99)
    assert method.momentum(0.0) == pytest.approx(0.99)
    assert method.momentum(0.5) == pytest.approx(0.995)
    assert method.momentum(1.0) == 1.0


def test_config_and_a_train_step():
    cfg = tiny_config(**{"moco.method": "mocov3", "model.head": "mlp3_bn", "model.predictor_dim": 32, "moco.m": 0.99})
    assert applies("mocov3", "moco.m") and not applies("mocov3", "moco.queue_size")
    assert not applies("mocov3", "moco.shuffle_bn")
    torch.manual_seed(0)
    model = build_method(cfg)
    assert isinstance(model, MoCoV3) and model.predictor is not None and model.momentum_pairs()
    opt = torch.optim.SGD(model.learnable_params(), lr=0.1)
    k_before = [p.clone() for p in model.encoder_k.parameters()]
    views = (torch.randn(8, 3, 16, 16), torch.randn(8, 3, 16, 16))
    loss, logs = train_step(model, opt, views, m=0.5)
    assert math.isfinite(loss.item()) and "pretext_acc" in logs
    for b, pk, pq in zip(k_before, model.encoder_k.parameters(), model.encoder_q.parameters()):
        torch.testing.assert_close(pk, 0.5 * b + 0.5 * pq)  # f_k <- m f_k + (1 - m) f_q
    with pytest.raises(ConfigError, match="data.small_crops applies to moco.method=moco only"):
        tiny_config(**{"moco.method": "mocov3", "data.small_crops": 2})


def two_rank_part(rank, out):
    """Rank `rank`'s loss on its half of a global batch of 6 (run by test_distributed's 2-rank spawn)."""
    torch.manual_seed(0)
    method = MoCoV3(Flat(), None, T=0.2)
    x1, x2 = (x[rank * 3:(rank + 1) * 3] for x in _views(6))  # this rank's half of a global batch of 6
    loss = method(x1, x2)[0]
    torch.save({"loss": loss.item()}, f"{out}/mocov3_loss{rank}.pt")


@pytest.mark.dist
def test_two_ranks_take_the_global_batchs_keys_as_negatives(two_ranks):
    torch.manual_seed(0)
    method = MoCoV3(Flat(), None, T=0.2)
    x1, x2 = _views(6)
    k1, k2 = method.encoder_k(x1).tolist(), method.encoder_k(x2).tolist()  # all 6 keys: 5 negatives each
    for r in (0, 1):
        q1, q2 = method.encoder_q(x1[r * 3:(r + 1) * 3]).tolist(), method.encoder_q(x2[r * 3:(r + 1) * 3]).tolist()
        got = torch.load(two_ranks / f"mocov3_loss{r}.pt", weights_only=True)["loss"]
        assert got == pytest.approx(_hand_loss(q1, q2, k1, k2, 0.2, offset=3 * r), rel=1e-5)


def test_presets_hold_the_official_defaults():
    from mocolab.config import load_preset

    r50, vit, cpu = (load_preset(n) for n in ("mocov3_r50_imagenet", "mocov3_vit_small_imagenet", "cifar10_vit_cpu"))
    assert {c.moco.method for c in (r50, vit, cpu)} == {"mocov3"}
    assert (r50.optim.name, r50.optim.lr, r50.optim.weight_decay, r50.optim.warmup_epochs, r50.moco.T) == \
        ("lars", 0.6, 1e-6, 10, 1.0)
    assert (vit.optim.name, vit.optim.lr, vit.optim.weight_decay, vit.optim.warmup_epochs, vit.moco.T) == \
        ("adamw", 1.5e-4, 0.1, 40, 0.2)
    assert (r50.model.head, vit.model.head, vit.model.arch, cpu.model.arch) == \
        ("mlp2_bn", "mlp3_bn", "vit_small_patch16", "vit_mini_patch4")
    assert (cpu.model.head, cpu.optim.name, cpu.optim.weight_decay) == ("mlp3_bn", "adamw", 0.1)  # v3's ViT recipe
    assert all((c.model.dim, c.model.hidden_dim, c.model.predictor_dim, c.moco.m) == (256, 4096, 4096, 0.99)
               for c in (r50, vit))
