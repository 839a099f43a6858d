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
    "mocov3": {"moco.m", "model.predictor_dim"},  # K = batch - 1, no queue; m always by cosine; no Shuffle BN
}
_SOME = set().union(*METHOD_KEYS.values())
METHOD_NAMES = {"moco": "MoCo", "e2e": "end-to-end", "bank": "memory bank",  # in tables and exports
                "mocov3": "MoCo v3"}


def applies(method: str, key: str) -> bool:
    """Whether `key` (group.name) changes what `method` does; keys no method owns always apply."""
    return key not in _SOME or key in METHOD_KEYS[method]


def build_method(cfg, n_train: int = 0):
    """The config's method on a fresh encoder. n_train: the training set's size (the bank's)."""
    from ..models.encoder import build_encoder, build_query_predictor
    from .bank import MemoryBank
    from .e2e import EndToEnd
    from .moco import MoCo
    from .mocov3 import MoCoV3

    mc, enc_cfg = cfg.moco, cfg.model
    encoder, info = build_encoder(cfg)
    if mc.method == "moco":
        method = MoCo(encoder, enc_cfg.dim, mc.queue_size, mc.m, mc.T, m_schedule=mc.m_schedule,
                      shuffle_bn=mc.shuffle_bn, symmetric=mc.symmetric, predictor=build_query_predictor(cfg))
    elif mc.method == "mocov3":
        method = MoCoV3(encoder, build_query_predictor(cfg), mc.T, mc.m)
    elif mc.method == "e2e":
        method = EndToEnd(encoder, mc.T, shuffle_bn=mc.shuffle_bn)
    else:
        if n_train < 1:
            raise ValueError("moco.method=bank needs the training set's size")
        method = MemoryBank(encoder, n_train, enc_cfg.dim, mc.queue_size, mc.T, m=mc.bank_m, seed=cfg.run.seed)
    method.stem, method.feature_dim = info["stem"], info["feature_dim"]
    return method
