"""Contrastive methods the engine drives alike (see DESIGN.md, "Engine and methods").

Each method is one module whose class registers itself (`@METHODS.register`, mocolab.registry):
moco (v1/v2), e2e (end-to-end), bank (memory bank) and mocov3. Nothing outside a method's module
compares method names: commands ask the registry (`method_class`, `applies`).
"""

from __future__ import annotations

from ..registry import METHODS, method_specific_keys
from . import bank, e2e, moco, mocov3  # noqa: F401  (their import registers them)
from .base import Method


def method_class(name: str) -> type[Method]:
    """The method registered as moco.method=`name`."""
    return METHODS.get(name)


def applies(method: str, key: str) -> bool:
    """Whether `key` (group.name) changes what `method` does: keys that no method lists in its
    `config_keys` apply to all; the others only to the methods that list them. `mocolab sweep`
    drops a grid axis from a cell whose method ignores it, so a grid over K and m gives no
    identical cells."""
    return key not in method_specific_keys() or key in method_class(method).config_keys


def build_method(cfg, n_train: int = 0) -> Method:
    """The config's method on a fresh encoder. n_train: the training set's size (the bank's)."""
    from ..models.encoder import build_encoder

    encoder, info = build_encoder(cfg)
    method = method_class(cfg.moco.method).from_config(cfg, encoder, n_train)
    method.stem, method.feature_dim = info["stem"], info["feature_dim"]
    return method
