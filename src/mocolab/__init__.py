"""mocolab: Momentum Contrast (MoCo v1/v2/v3) for self-supervised visual representation learning.

The Python API (the same functions the `mocolab` commands call; `help(mocolab.load)` for each):

- ``load(src, device=None)`` -> Model: a backbone giving pooled features, its eval transform and
  metadata, from a model folder, a run folder, any checkpoint or weights file, or ``random:PRESET``.
- ``embed(model, data, ...)`` -> Embeddings: the features of every image in a folder, with their
  relative paths and labels; streamed to a memory-mapped file for folders larger than memory.
- ``neighbors(emb, query=None, k=10)`` -> (similarities, indices): the k nearest images, chunked.
- ``pretrain(data, out, config, **overrides)``, ``knn(src, data, ...)``, ``linear(src, data, ...)``,
  ``detect(backbone, data, out, ...)``, ``segment(backbone, data, out, ...)`` -> the result dict
  that the command writes.
- ``Config.from_preset(name, **overrides)``: a preset's config with overrides.

Example:
    >>> import mocolab
    >>> model = mocolab.load("random:cifar10_cpu", device="cpu")
    >>> emb = mocolab.embed(model, images_dir)
    >>> sims, idx = mocolab.neighbors(emb, k=3)
    >>> sims.shape
    torch.Size([6, 3])
"""

import sys as _sys
import types as _types

__version__ = "0.1.0"

__all__ = ["load", "embed", "neighbors", "pretrain", "knn", "linear", "detect", "segment", "Model", "Embeddings",
           "Config"]


_API = frozenset(__all__)


class _Package(_types.ModuleType):
    """The package object: the API's names stay the API's functions even once a submodule of the
    same name (mocolab/pretrain.py) has been imported, which would otherwise rebind them;
    `sys.modules["mocolab.pretrain"]` (importlib.import_module) is that submodule."""

    def __setattr__(self, name: str, value) -> None:
        if name in _API and isinstance(value, _types.ModuleType):
            return  # the import system binding a submodule: it stays in sys.modules only
        super().__setattr__(name, value)


_sys.modules[__name__].__class__ = _Package


def __getattr__(name: str):
    """The API, imported on first use: `import mocolab` stays light (no torch until it is needed)."""
    if name == "Config":
        from .config import Config

        return Config
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'mocolab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__} - {"_sys", "_types", "_API", "_Package"})
