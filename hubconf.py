"""torch.hub entry points: `torch.hub.load(REPO_DIR, "backbone", weights=PATH, source="local")`.

PATH is anything `mocolab knn` accepts: a model folder (`mocolab export --format folder`), a run
folder, a checkpoint or weights file, or random:PRESET. Nothing is downloaded: the weights are
read from PATH, and mocolab is imported from this checkout's src/ when it is not installed.
"""

import sys
from pathlib import Path

dependencies = ["torch", "torchvision", "safetensors", "yaml"]


def _mocolab():
    try:
        import mocolab.api  # noqa: F401
    except ImportError:
        sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))
    import mocolab.api

    return mocolab.api


def backbone(weights: str, device: str = "cpu", pretrained: bool = True, **kwargs):
    """The backbone of `weights` (an nn.Module in eval mode: B x 3 x S x S normalized images ->
    B x D pooled features). Its preprocessing and metadata are attributes: `.mocolab_transform`
    (PIL image -> tensor) and `.mocolab_meta` (arch, width, stem, image_size, mean, std, method, epochs).

    Args:
        weights: a model folder, run folder, weights file, or random:PRESET.
        device: where the module goes.
        pretrained: accepted for torch.hub's convention; weights are always those of `weights`.
        **kwargs: passed to mocolab.load (seed, image_size).
    """
    model = _mocolab().load(weights, device, **kwargs)
    net = model.backbone
    net.mocolab_transform = model.transform
    net.mocolab_meta = model.metadata()
    return net


def model(weights: str, device: str = "cpu", **kwargs):
    """The whole mocolab.api.Model (backbone, transform, metadata) of `weights`."""
    return _mocolab().load(weights, device, **kwargs)
