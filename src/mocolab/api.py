"""mocolab's Python API: the functions behind the commands, for your own images.

`load` a backbone from anything `mocolab knn` accepts, `embed` a folder of images, find
`neighbors` (and near-duplicates, and train/test leaks), and run `pretrain`, `knn`, `linear`,
`detect` and `segment` as the commands run them (one code path: the commands parse their
arguments and call the same library functions). Every function returns plain objects: tensors,
dataclasses, and the dicts that the commands write as JSON.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .config import Config, apply_overrides
from .data import DataError, FileList, cache_size_for, load_splits
from .embeddings import Embeddings
from .errors import UsageError

__all__ = ["Model", "Embeddings", "load", "embed", "neighbors", "knn", "linear", "pretrain", "detect", "segment"]


class EvalTransform:
    """A PIL image -> the 3 x S x S float tensor the evaluations feed the backbone: decoded as
    mocolab decodes (RGB), shorter side to `resize`, center crop S, scaled to [0, 1], normalized."""

    def __init__(self, size: int, mean: list[float], std: list[float]):
        self.size, self.resize = size, cache_size_for(size)
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)

    def __call__(self, img) -> torch.Tensor:
        from .data import resize_square

        arr = resize_square(img.convert("RGB"), self.resize)  # R x R x 3 uint8, as the uint8 cache
        top = (self.resize - self.size) // 2
        x = torch.from_numpy(arr[top:top + self.size, top:top + self.size].copy()).permute(2, 0, 1)
        return (x.float() / 255 - self.mean) / self.std  # 3 x S x S

    def __repr__(self) -> str:
        return (f"EvalTransform(resize={self.resize}, center_crop={self.size}, mean={self.mean.flatten().tolist()}, "
                f"std={self.std.flatten().tolist()})")


@dataclass
class Model:
    """A backbone ready to give features, with what it is.

    backbone: the network (eval mode) mapping B x 3 x S x S normalized images to B x D pooled features.
    transform: a PIL image -> 3 x S x S tensor, the evaluations' preprocessing.
    source: what `load` was given; name: its short name; method, epochs: how it was trained
    (None when unknown); config: the Config whose data/run settings give the preprocessing and
    precision (the run's own for a mocolab checkpoint)."""

    backbone: nn.Module
    transform: Callable
    arch: str
    width: int | None
    stem: str | None
    image_size: int
    mean: list[float]
    std: list[float]
    method: str | None
    epochs: float | None
    source: str
    name: str
    device: torch.device
    config: Config = field(repr=False)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """B x 3 x S x S normalized images -> B x D features (float32, not normalized)."""
        return self.backbone(images.to(self.device)).float().flatten(1)

    @property
    def feature_dim(self) -> int:
        with torch.no_grad():
            x = torch.zeros(1, 3, self.image_size, self.image_size, device=self.device)
            return int(self(x).shape[1])

    def metadata(self) -> dict:
        """The metadata as a JSON-ready dict."""
        keys = ("arch", "width", "stem", "image_size", "mean", "std", "method", "epochs", "source", "name")
        return {k: getattr(self, k) for k in keys}


def _spec(net: nn.Module) -> dict:
    from .models.backbones import infer_arch
    from .models.vit import infer_vit

    sd = net.state_dict()
    vit = infer_vit(sd)
    return {"arch": vit["arch"], "width": None, "stem": None} if vit else infer_arch(sd)


def load(src: str | Path, device: str | torch.device | None = None, *, seed: int = 0,
         image_size: int | None = None) -> Model:
    """Loads a backbone for features.

    Args:
        src: anything `mocolab knn --checkpoint` accepts: a model folder (`mocolab export --format
            folder`), a run folder (its backbone.pth), a training checkpoint, a backbone.pth or
            safetensors export, official MoCo or torchvision weights, or `random:PRESET` (an untrained
            backbone of the preset's architecture, initialised with `seed`).
        device: "cpu", "cuda", a torch.device; None: CUDA when there is one, else the CPU.
        seed: the initialisation of `random:PRESET`.
        image_size: the input side; default the checkpoint's (or preset's).

    Returns:
        A Model: the backbone (eval mode, on `device`), its eval transform and metadata.

    Example:
        >>> import mocolab
        >>> model = mocolab.load("random:cifar10_cpu", device="cpu")
        >>> model.arch, model.image_size, model.feature_dim
        ('resnet10', 32, 128)
    """
    from .eval.load import load_for_eval, random_backbone, resolve_entry
    from .runtime import resolve_device

    src = str(src)
    name, path, _ = resolve_entry(src, seed=seed)
    if path is None:
        net, cfg = random_backbone(src[len("random:"):], seed, image_size)
        method, epochs = "random init", 0.0
    else:
        net, cfg = load_for_eval(str(path), "backbone", image_size)
        meta = _weights_meta(path)
        method, epochs = meta.get("method"), meta.get("epochs")
    dev = resolve_device("auto" if device is None else str(device))
    net = net.to(dev).eval()
    spec = _spec(net)
    mean, std = [float(v) for v in cfg.data.mean], [float(v) for v in cfg.data.std]
    return Model(net, EvalTransform(cfg.data.image_size, mean, std), spec["arch"], spec.get("width"),
                 spec.get("stem"), cfg.data.image_size, mean, std, method,
                 None if epochs is None else float(epochs), src, name, dev, cfg)


def _weights_meta(path: Path) -> dict:
    """method and epochs of a weights file, as `mocolab export` reads them (its metadata, the run's summary)."""
    from .export import read_source

    try:
        return read_source(path)[1]
    except Exception:  # foreign weights whose layout export does not know: no metadata
        return {}


def _files(data: str | Path, limit: int = 0) -> FileList:
    """DIR with train/ (+ test/) -> both splits as one FileList rooted at DIR (paths train/..., test/...);
    any other folder -> its images (labeled by class sub-folders, or not)."""
    if str(data).partition(":")[0] in ("cifar10", "cifar100") and not Path(data).exists():
        raise DataError(f"embed reads image folders; {data} is torchvision's in-memory dataset (give its folder)")
    s = load_splits(str(data), 0, limit=limit, decode=False)
    root = Path(data).expanduser()
    if s.test_files is None:
        fl = s.train_files
        return fl if fl.root == root else FileList(root, fl.files, fl.labels, fl.classes)
    tr, te = s.train_files, s.test_files
    return FileList(root, tr.files + te.files, tr.labels + te.labels, tr.classes)


def embed(model: Model | str, data: str | Path, *, batch_size: int = 256, workers: int | None = None,
          normalize: bool = True, stream: str = "auto", memory_limit_gb: float = 8.0, store_dtype: str = "float32",
          store_dir: str | Path | None = None, limit: int = 0, amp: str | None = None,
          progress: bool = False) -> Embeddings:
    """The features of every image in a folder.

    Args:
        model: a Model from `load`, or anything `load` accepts.
        data: an image folder: class sub-folders (labeled), images directly inside (unlabeled), or
            train/ and test/ (or val/) splits of those (paths then start with the split).
        batch_size: images per forward pass.
        workers: DataLoader workers decoding the files (default: the model config's data.workers).
        normalize: L2-normalize the features (cosine similarity = dot product).
        stream: "auto" keeps the N x D features in memory while they fit `memory_limit_gb`, else
            writes them to a memory-mapped file as they come; "on" always does; "off" never does.
            The images are decoded batch by batch in the workers either way (never all at once).
        memory_limit_gb: see `stream`.
        store_dtype: the memory-mapped file's type, float32 or float16.
        store_dir: where the memory-mapped file goes (default: TMPDIR).
        limit: the first N images of each class (0: all).
        amp: "bf16", "off" or "auto"; default the run's setting.
        progress: show a progress bar.

    Returns:
        Embeddings: features N x D (float32 in memory, or a tensor over the memory-mapped file),
        paths relative to `data`, labels N (None when unlabeled) and the class names. Unreadable
        images are left out with a warning each.

    Example:
        >>> import mocolab
        >>> model = mocolab.load("random:cifar10_cpu", device="cpu")
        >>> emb = mocolab.embed(model, images_dir)  # a folder of 6 images
        >>> emb.features.shape, emb.paths[0], emb.labels
        (torch.Size([6, 128]), 'img0.png', None)
    """
    from .embeddings import extract_embeddings
    from .runtime import resolve_amp

    if not isinstance(model, Model):
        model = load(model)
    fl = _files(data, limit)
    limit_bytes = {"on": 0.0, "off": float("inf")}.get(stream, memory_limit_gb * 2**30)
    if stream not in ("auto", "on", "off"):
        raise UsageError(f"stream must be auto, on or off, got {stream!r}")
    dtype = resolve_amp(amp or model.config.run.amp, model.device)
    return extract_embeddings(model.backbone, fl, model.mean, model.std, size=model.image_size,
                              device=model.device, autocast_dtype=dtype, batch_size=batch_size,
                              workers=model.config.data.workers if workers is None else workers,
                              normalize=normalize, memory_limit=limit_bytes, store_dtype=store_dtype,
                              store_dir=store_dir, progress=progress,
                              meta={**model.metadata(), "data": str(data)})


def neighbors(emb: Embeddings, query: Embeddings | None = None, k: int = 10, *, chunk_rows: int = 16384,
              device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """The k nearest images (cosine similarity) of every query, computed chunk by chunk.

    Args:
        emb: the images searched (the bank), from `embed`.
        query: the images whose neighbours are wanted; None: `emb` itself, each image's own
            row left out.
        k: neighbours per query.
        chunk_rows: bank rows compared at a time (memory: 1024 x chunk_rows similarities).
        device: where the similarities are computed.

    Returns:
        (cosine similarities M x k, bank row indices M x k), most similar first.

    Example:
        >>> import mocolab
        >>> emb = mocolab.embed(mocolab.load("random:cifar10_cpu", device="cpu"), images_dir)
        >>> sims, idx = mocolab.neighbors(emb, k=2)
        >>> idx.shape, bool((idx != torch.arange(6)[:, None]).all())  # never the image itself
        (torch.Size([6, 2]), True)
    """
    from .nearest import top_k

    if query is None:
        return top_k(emb.features, emb.features, k, exclude_self=True, bank_chunk=chunk_rows, device=device)
    return top_k(query.features, emb.features, k, bank_chunk=chunk_rows, device=device)


# ---- the commands' library functions ---------------------------------------------------------


def _context(data, *, limit: int = 0, seed: int = 0, device: str = "auto", amp: str | None = None,
             stream: str = "auto", memory_limit_gb: float = 8.0, store_dtype: str = "float32",
             chunk_rows: int = 16384):
    from .eval.protocols import Context

    return Context(str(data), limit, seed, device, amp, stream=stream, memory_limit_gb=memory_limit_gb,
                   store_dtype=store_dtype, chunk_rows=chunk_rows)


def knn(src: str | Path, data: str | Path, *, k: int = 200, t: float = 0.1, features: str = "backbone",
        image_size: int | None = None, device: str = "auto", amp: str | None = None, limit: int = 0,
        stream: str = "auto", memory_limit_gb: float = 8.0, store_dtype: str = "float32",
        chunk_rows: int = 16384, write: bool = True) -> dict:
    """Weighted kNN top-1 (k neighbours, temperature t) of a backbone's features: `mocolab knn`.

    Args:
        src: anything `load` accepts (random:PRESET: an untrained backbone of the preset).
        data: a folder with labeled train/ and test/ (or val/) splits.
        k, t: neighbours and temperature of the vote.
        features: "backbone" (pooled features) or "head" (a training checkpoint's projection).
        image_size, device, amp, limit: as `mocolab knn`.
        stream, memory_limit_gb, store_dtype, chunk_rows: data larger than memory (`--stream`).
        write: write the result JSON beside the checkpoint (as the command does).

    Returns:
        The result dict the command writes: knn_top1 (%), k, t, train_size, test_size, ...

    Example:
        >>> import mocolab
        >>> r = mocolab.knn("random:cifar10_cpu", labeled_dir, k=5, write=False)
        >>> r["protocol"], r["train_size"], r["test_size"], 0 <= r["knn_top1"] <= 100
        ('knn', 8, 8, True)
    """
    from .eval.protocols import run_knn

    # the command's code path (cli.cmd_knn): one kNN, its result named by every setting
    ctx = _context(data, limit=limit, device=device, amp=amp, stream=stream, memory_limit_gb=memory_limit_gb,
                   store_dtype=store_dtype, chunk_rows=chunk_rows)
    return run_knn(str(src), ctx, k=k, t=t, features=features, image_size=image_size, write=write)


def linear(src: str | Path, data: str | Path, *, mode: str = "cached", weight_decay: float | None = None,
           fit: dict | None = None, crop_scale: tuple[float, float] = (0.08, 1.0), image_size: int | None = None,
           results_dir: str | Path | None = None, seed: int = 0, device: str = "auto", amp: str | None = None,
           limit: int = 0, stream: str = "auto", memory_limit_gb: float = 8.0, store_dtype: str = "float32",
           chunk_rows: int = 16384) -> dict:
    """A linear classifier on the frozen backbone's features: `mocolab linear`.

    Args:
        src: anything `load` accepts.
        data: a folder with labeled train/ and test/ (or val/) splits.
        mode: "cached" (features once, L-BFGS) or "paper" (the MoCo protocol: SGD with augmentation).
        weight_decay: cached: default picked on held-out data; paper: default 0.
        fit: paper mode: FitConfig fields to change from the paper's (epochs 100, lr 30, batch 256, ...).
        crop_scale: paper mode: the random-resized-crop scale.
        image_size, results_dir, seed, device, amp, limit: as `mocolab linear`.
        stream, memory_limit_gb, store_dtype, chunk_rows: data larger than memory (`--stream`).

    Returns:
        The result dict the command writes (top1, top5, train_size, test_size, settings, result_file).

    Example:
        >>> import mocolab
        >>> r = mocolab.linear("random:cifar10_cpu", labeled_dir, results_dir=out_dir)
        >>> r["protocol"], r["train_size"], r["test_size"]
        ('linear (cached features)', 8, 8)
    """
    from .eval.linear import paper_defaults
    from .eval.protocols import Target, knn_and_linear_cached, run_linear_paper

    if mode not in ("cached", "paper"):
        raise UsageError(f"linear mode must be cached or paper, got {mode!r}")
    tg = Target.from_entry(str(src), results_dir or ".", seed, image_size)
    if results_dir and tg.path is not None:
        tg.base = Path(results_dir) / tg.path.name
    ctx = _context(data, limit=limit, seed=seed, device=device, amp=amp, stream=stream,
                   memory_limit_gb=memory_limit_gb, store_dtype=store_dtype, chunk_rows=chunk_rows)
    if mode == "cached":
        return knn_and_linear_cached(tg, ctx, knn=False, weight_decay=weight_decay, reuse=False)["linear_cached"]
    fc = paper_defaults()
    for key, value in {**(fit or {}), **({"weight_decay": weight_decay} if weight_decay is not None else {})}.items():
        if not hasattr(fc, key):
            raise UsageError(f"unknown fit setting {key!r}")
        setattr(fc, key, value)
    return run_linear_paper(tg, ctx, fc, tuple(crop_scale))


def _config(config: str | Config, overrides: dict) -> Config:
    from .config import override_text

    items = [f"{k.replace('__', '.')}={override_text(v)}" for k, v in overrides.items()]
    if isinstance(config, Config):
        return apply_overrides(copy.deepcopy(config), items).validate()
    return Config.from_preset(str(config), **overrides)


def pretrain(data: str | Path, out: str | Path, config: str | Config = "cifar10_cpu", *, overwrite: bool = False,
             init: str | Path | None = None, **overrides) -> dict:
    """Self-supervised pretraining into a run folder: `mocolab pretrain`.

    Args:
        data: an image folder (labels unused; a test/ split beside train/ gives the kNN monitor).
        out: the run folder (config.yaml, metrics.jsonl, checkpoints/, backbone.pth, summary.json).
        config: a preset name (`mocolab presets`), a YAML file or a Config.
        overwrite: replace a run already in `out` (moved aside first), as --overwrite.
        init: continued pretraining, as --init: both encoders start from these weights (anything
            `load` takes); the schedule and the optimizer start fresh.
        **overrides: config overrides, `group__key=value` (run__epochs=2) or **{"optim.lr": 0.1}.

    Returns:
        The run's summary (summary.json): epochs, steps, images_per_second, knn_top1, ...

    Example:
        >>> import mocolab
        >>> s = mocolab.pretrain(labeled_dir, out_dir + "/run", "cifar10_cpu", run__epochs=1,
        ...                      optim__batch_size=4, model__bn_splits=2, data__workers=0, run__compile=False)
        >>> s["steps"], Path(out_dir, "run", "backbone.pth").is_file()
        (2, True)
    """
    from .pretrain import pretrain as run_pretrain
    from .runtime import prepare_run_dir

    if init is not None:
        overrides = {**overrides, "model.init": str(init)}
    cfg = _config(config, overrides)
    prepare_run_dir(out, "pretrain", overwrite=overwrite)
    return run_pretrain(cfg, str(data), out)


def _transfer(kind: str, backbone: str, data, out, config, overwrite: bool, overrides: dict) -> dict:
    from .runtime import prepare_run_dir
    from .transfer.config import TransferConfig, build_transfer_config, check_kind

    items = [f"{k.replace('__', '.')}={v}" for k, v in overrides.items()]
    if isinstance(config, TransferConfig):
        cfg = apply_overrides(copy.deepcopy(config), items).validate()
        check_kind(cfg, kind)
    else:
        cfg = build_transfer_config(str(config or {"detect": "bccd_cpu", "segment": "camvid_cpu"}[kind]), items, kind)
    prepare_run_dir(out, kind, overwrite=overwrite)
    if kind == "detect":
        from .transfer.detect import detection_source, run_detect

        return run_detect(cfg, str(backbone), detection_source([str(d) for d in np.atleast_1d(data)]), out)
    from .transfer.segment import run_segment

    return run_segment(cfg, str(backbone), str(data), out)


def detect(backbone: str | Path, data: str | Path | list, out: str | Path, config=None, *,
           overwrite: bool = False, **overrides) -> dict:
    """Fine-tunes a Faster R-CNN from a backbone and scores it on the test split: `mocolab detect`.

    Args:
        backbone: anything `load` accepts.
        data: a VOC folder (Annotations/, JPEGImages/, ImageSets/Main/) or a COCO folder; a list
            trains on several, tested on the first.
        out: the run folder (detect.json, summary.json, checkpoints/).
        config: a transfer preset name (default bccd_cpu), a YAML file or a TransferConfig.
        overwrite: replace a run already in `out`.
        **overrides: `group__key=value` overrides (task__iters=100).

    Returns:
        The result dict of detect.json: AP, AP50, AP75, coco, backbone, train, settings.

    Example:
        >>> import mocolab
        >>> r = mocolab.detect("random:imagenette_cpu", voc_dir, out_dir + "/det", **TINY_DETECT)
        >>> r["task"], 0 <= r["AP50"] <= 100
        ('detect', True)
    """
    return _transfer("detect", str(backbone), data, out, config, overwrite, overrides)


def segment(backbone: str | Path, data: str | Path, out: str | Path, config=None, *, overwrite: bool = False,
            **overrides) -> dict:
    """Fine-tunes an FCN / DeepLabV3 from a backbone and scores its mIoU: `mocolab segment`.

    Args:
        backbone: anything `load` accepts.
        data: a folder with train/ and test/ (or val/), each images/NAME.jpg + masks/NAME.png.
        out: the run folder (segment.json, summary.json, checkpoints/).
        config: a transfer preset name (default camvid_cpu), a YAML file or a TransferConfig.
        overwrite: replace a run already in `out`.
        **overrides: `group__key=value` overrides (task__iters=100).

    Returns:
        The result dict of segment.json: mIoU, pixel_acc, per-class IoU, backbone, train, settings.

    Example:
        >>> import mocolab
        >>> r = mocolab.segment("random:imagenette_cpu", seg_dir, out_dir + "/seg", **TINY_SEGMENT)
        >>> r["task"], 0 <= r["mIoU"] <= 100
        ('segment', True)
    """
    return _transfer("segment", str(backbone), data, out, config, overwrite, overrides)
