"""A new method needs one class and its registration, nothing under src/: this file defines a toy
method (SimCLR-style: the other view's keys of the batch are the negatives, no key encoder),
registers it, and pretrains it for one epoch through the CLI (docs/contributing.md shows it)."""

import json

import pytest
import torch
from conftest import cifar_subset
from torch import nn

from mocolab.config import ConfigError, build_config
from mocolab.losses import batch_logits, cross_entropy_at, pretext_top1
from mocolab.methods import applies, method_class
from mocolab.methods.base import Method
from mocolab.registry import METHODS, TASKS


class Toy(Method):
    name = "toy"
    title = "toy contrast"
    config_keys = frozenset({"moco.shuffle_bn"})  # listed by e2e too; the toy ignores the queue, m, ...

    def __init__(self, encoder: nn.Module, T: float):
        super().__init__()
        self.encoder_q, self.T = encoder, T

    @classmethod
    def from_config(cls, cfg, encoder: nn.Module, n_train: int = 0) -> "Toy":
        return cls(encoder, cfg.moco.T)

    def forward(self, x_q, x_k, *, index=None, generator=None):
        q, k = self.encoder_q(x_q), self.encoder_q(x_k)  # N x C each
        logits, labels = batch_logits(q, k, self.T)  # N x N, q_i's positive at i
        return cross_entropy_at(logits, labels), {"logs": {"pretext_acc": pretext_top1(logits, labels)}}


@pytest.fixture
def toy():
    METHODS.register(Toy)
    yield Toy
    METHODS.remove("toy")


def test_a_method_registered_in_a_test_file_pretrains_through_the_cli(toy, cifar_dir, tmp_path):
    from mocolab.cli import main

    data = cifar_subset(cifar_dir, tmp_path / "data", 16)
    out = tmp_path / "run"
    rc = main(["pretrain", "--preset", "cifar10_cpu", "--data", str(data), "--out", str(out), "--epochs", "1",
               "moco.method=toy", "model.width=8", "optim.batch_size=16", "model.bn_splits=2", "run.compile=false",
               "run.amp=off", "run.threads=1", "data.workers=0"])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2 and 0 <= summary["knn_top1"] <= 100
    assert json.loads((out / "backbone.json").read_text())["method"] == "toy contrast"
    state = torch.load(out / "checkpoints" / "final.pth", weights_only=True)
    assert state["config"]["moco"]["method"] == "toy" and not any(k.startswith("queue") for k in state["model"])


def test_the_registry_answers_for_a_new_method(toy):
    assert method_class("toy") is Toy and "toy" in METHODS.names()
    assert applies("toy", "moco.shuffle_bn") and not applies("toy", "moco.queue_size")
    assert applies("toy", "moco.T")  # keys that no method lists apply to all
    # a key another method reads and this one ignores is refused when set (here: MoCo's symmetric views)
    with pytest.raises(ConfigError, match="moco.symmetric applies to moco.method=moco only, not toy"):
        build_config("cifar10_cpu", ["moco.method=toy", "moco.symmetric=true"])
    with pytest.raises(ValueError, match="registered already"):
        METHODS.register(type("Other", (Method,), {"name": "toy"}))


def test_unknown_method_lists_the_registered_ones():
    with pytest.raises(ConfigError, match="moco.method must be one of: .*bank.*e2e.*moco.*mocov3"):
        build_config("cifar10_cpu", ["moco.method=byol"])


def test_the_task_registry_drives_the_commands():
    from mocolab.cli import parser

    assert {"detect", "segment"} <= set(TASKS.names())
    choices = parser()._subparsers._group_actions[0].choices
    for task in TASKS:
        assert task.name in choices and task.result_file == f"{task.name}.json" and task.columns
