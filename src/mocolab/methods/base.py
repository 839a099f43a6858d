"""What the engine drives: a method declares what SGD updates, which (online, target) pairs
follow by momentum, its per-step loss (`forward`, so DistributedDataParallel can wrap it) and
its state update after the step (`after_step`: queue, bank).

A method class also says who it is: its `name` (moco.method=<name>), its `title` (tables,
exports), the config keys only it reads, whether it needs image indices, and how it is built
from a config (`from_config`). `@METHODS.register` (mocolab.registry) makes it available to
every command; docs/contributing.md shows a new method end to end."""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..health import figures


class Method(nn.Module):
    name = ""  # moco.method=<name>
    title = ""  # in tables, exports and model cards
    # the method-specific config keys it reads (keys that some method lists and this one does not
    # are ignored by it: `mocolab sweep` drops such axes, and a non-default value is an error)
    config_keys: frozenset[str] = frozenset()
    needs_index = False  # its loss needs each image's dataset index (the bank): the tensor backend only
    auto_keys: frozenset[str] = frozenset()  # the keys it takes as "auto" (mocolab.auto fitted them for it)
    STATE = ()  # names of child modules that hold the method's state (queue, bank), not weights
    num_views = 2  # augmented views per image the feed makes (1: the bank's single view)
    compiled = False  # set by pretrain.build_model when the encoders are compiled
    cudagraphs = False  # likewise, when they run as CUDA graphs (the step marks its beginning)
    encoder_q: nn.Module  # the online encoder: its backbone is exported and evaluated

    @classmethod
    def from_config(cls, cfg, encoder: nn.Module, n_train: int = 0) -> Method:
        """The method on `encoder` with the config's settings. n_train: the training set's size."""
        raise NotImplementedError

    @classmethod
    def check_config(cls, cfg) -> list[tuple[bool, str]]:
        """(condition, message) pairs that Config.validate checks when moco.method is this one."""
        return []

    @classmethod
    def num_negatives(cls, cfg) -> int:
        """K, the negatives of each query (tables and sweeps): the batch's other keys by default."""
        return cfg.optim.batch_size - 1

    def learnable_params(self) -> list[nn.Parameter]:
        """What SGD updates."""
        return list(self.encoder_q.parameters())

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """(online, target) pairs: target <- m target + (1 - m) online after each step."""
        return []

    def momentum(self, progress: float) -> float:
        """m at `progress` (steps done / schedule length, in [0, 1])."""
        return 0.0

    def encoders(self) -> list[nn.Module]:
        """The encoders that run every step (compiled by run.compile)."""
        return [self.encoder_q]

    def generators(self) -> dict[str, torch.Generator]:
        """Random generators that are part of the state (saved in checkpoints)."""
        return {}

    def forward(self, *views: torch.Tensor, index: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
        """views: augmented batches, each N x 3 x H x W; index: the images' dataset indices (N).
        -> (loss, out): out["logs"] holds 0-dim tensors to log, the rest is for after_step."""
        raise NotImplementedError

    def after_step(self, out: dict) -> None:
        """The method's state update once SGD and the momentum update are done."""

    def health(self, out: dict) -> dict[str, torch.Tensor]:
        """The run's health figures (mocolab.health) from forward's out["pair"]: the queries and
        their positive keys, N x C each; 0-dim tensors, computed before after_step."""
        return figures(*out["pair"]) if "pair" in out else {}

    def chance_loss(self, batch: int) -> float:
        """The loss at chance, ln(K + 1) for K negatives: the batch's other keys by default
        (batch: the global batch)."""
        return math.log(batch)

    def prime(self, views: tuple[torch.Tensor, ...]) -> bool:
        """Before step 0 of a continued pretraining: fills the method's dictionary from one batch's
        views (MoCo: the queue with real keys, never random ones). True once it is full."""
        return True

    def norm_buffers(self) -> list[torch.Tensor]:
        """Buffers a skipped step must restore (BN running statistics): all but the state."""
        return [b for name, mod in self.named_children() if name not in self.STATE for b in mod.buffers()]


class MomentumEncoders(Method):
    """A query encoder f_q (with an optional predictor on the query side) and its momentum copy
    f_k, which SGD never touches: what MoCo v1/v2 and v3 share."""

    def __init__(self, encoder: nn.Module, predictor: nn.Module | None = None):
        super().__init__()
        self.encoder_q = encoder
        self.encoder_k = copy.deepcopy(encoder)  # f_k starts as a copy of f_q
        for p in self.encoder_k.parameters():
            p.requires_grad_(False)  # f_k is updated by momentum only
        # MoCo v3's predictor, query side only (f_k has none: it is f_q's EMA without it)
        self.predictor = predictor

    def learnable_params(self) -> list[nn.Parameter]:
        """f_q and the predictor."""
        return [*self.encoder_q.parameters(), *(self.predictor.parameters() if self.predictor is not None else ())]

    def momentum_pairs(self):
        return [(self.encoder_q, self.encoder_k)]

    def encoders(self) -> list[nn.Module]:
        return [self.encoder_q, self.encoder_k]

    def encode_query(self, x: torch.Tensor) -> torch.Tensor:
        if self.predictor is None:
            return self.encoder_q(x)  # N x C
        return F.normalize(self.predictor(self.encoder_q(x, normalize=False)).float(), dim=1)  # N x C

