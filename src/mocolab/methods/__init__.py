"""Contrastive methods the engine drives alike (see DESIGN.md, "Engine and methods").

`METHOD_KEYS`: the config keys that only some methods read. `mocolab sweep` drops a grid axis
from a cell whose method ignores it, so a grid over K and m gives no identical cells.
"""

from __future__ import annotations

METHOD_KEYS = {
    "moco": {"moco.queue_size", "moco.m", "moco.m_schedule", "moco.shuffle_bn", "moco.symmetric",
             "model.predictor_dim", "data.small_crops"},
    "e2e": {"moco.shuffle_bn"},  # K = batch - 1: the dictionary is the (gathered) batch
    "bank": {"moco.queue_size", "moco.bank_m"},  # no key encoder: no m, no Shuffle BN
}
_SOME = set().union(*METHOD_KEYS.values())


def applies(method: str, key: str) -> bool:
    """Whether `key` (group.name) changes what `method` does; keys no method owns always apply."""
    return key not in _SOME or key in METHOD_KEYS[method]
