"""Optimizers (mocolab.optim): SGD as before, LARS (timm's) and AdamW with biases and norm
parameters out of weight decay (and of LARS's adaptation); frozen parameters left out."""

import pytest
import torch
from conftest import tiny_config
from timm.optim import Lars
from torch import nn

from mocolab.config import ConfigError, OptimConfig
from mocolab.data import TensorData
from mocolab.engine import Trainer
from mocolab.methods import build_method
from mocolab.optim import build_optimizer, param_groups


def _net():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))
    net[0].weight.requires_grad_(False)  # frozen, as a ViT's patch projection
    return net


def test_groups_split_decay_and_drop_frozen():
    net = _net()
    g = param_groups(net.parameters(), 0.1)
    assert [p.shape for p in g[0]["params"]] == [torch.Size([2, 3])] and g[0]["weight_decay"] == 0.1
    assert len(g[1]["params"]) == 4 and g[1]["weight_decay"] == 0.0 and not g[1]["always_adapt"]  # biases, BN
    scaled = param_groups([{"params": net[2].parameters(), "lr_scale": 0.1}], 0.1)  # groups keep their keys
    assert all(x["lr_scale"] == 0.1 for x in scaled)


def test_lars_adapts_decayed_weights_only():
    net = _net()
    opt = build_optimizer(net.parameters(), OptimConfig(name="lars", momentum=0.9, weight_decay=1e-6), 0.5)
    assert isinstance(opt, Lars)
    w, b = net[2].weight, net[2].bias
    w.grad, b.grad = torch.full_like(w, 0.2), torch.full_like(b, 0.2)
    w0, b0 = w.detach().clone(), b.detach().clone()
    opt.step()
    trust = 1e-3 * w0.norm() / (w.grad.norm() + 1e-6 * w0.norm() + 1e-8)  # the LARS paper's ratio
    torch.testing.assert_close(w, w0 - 0.5 * trust * (w.grad + 1e-6 * w0))
    torch.testing.assert_close(b, b0 - 0.5 * b.grad)  # plain SGD, no decay, no adaptation
    assert net[0].weight.grad is None


def test_adamw_excludes_biases_and_norms_from_decay():
    net = _net()
    opt = build_optimizer(net.parameters(), OptimConfig(name="adamw", weight_decay=0.1), 1e-3)
    assert isinstance(opt, torch.optim.AdamW)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    assert sum(len(g["params"]) for g in opt.param_groups) == 5  # the frozen weight is not there


def test_sgd_is_unchanged_and_the_trainer_builds_the_configs():
    net = _net()
    opt = build_optimizer(net.parameters(), OptimConfig(), 0.1)
    assert type(opt) is torch.optim.SGD and len(opt.param_groups[0]["params"]) == 6
    data = TensorData(torch.zeros(16, 3, 16, 16, dtype=torch.uint8), torch.zeros(16, dtype=torch.long), [])
    cfg = tiny_config(**{"optim.name": "adamw", "optim.weight_decay": 0.1})
    t = Trainer(cfg, build_method(cfg), data, torch.device("cpu"), None, None)
    assert isinstance(t.optimizer, torch.optim.AdamW) and t.optimizer.param_groups[1]["weight_decay"] == 0.0
    with pytest.raises(ConfigError, match="optim.name"):
        tiny_config(**{"optim.name": "adam"})
