"""Running the evaluation protocols on one target (a checkpoint, a run's export or a random
init), with result JSONs beside the checkpoint and reuse of results whose settings match."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import distributed as du
from ..data import DataError, FileList, Splits, TensorData, cache_size_for, decoded_bytes, load_splits
from ..errors import UsageError
from ..limits import check_eval_size, check_temperature
from ..runtime import data_id, resolve_amp, resolve_device
from .classify import FitConfig
from .features import extract_features, extract_to_store
from .finetune import finetune, finetune_defaults, protocol_name
from .knn import knn_accuracy_store
from .linear import CACHED, PAPER, linear_cached_store, linear_paper
from .load import load_for_eval, random_backbone, resolve_entry
from .results import file_identity, find_matching, result_path, write_result
from .store import FeatureStore
from .subsets import check_fraction, label_subset

log = logging.getLogger("mocolab")


@dataclass
class Target:
    """What is evaluated. base: the path that result files are named after."""

    entry: str  # random:PRESET, a run folder or a checkpoint file, as given
    name: str
    path: Path | None
    base: Path
    seed: int = 0
    image_size: int | None = None

    @classmethod
    def from_entry(cls, entry: str, results_dir: Path | str = ".", seed: int = 0, image_size: int | None = None):
        name, path, base = resolve_entry(entry, results_dir, seed)
        return cls(entry, name, path, base, seed, image_size)

    @property
    def method(self) -> str:
        if self.path is None:
            return "random init"
        side = self.path.with_suffix(".json")
        if side.is_file():
            try:
                return json.loads(side.read_text()).get("method", "MoCo")
            except ValueError:
                pass
        return "checkpoint"

    def load(self):
        """-> (backbone returning pooled features N x D, config with the preprocessing)."""
        if self.path is None:
            return random_backbone(self.entry[len("random:"):], self.seed, self.image_size)
        return load_for_eval(str(self.path), "backbone", self.image_size)

    def identity(self) -> dict:
        if self.path is None:
            return {"random_init": self.entry[len("random:"):], "init_seed": self.seed}
        return {"checkpoint": str(self.path.resolve()), **file_identity(self.path)}


STREAM_MODES = ("auto", "on", "off")


@dataclass
class Context:
    """The data and the device, shared by every target of a command.

    stream: "off" decodes each split into memory (data.load_splits: fast for small data); "on" streams
    the files through DataLoader workers (features into a FeatureStore, training batches decoded per
    step); "auto" streams when the decoded train + test splits (N x 3 x S x S bytes) exceed
    memory_limit_gb. Feature stores go to a memory-mapped file of store_dtype (in TMPDIR) when their
    N x D float32 exceed memory_limit_gb; chunk_rows: rows per chunk read from a store."""

    data: str
    limit: int = 0
    seed: int = 0
    device: str = "auto"
    amp: str | None = None  # None: the checkpoint's run setting
    stream: str = "auto"
    memory_limit_gb: float = 8.0
    store_dtype: str = "float32"
    chunk_rows: int = 16384
    _splits: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.stream not in STREAM_MODES:
            raise UsageError(f"--stream must be one of {', '.join(STREAM_MODES)}, got {self.stream!r}")

    @property
    def memory_limit(self) -> float:
        """In bytes."""
        return self.memory_limit_gb * 2**30

    def splits(self, image_size: int) -> Splits:
        size = cache_size_for(image_size)
        if size not in self._splits:
            with du.main_first():  # under torchrun rank 0 decodes into the shared cache first
                s = load_splits(self.data, size, limit=self.limit)
            if s.test is None or not s.train.classes or int(s.train.labels.min()) < 0:
                raise DataError(f"evaluation needs labeled train/ and test/ (or val/) folders under {self.data}")
            self._splits[size] = s
        return self._splits[size]

    def files(self) -> Splits:
        """The train and test FileLists (Splits.train_files, test_files), not decoded."""
        if "files" not in self._splits:
            s = load_splits(self.data, 0, limit=self.limit, decode=False)
            if s.test_files is None or not s.train_files.classes:
                raise DataError(f"evaluation needs labeled train/ and test/ (or val/) folders under {self.data}")
            self._splits["files"] = s
        return self._splits["files"]

    def streaming(self, image_size: int) -> bool:
        """Whether the splits are streamed from their files (see `stream`)."""
        if self.stream == "off":
            return False
        name = str(self.data).partition(":")[0]
        # CIFAR by name: torchvision's arrays, in memory
        if name in ("cifar10", "cifar100") and not Path(self.data).exists():
            if self.stream == "on":
                raise UsageError(f"--stream on reads image folders; {self.data} is torchvision's in-memory "
                                 "dataset (give its folder, or --stream off)")
            return False
        if self.stream == "on":
            return True
        s = self.files()
        need = decoded_bytes(len(s.train_files) + len(s.test_files), cache_size_for(image_size))
        if need > self.memory_limit:
            log.info("streaming the evaluation: the decoded splits would take %.1f GB > --memory-limit-gb %g",
                     need / 2**30, self.memory_limit_gb)
            return True
        return False

    def data_id(self) -> str:
        return data_id(self.data)

    def number_settings(self, streamed: bool, autocast_dtype) -> dict:
        """The context's settings that can change a result's numbers, for its settings (and so its
        file name): the autocast type in effect, whether the splits are streamed and, for a float16
        store, the store's type and the memory limit that sends features to it (a float32 store
        holds the very features of the in-memory path). The others (device, chunk_rows) change
        float rounding only: the result records them (results.NOT_IN_NAME says why each is left out)."""
        st = {"amp": str(autocast_dtype).removeprefix("torch.") if autocast_dtype is not None else "off",
              "stream": streamed}
        if streamed and self.store_dtype != "float32":
            st.update(store_dtype=self.store_dtype, memory_limit_gb=self.memory_limit_gb)
        return st


def _prepare(target: Target, ctx: Context):
    net, cfg = target.load()
    device = resolve_device(ctx.device)
    check_eval_size(cfg.data.image_size, device=device)
    net = net.to(device)
    if cfg.run.channels_last:
        net = net.to(memory_format=torch.channels_last)
    dtype = resolve_amp(ctx.amp or cfg.run.amp, device)
    return net, cfg, device, dtype


def _settings(target: Target, ctx: Context, cfg, key: str, dtype, streamed: bool, **params) -> dict:
    """What a result of protocol `key` depends on (compare reuses a result whose settings match; all
    but weights, key and seed enter its file name: results.settings_digest)."""
    return {"key": key, "weights": target.identity(), "data": ctx.data_id(), "limit": ctx.limit,
            "seed": ctx.seed, "image_size": cfg.data.image_size, **ctx.number_settings(streamed, dtype), **params}


def _record(target: Target, ctx: Context, protocol: str, settings: dict, numbers: dict, sizes: tuple[int, int],
            seconds: float, device) -> dict:
    """sizes: (train images, test images) evaluated."""
    return {"protocol": protocol, "name": target.name, "method": target.method,
            "checkpoint": str(target.path) if target.path else target.entry, "data": ctx.data_id(),
            "seed": ctx.seed, "train_size": sizes[0], "test_size": sizes[1],
            **numbers, "settings": settings, "seconds": seconds, "device": str(device), "chunk_rows": ctx.chunk_rows}


def knn_and_linear_cached(target: Target, ctx: Context, *, knn: bool = True, linear: bool = True, k: int = 200,
                          t: float = 0.1, weight_decay: float | None = None, reuse: bool = True) -> dict:
    """kNN and the cached-feature linear probe on one feature extraction -> {key: result}.
    Streamed (ctx.streaming): the features go to FeatureStores (on disk over the memory limit) and
    both protocols read them chunk by chunk; a result records how ("features_store")."""
    net, cfg, device, dtype = _prepare(target, ctx)
    streamed = ctx.streaming(cfg.data.image_size)
    wanted = {}
    if knn:
        wanted["knn"] = _settings(target, ctx, cfg, "knn", dtype, streamed, k=k, t=t, features="backbone")
    if linear:
        wanted["linear_cached"] = _settings(target, ctx, cfg, "linear_cached", dtype, streamed,
                                            weight_decay=weight_decay)
    out = {}
    for key, st in wanted.items():
        old = find_matching(target.base, key, st) if reuse else None
        if old is not None:
            log.info("%s: reusing %s", target.name, old["result_file"])
            out[key] = old
    todo = [key for key in wanted if key not in out]
    if not todo:
        return out
    t0 = time.perf_counter()
    train, test, num_classes, how = feature_stores(net, cfg, ctx, device, dtype, streamed)
    t_feat = time.perf_counter() - t0
    try:
        for key in todo:
            t1 = time.perf_counter()
            if key == "knn":
                acc = knn_from_stores(train, test, num_classes, k, t, ctx, device)
                numbers = {"top1": acc, "knn_top1": acc, "k": k, "t": t, "features": "backbone"}
                protocol = "knn"
            else:
                numbers = linear_from_stores(train, test, num_classes, weight_decay, ctx, device)
                protocol = CACHED
            rec = _record(target, ctx, protocol, wanted[key], {**numbers, "features_store": how},
                          (len(train), len(test)), t_feat + time.perf_counter() - t1, device)
            path = result_path(target.base, key, wanted[key])
            rec["result_file"] = str(path)
            write_result(path, rec)
            out[key] = rec
    finally:
        train.close()
        test.close()
    return out


def feature_stores(net, cfg, ctx: Context, device, dtype,
                   streamed: bool) -> tuple[FeatureStore, FeatureStore, int, str]:
    """The raw features (not normalised) of the train (N x D) and test (M x D) splits in
    FeatureStores, and (num_classes, how they are held). streamed: the files go through DataLoader
    workers into stores (on disk in ctx.store_dtype over ctx.memory_limit_gb); else the splits are
    decoded into memory (under torchrun each rank extracts a shard) and the stores hold the tensors.
    Either way the readers (kNN, the linear probe) take them chunk by chunk. The caller closes both."""
    kw = {"device": device, "size": cfg.data.image_size, "channels_last": cfg.run.channels_last,
          "autocast_dtype": dtype, "normalize": False}
    if not streamed:
        splits = ctx.splits(cfg.data.image_size)
        f_tr, y_tr = extract_features(net, splits.train, cfg.data.mean, cfg.data.std, **kw)  # N x D
        f_te, y_te = extract_features(net, splits.test, cfg.data.mean, cfg.data.std, **kw)  # M x D
        return FeatureStore.from_tensor(f_tr, y_tr), FeatureStore.from_tensor(f_te, y_te), \
            len(splits.train.classes), "memory"
    files = ctx.files()
    kw.update(memory_limit=ctx.memory_limit, store_dtype=ctx.store_dtype, workers=cfg.data.workers)
    train = extract_to_store(net, files.train_files, cfg.data.mean, cfg.data.std, **kw)  # N x D
    try:
        test = extract_to_store(net, files.test_files, cfg.data.mean, cfg.data.std, **kw)  # M x D
    except BaseException:
        train.close()
        raise
    how = f"disk {ctx.store_dtype}" if train.on_disk or test.on_disk else "memory (streamed)"
    return train, test, len(files.train_files.classes), how


def run_knn(entry: str, ctx: Context, *, k: int = 200, t: float = 0.1, features: str = "backbone",
            image_size: int | None = None, write: bool = True) -> dict:
    """`mocolab knn`: the weighted kNN top-1 of `entry`'s features (backbone: pooled; head: a training
    checkpoint's projection), train split as the bank -> the result dict. write: to
    BASE.knn_kK_tT_FEATURES.seed0.DIGEST.json beside the checkpoint (never compare's BASE.knn.seed0.*:
    that one is the backbone's at compare's settings), named by every setting that can change the figure."""
    check_temperature(t, "--t")
    _, path, base = resolve_entry(entry)  # the same inputs as linear, finetune, compare, export
    if path is None:
        if features == "head":
            raise UsageError("--features head needs a trained checkpoint; random:PRESET has only a backbone")
        net, cfg = random_backbone(entry[len("random:"):], 0, image_size)
    else:
        if features == "head" and Path(entry).is_dir():  # the head is in the training state
            path = Path(entry) / "checkpoints" / "final.pth"
        net, cfg = load_for_eval(str(path), features, image_size)
    # under torchrun the features are sharded over ranks
    device = du.setup(resolve_device(ctx.device))
    check_eval_size(cfg.data.image_size, device=device)
    net = net.to(device)
    if cfg.run.channels_last:
        net = net.to(memory_format=torch.channels_last)
    dtype = resolve_amp(ctx.amp or cfg.run.amp, device)  # as in the run, so the figures agree
    streamed = ctx.streaming(cfg.data.image_size)
    settings = {"seed": 0, "data": str(ctx.data), "limit": ctx.limit, "image_size": cfg.data.image_size,
                "k": k, "t": t, "features": features, **ctx.number_settings(streamed, dtype)}
    t0 = time.perf_counter()
    train, test, num_classes, how = feature_stores(net, cfg, ctx, device, dtype, streamed)
    with train, test:
        acc = knn_from_stores(train, test, num_classes, k, t, ctx, device)
        sizes = len(train), len(test)
    result = {"protocol": "knn", "top1": acc, "knn_top1": acc, "k": k, "t": t, "features": features,
              "checkpoint": str(entry), "data": str(ctx.data), "train_size": sizes[0], "test_size": sizes[1],
              "features_store": how, "settings": settings, "seconds": time.perf_counter() - t0,
              "device": str(device), "chunk_rows": ctx.chunk_rows}
    if write and du.is_main():
        out = result_path(base, f"knn_k{k}_t{t:g}_{features}", settings)
        write_result(out, {**result, "result_file": str(out)})
        result["result_file"] = str(out)
    return result


def knn_from_stores(train: FeatureStore, test: FeatureStore, num_classes: int, k: int, t: float, ctx: Context,
                    device) -> float:
    """The kNN top-1, chunk by chunk (1024 queries against ctx.chunk_rows bank rows at a time:
    similarities 1024 x chunk_rows float32, 64 MB at the default 16384), wherever the features are:
    one computation for both paths, so that streamed and in-memory features give the same figure."""
    return knn_accuracy_store(train, test, num_classes, k, t, device=device, query_chunk=min(1024, ctx.chunk_rows),
                              bank_chunk=ctx.chunk_rows)


def linear_from_stores(train: FeatureStore, test: FeatureStore, num_classes: int, weight_decay, ctx: Context,
                       device) -> dict:
    """The cached linear probe, its loss summed over ctx.chunk_rows rows at a time wherever the
    features are (in memory: slices): one computation for both paths. L-BFGS on a weakly
    regularised problem follows float rounding: the whole-matrix fit (linear_cached) and this one
    differed by 2 of 10,000 test predictions on 50k features (benchmarks/RESULTS.md, session 11)."""
    return linear_cached_store(train, test, num_classes, weight_decay=weight_decay, seed=ctx.seed,
                               chunk=ctx.chunk_rows, device=device)


def loop_dir(result: Path) -> Path:
    """The folder beside a result JSON that holds its training loop's checkpoints, metrics.jsonl
    and tb/ (`backbone.linear_paper.seed0.3f2a9c1d.json` -> `backbone.linear_paper.seed0.3f2a9c1d.run/`):
    a stopped protocol run resumes there when started again with the same settings."""
    return result.with_suffix(".run")


def _train_test(ctx: Context, streamed: bool, image_size: int) -> tuple[TensorData | FileList, TensorData | FileList]:
    """The train and test splits for a training loop: decoded in memory, or their files when streamed."""
    if streamed:
        s = ctx.files()
        return s.train_files, s.test_files
    s = ctx.splits(image_size)
    return s.train, s.test


def run_linear_paper(target: Target, ctx: Context, fc: FitConfig, crop_scale=(0.08, 1.0), reuse: bool = False) -> dict:
    net, cfg, device, dtype = _prepare(target, ctx)
    fc.seed = ctx.seed
    streamed = ctx.streaming(cfg.data.image_size)
    # fc_init: results before it differ
    st = _settings(target, ctx, cfg, "linear_paper", dtype, streamed, fit=fc.to_dict(), crop_scale=list(crop_scale),
                   frozen_backbone=True, bn="eval", fc_init="normal_0.01")
    path = result_path(target.base, "linear_paper", st)
    if reuse and (old := find_matching(target.base, "linear_paper", st)) is not None:
        return old
    train, test = _train_test(ctx, streamed, cfg.data.image_size)
    torch.manual_seed(ctx.seed)  # the linear layer's init
    t0 = time.perf_counter()
    numbers = linear_paper(net, train, test, cfg.data.mean, cfg.data.std, cfg.data.image_size, fc,
                           device, dtype, cfg.run.channels_last, crop_scale, out=loop_dir(path), settings=st,
                           workers=cfg.data.workers)
    numbers["streamed"] = isinstance(train, FileList)
    rec = _record(target, ctx, PAPER, st, numbers, (len(train), len(test)), time.perf_counter() - t0, device)
    rec["result_file"] = str(path)
    write_result(path, rec)
    return rec


def run_finetune(target: Target, ctx: Context, fraction: float, *, epochs: int | None = None,
                 batch_size: int | None = None, lr: float | None = None, weight_decay: float | None = None,
                 budget_minutes: float = 0.0, backbone_lr_scale: float = 1.0, crop_scale=(0.2, 1.0),
                 reuse: bool = False) -> dict:
    check_fraction(fraction)
    net, cfg, device, dtype = _prepare(target, ctx)
    streamed = ctx.streaming(cfg.data.image_size)
    train, test = _train_test(ctx, streamed, cfg.data.image_size)  # needed to size the defaults
    n_labeled = len(label_subset(train.labels, fraction, ctx.seed))
    fc = finetune_defaults(n_labeled, batch_size, epochs)
    if lr is not None:
        fc.lr = lr
    if weight_decay is not None:
        fc.weight_decay = weight_decay
    fc.budget_minutes, fc.seed = budget_minutes, ctx.seed
    key = f"finetune_{fraction:g}"
    st = _settings(target, ctx, cfg, key, dtype, streamed, fraction=fraction, fit=fc.to_dict(),
                   backbone_lr_scale=backbone_lr_scale, crop_scale=list(crop_scale))
    path = result_path(target.base, key, st)
    if reuse and (old := find_matching(target.base, key, st)) is not None:
        log.info("%s: reusing %s", target.name, old["result_file"])
        return old
    t0 = time.perf_counter()
    numbers = finetune(net, train, test, fraction, cfg.data.mean, cfg.data.std, cfg.data.image_size,
                       fc, device, dtype, cfg.run.channels_last, backbone_lr_scale, crop_scale, ctx.seed,
                       out=loop_dir(path), settings=st, workers=cfg.data.workers)
    numbers["streamed"] = isinstance(train, FileList)
    rec = _record(target, ctx, protocol_name(fraction), st, numbers, (len(train), len(test)),
                  time.perf_counter() - t0, device)
    rec["label_fraction"] = fraction
    rec["result_file"] = str(path)
    write_result(path, rec)
    return rec
