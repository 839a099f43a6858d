"""Typed run configuration: dataclasses, YAML presets and `key=value` overrides.

A config is four groups (model / moco / data / optim) plus `run`. Presets are YAML files in
`mocolab/presets/`; any key can be overridden on the command line as `group.key=value` or,
when the name is unique, as plain `key=value`. The resolved config is saved with every run
and inside every checkpoint as a plain dict.
"""

from __future__ import annotations

import difflib
import math
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path

import yaml

from .auto import is_auto
from .errors import UserError
from .registry import METHODS, method_specific_keys

ARCHS = ("resnet10", "resnet18", "resnet34", "resnet50",  # mocolab.models.backbones
         "vit_small_patch16", "vit_base_patch16", "vit_tiny_patch4", "vit_mini_patch4")  # mocolab.models.vit
HEADS = ("linear", "mlp", "mlp_bn", "mlp2_bn", "mlp3_bn")  # mocolab.models.heads
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # torch.compile's


class ConfigError(UserError, ValueError):
    """A bad preset, key or value. The message is meant for the user, as is."""


@dataclass
class ModelConfig:
    # resnet10 (one block per stage) | resnet18 | resnet34 | resnet50 | vit_small_patch16 | vit_base_patch16 |
    # vit_tiny_patch4 | vit_mini_patch4 (CIFAR size): MoCo v3's ViTs from timm (frozen patch projection,
    # sin-cos positions)
    arch: str = "resnet18"
    width: int = 64  # channels of the first stage (64 = torchvision's ResNet)
    stem: str = "auto"  # auto | cifar | imagenet ("auto": cifar below 96 px)
    # linear (MoCo v1) | mlp (MoCo v2) | mlp_bn (MLP with BN after the hidden layer) | mlp2_bn, mlp3_bn
    # (MoCo v3's official projectors, ResNet and ViT: BN after every layer, the last one without affine)
    head: str = "mlp"
    dim: int = 128  # feature dimension of the head's output
    hidden_dim: int = 2048  # MLP head's hidden width
    predictor_dim: int = 0  # hidden width of a MoCo v3 / BYOL predictor MLP on the query side (0 = none; mocov3 too)
    # BN groups of the GLOBAL batch (the paper's GPUs): each of W processes takes bn_splits / W of them
    # (at least 1), so a preset's BN is the same on 1 process, 8 or 64 (see rank_bn_splits); 1 = plain BN
    bn_splits: int = 8
    zero_init_residual: bool = False  # last BN of each residual block starts at 0 (Goyal et al. 2017)
    sync_bn: bool = False  # SyncBatchNorm over all ranks (GPUs; MoCo v3 style, instead of shuffle BN)
    # continued pretraining (--init): weights both encoders start from (anything `mocolab knn` takes, or a
    # model folder); a mocolab run or training checkpoint also gives the key encoder and the head ('' = random)
    init: str = ""




@dataclass
class MocoConfig:
    # how the dictionary is built: moco (queue + momentum key encoder) | e2e (keys from f_q with
    # gradient, negatives = the other keys of the batch) | bank (memory bank of every image, InstDisc)
    # | mocov3 (symmetric, negatives = the gathered batch's keys, no queue; m from moco.m to 1 by cosine)
    method: str = "moco"
    # K: the queue's size (moco; auto: from the schedule's length, mocolab/auto.py); negatives drawn
    # from the bank (bank; 0 = every entry)
    queue_size: int | str = 65536
    # momentum of the key encoder (mocov3: its start, rising to 1 by cosine whatever m_schedule);
    # auto (moco): from the schedule's length (mocolab/auto.py)
    m: float | str = 0.999
    T: float = 0.2  # temperature
    symmetric: bool = False  # both views serve as queries (the official CIFAR demo's option)
    shuffle_bn: bool = True  # encode keys on a shuffled batch
    m_schedule: str = "constant"  # constant | cosine (MoCo v3 / BYOL: m rises from moco.m to 1 over the run)
    bank_m: float = 0.5  # bank: v <- normalize(bank_m v + (1 - bank_m) f) after each step


@dataclass
class DataConfig:
    image_size: int = 224  # evaluation (center crop) and, unless crop_size is set, training views
    crop_size: int = 0  # side of the training views if smaller than image_size (0 = image_size)
    augment: str = "v2"  # v1 | v2 (aug+) | cifar (the official CIFAR demo's) | none
    crop_scale: list[float] = field(default_factory=list)  # [min, max] crop area, instead of the preset's ([] = preset)
    small_crops: int = 0  # multi-crop (SwAV): extra small query views per image, each matched to the key (0 = off)
    small_crop_size: int = 16  # their side in px
    small_crop_scale: list[float] = field(default_factory=lambda: [0.1, 0.5])  # their crop area range
    backend: str = "tensor"  # tensor (batched, on the model's device) | pil (torchvision per image)
    cache: bool = True  # decode once into an in-memory uint8 tensor (needed by the tensor backend)
    cache_dir: str = ""  # where decoded caches are kept ("" = ~/.cache/mocolab)
    workers: int = 2  # DataLoader workers (decoding, PIL backend)
    # per-channel mean (0-1) the images are normalized with (ImageNet's by default)
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    # per-channel standard deviation (0-1) of that normalization
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    limit: int = 0  # use only the first N images of each split (0 = all); for smoke tests
    shuffle_buffer: int = 5000  # tar shards: samples in the shuffle buffer (per loader worker)
    knn_data: str = ""  # tar shards: labeled data (train/ + test/) for the kNN monitor ("" = none)


@dataclass
class OptimConfig:
    # pretraining's optimizer (mocolab.optim): sgd (decay on every parameter) | lars (timm's; MoCo v3
    # ResNets) | adamw (MoCo v3 ViTs); lars and adamw exclude biases and norm parameters from decay
    name: str = "sgd"
    batch_size: int = 256  # global batch
    lr: float = 0.03  # learning rate at base_batch_size; scaled linearly with batch_size
    base_batch_size: int = 256  # optim.lr is the rate for this batch; the lr used is lr x batch_size / base_batch_size
    momentum: float = 0.9  # SGD's momentum (AdamW: its beta1)
    weight_decay: float = 1e-4  # L2 penalty on the weights (BN and bias excluded where the optimizer does so)
    schedule: str = "step"  # step | cosine
    milestones: list[float] = field(default_factory=lambda: [0.6, 0.8])  # step: fractions of training
    warmup_epochs: float = 0.0  # linear learning-rate warm-up from 0, in epochs (fractions allowed)


@dataclass
class RunConfig:
    epochs: int = 200  # the schedule's length in epochs (unless run.budget_minutes sets a time budget)
    budget_minutes: float = 0.0  # > 0: a complete run (schedule included) that fits this budget
    seed: int = 0  # data order, augmentation, initialization and Shuffle BN: a run is reproducible from it
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: str = "auto"  # auto | bf16 | off ("auto": bf16 on CUDA and on CPUs with fast bf16, AMX / AVX-512-BF16)
    channels_last: bool = True  # NHWC memory format for the convolutions (faster with oneDNN and cuDNN)
    # torch.compile both encoders (a cold compile takes a sizeable share of a short budget on this
    # CPU, a warm one seconds: benchmarks/RESULTS.md, session 6, 'torch.compile, cold and warm')
    compile: bool = False
    # with compile: a cold compile only under a time budget of at least this many minutes; a warm one (its
    # graphs in the inductor cache) under any budget >= 1 minute (compiling.py); 0: always
    compile_min_minutes: float = 0.0
    # torch.compile's mode for the encoders: default | reduce-overhead (CUDA graphs: one replay per
    # encoder call instead of a launch per kernel, on CUDA) | max-autotune (tuned kernels, CUDA
    # graphs too) | max-autotune-no-cudagraphs
    compile_mode: str = "default"
    threads: int = 0  # torch intra-op threads (0 = torch's default)
    log_every: int = 20  # steps between progress/metric lines
    # pretraining: the health figures (mocolab.health) on the first step of each log line's window,
    # and warnings with advice when they show collapse, a loss stuck at chance or stale keys
    health: bool = True
    knn_every: int = 0  # epochs between kNN monitors (0 = only at the end)
    knn_k: int = 200  # the kNN monitor's neighbours
    knn_t: float = 0.1  # the kNN monitor's temperature (the vote's weight exp(sim / t))
    knn_features: str = "backbone"  # backbone (pooled, before the head) | head
    keep_checkpoints: int = 2  # periodic checkpoints kept (the newest N), besides final.pth
    checkpoint_every: int = 0  # steps between mid-epoch checkpoints (0 = at epoch ends only)
    save_every: int = 1  # epochs between epoch-end checkpoints (0 = none; final.pth and preemption save always)
    skip_nonfinite: int = 0  # steps with a NaN/Inf loss to skip before stopping (0 = stop at the first)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    moco: MocoConfig = field(default_factory=MocoConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> Config:
        """A preset's config with overrides, validated.

        Args:
            name: a preset name (`mocolab presets`) or a YAML file.
            **overrides: group__key=value pairs (`optim__lr=0.1`) or a dict of dotted keys
                passed as `**{"optim.lr": 0.1}`.

        Returns:
            The validated Config.

        Example:
            >>> from mocolab.config import Config
            >>> cfg = Config.from_preset("cifar10_cpu", **{"optim.lr": 0.05}, run__epochs=2)
            >>> cfg.optim.lr, cfg.run.epochs
            (0.05, 2)
        """
        items = [f"{k.replace('__', '.')}={override_text(v)}" for k, v in overrides.items()]
        return build_config(name, items)

    def validate(self) -> Config:
        """Checks the values that a type alone cannot; raises ConfigError."""
        checks = [
            (self.model.arch in ARCHS, f"model.arch must be one of: {', '.join(ARCHS)}"),
            (self.model.stem in ("auto", "cifar", "imagenet"), "model.stem must be auto, cifar or imagenet"),
            (self.model.head in HEADS, f"model.head must be one of: {', '.join(HEADS)}"),
            (self.model.width > 0 and self.model.dim > 0, "model.width and model.dim must be positive"),
            (self.model.bn_splits >= 1, "model.bn_splits must be >= 1"),
            (self.model.predictor_dim >= 0, "model.predictor_dim must be >= 0"),
            (not self.model.sync_bn or self.model.bn_splits == 1, "model.sync_bn=true needs model.bn_splits=1"),
            (0.0 <= self.moco.bank_m < 1.0, "moco.bank_m must lie in [0, 1)"),
            (is_auto(self.moco.m) or 0.0 <= self.moco.m < 1.0,
             "moco.m must lie in [0, 1) (the key encoder's momentum), or be auto"),
            (self.moco.m_schedule in ("constant", "cosine"), "moco.m_schedule must be constant or cosine"),
            (0 < self.moco.T < math.inf, "moco.T must be positive"),
            (self.data.augment in ("v1", "v2", "cifar", "none"), "data.augment must be v1, v2, cifar or none"),
            (self.data.backend in ("tensor", "pil"), "data.backend must be tensor or pil"),
            (self.data.backend == "pil" or self.data.cache, "data.backend=tensor needs data.cache=true"),
            (self.data.image_size >= 8, "data.image_size must be >= 8"),
            (self.data.crop_size == 0 or 8 <= self.data.crop_size, "data.crop_size must be 0 or >= 8"),
            (not self.data.crop_scale or (len(self.data.crop_scale) == 2 and 0 < self.data.crop_scale[0]
                                          <= self.data.crop_scale[1] <= 1),
             "data.crop_scale must be [] or [min, max] with 0 < min <= max <= 1"),
            (len(self.data.mean) == 3 and len(self.data.std) == 3, "data.mean and data.std need 3 values"),
            (self.data.small_crops >= 0 and self.data.small_crop_size >= 8,
             "data.small_crops must be >= 0 and data.small_crop_size >= 8"),
            (len(self.data.small_crop_scale) == 2
             and 0 < self.data.small_crop_scale[0] <= self.data.small_crop_scale[1] <= 1,
             "data.small_crop_scale must be [min, max] with 0 < min <= max <= 1"),
            (not self.data.small_crops or (self.data.backend == "tensor" and not self.moco.symmetric),
             "data.small_crops needs data.backend=tensor and moco.symmetric=false"),
            (self.optim.batch_size >= 2, "optim.batch_size must be >= 2"),
            (self.run.keep_checkpoints >= 1, "run.keep_checkpoints must be >= 1"),
            (min(self.run.checkpoint_every, self.run.save_every, self.run.skip_nonfinite) >= 0,
             "run.checkpoint_every, run.save_every and run.skip_nonfinite must be >= 0"),
            (self.optim.batch_size % self.model.bn_splits == 0,
             f"optim.batch_size ({self.optim.batch_size}) must be divisible by "
             f"model.bn_splits ({self.model.bn_splits})"),
            (self.optim.batch_size >= 2 * self.model.bn_splits,
             f"model.bn_splits={self.model.bn_splits} makes BN groups of fewer than 2 images "
             f"(optim.batch_size={self.optim.batch_size})"),
            (0 < self.optim.lr < math.inf, "optim.lr must be positive"),
            (self.optim.schedule in ("step", "cosine"), "optim.schedule must be step or cosine"),
            (self.optim.name in ("sgd", "lars", "adamw"), "optim.name must be sgd, lars or adamw"),
            (self.run.epochs >= 1 or self.run.budget_minutes > 0, "run.epochs must be >= 1"),
            (0 <= self.run.budget_minutes < math.inf,
             "run.budget_minutes must be >= 0 (0: no time budget, the run is run.epochs long)"),
            *common_checks(self.optim, self.run),
            (self.data.workers >= 0 and self.data.limit >= 0 and self.data.shuffle_buffer >= 1,
             "data.workers and data.limit must be >= 0, data.shuffle_buffer >= 1"),
            (all(s > 0 for s in self.data.std), "data.std must be positive"),
            (self.model.hidden_dim >= 1, "model.hidden_dim must be >= 1"),
            (self.run.knn_k >= 1 and self.run.knn_t > 0 and self.run.knn_every >= 0,
             "run.knn_k must be >= 1, run.knn_t positive and run.knn_every >= 0"),
            (self.run.amp in ("auto", "bf16", "off"), "run.amp must be auto, bf16 or off"),
            (self.run.compile_min_minutes >= 0, "run.compile_min_minutes must be >= 0"),
            (self.run.compile_mode in COMPILE_MODES, f"run.compile_mode must be one of: {', '.join(COMPILE_MODES)}"),
            (self.run.knn_features in ("backbone", "head"), "run.knn_features must be backbone or head"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        for ok, message in self._method_checks():
            if not ok:
                raise ConfigError(message)
        check_limits(self)
        return self

    def _method_checks(self) -> list[tuple[bool, str]]:
        """The method's own rules (Method.check_config), and no method-specific key set for a
        method that ignores it (only keys whose default is off: symmetric, small_crops, predictor)."""
        if self.moco.method not in METHODS:
            return [(False, f"moco.method must be one of: {', '.join(METHODS.names())}")]
        method = METHODS.get(self.moco.method)
        checks = []
        for key in ("moco.m", "moco.queue_size"):  # auto: only where its rule was fitted (mocolab.auto)
            fitted = [m.name for m in METHODS if key in m.auto_keys]
            checks.append((not is_auto(getattr(self.moco, key.split(".")[1])) or key in method.auto_keys,
                           f"{key}=auto is fitted for moco.method={' or '.join(fitted)} only, not {method.name}"))
        for key in sorted(method_specific_keys() - method.config_keys):
            group, name = key.split(".")
            section = getattr(self, group)
            value, default = getattr(section, name), getattr(type(section)(), name)
            readers = [m.name for m in METHODS if key in m.config_keys]
            checks.append((not value or bool(default),
                           f"{key} applies to moco.method={' or '.join(readers)} only, not {method.name}"))
        return checks + method.check_config(self)


def rank_bn_splits(bn_splits: int, world: int) -> int:
    """The BN groups of each rank's batch: model.bn_splits counts those of the global batch, so
    each of `world` ranks takes bn_splits / world (at least 1: a rank's batch is a group of its
    own; the cross-rank Shuffle BN mixes them). Raises ConfigError if that is not a whole number."""
    if bn_splits > world and bn_splits % world:
        raise ConfigError(f"model.bn_splits={bn_splits} (BN groups in the global batch) must be divisible by "
                          f"the number of processes ({world})")
    return max(1, bn_splits // world)


def check_bn_groups(bn_splits: int, batch: int, world: int) -> tuple[int, int]:
    """The BN groups a run of `world` processes with global batch `batch` uses: (groups per rank,
    images per group); raises ConfigError, before training, for what it cannot honour."""
    splits = rank_bn_splits(bn_splits, world)
    if batch % world:
        raise ConfigError(f"optim.batch_size={batch} must be divisible by the number of processes ({world})")
    local = batch // world  # this rank's slice of every global batch
    if local % splits:
        raise ConfigError(f"each process's batch ({local}) must be divisible by its BN groups ({splits} = "
                          f"model.bn_splits={bn_splits} / {world} processes)")
    if local // splits < 2:
        raise ConfigError(f"BN groups of {local // splits} image: optim.batch_size={batch} on {world} processes "
                          f"with model.bn_splits={bn_splits} needs at least 2 images per group")
    return splits, local // splits


def common_checks(o: OptimConfig, r: RunConfig) -> list[tuple[bool, str]]:
    """The range checks of the optim and run groups that pretraining and transfer configs share."""
    return [
        (o.base_batch_size >= 1, "optim.base_batch_size must be >= 1"),
        (0 <= o.momentum < 1, "optim.momentum must lie in [0, 1)"),
        (0 <= o.weight_decay < math.inf and 0 <= o.warmup_epochs < math.inf,
         "optim.weight_decay and optim.warmup_epochs must be >= 0"),
        (all(0 < m <= 1 for m in o.milestones), "optim.milestones must be fractions of the run in (0, 1]"),
        (r.seed >= 0, "run.seed must be >= 0"),
        (r.threads >= 0, "run.threads must be >= 0 (0: torch's default)"),
        (r.log_every >= 1, "run.log_every must be >= 1"),
    ]


@dataclass
class LoopConfig:
    """The engine's own settings (optim + run), for the loops that are not pretraining:
    the classifier loops of eval/ and the transfer tasks' runs."""

    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict:
        return asdict(self)


GROUPS = [f.name for f in fields(Config)]


def group_classes(cls: type = Config) -> dict[str, type]:
    """The groups of a config class (Config, or another dataclass of groups such as the
    transfer commands'): {name: group dataclass}."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls)}


def preset_names(package: str = "mocolab") -> list[str]:
    """The presets shipped in `package`'s presets/ folder."""
    folder = resources.files(package).joinpath("presets")
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _convert(value, typ, key: str):
    """Converts a YAML/CLI value to the field's type, or raises a ConfigError naming the key.
    `int | str` and `float | str` fields (moco.queue_size, moco.m) take a number or "auto"."""
    origin = typing.get_origin(typ)
    if origin is types.UnionType:
        if is_auto(value):
            return "auto"
        number = next(t for t in typing.get_args(typ) if t is not str)
        try:
            return _convert(value, number, key)
        except ConfigError:
            raise ConfigError(f"{key}={value!r} is not a valid {number.__name__} or auto") from None
    try:
        if origin is list:
            (item,) = typing.get_args(typ)
            if isinstance(value, str):
                value = yaml.safe_load(value) if value.strip().startswith("[") else value.split(",")
            if not isinstance(value, (list, tuple)):
                raise TypeError
            return [_convert(v, item, key) for v in value]
        if typ is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise TypeError
        if typ is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError
            return int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
        if typ is float:
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if typ is str:
            if isinstance(value, (dict, list)):
                raise TypeError
            return str(value)
    except (TypeError, ValueError):
        pass
    else:
        raise ConfigError(f"{key}: unsupported type {typ}")
    name = getattr(typ, "__name__", str(typ))
    raise ConfigError(f"{key}={value!r} is not a valid {name}")


def set_key(cfg, key: str, value) -> None:
    classes = group_classes(type(cfg))
    if "." in key:
        group, _, name = key.partition(".")
        if group not in classes:
            raise ConfigError(f"unknown config group '{group}' in '{key}' (groups: {', '.join(classes)})")
    else:
        owners = [g for g, cls in classes.items() if name_in(cls, key)]
        if len(owners) > 1:
            raise ConfigError(f"'{key}' is ambiguous: write one of {', '.join(f'{g}.{key}' for g in owners)}")
        group, name = (owners[0] if owners else ""), key
    hints = typing.get_type_hints(classes[group]) if group else {}
    if name not in hints:
        every = [f"{g}.{f.name}" for g, cls in classes.items() for f in fields(cls)]
        close = difflib.get_close_matches(key, every + [k.split(".")[1] for k in every], n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown config key '{key}'{hint}")
    setattr(getattr(cfg, group), name, _convert(value, hints[name], f"{group}.{name}"))


def name_in(cls: type, key: str) -> bool:
    return any(f.name == key for f in fields(cls))


def from_dict(data: dict, base=None):
    """Builds a Config (or `base`'s config class) from a nested dict (a preset, a saved run);
    unknown keys are errors."""
    cfg = base if base is not None else Config()
    groups = list(group_classes(type(cfg)))
    if not isinstance(data, dict):
        raise ConfigError(f"a config must be a mapping of groups ({', '.join(groups)})")
    for group, values in data.items():
        if group not in groups:
            raise ConfigError(f"unknown config group '{group}' (groups: {', '.join(groups)})")
        if not isinstance(values, dict):
            raise ConfigError(f"config group '{group}' must be a mapping")
        for name, value in values.items():
            set_key(cfg, f"{group}.{name}", value)
    return cfg


def load_preset(name: str, package: str = "mocolab", base=None, kind: str = "preset"):
    """A preset by name (`package`/presets/NAME.yaml) or YAML path -> a Config (or `base`'s class,
    e.g. the transfer commands' TransferConfig)."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        text = path.read_text()
    else:
        names = preset_names(package)
        if name not in names:
            close = difflib.get_close_matches(name, names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown {kind} '{name}'{hint}; presets: {', '.join(names)}")
        text = resources.files(package).joinpath("presets", f"{name}.yaml").read_text()
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"preset '{name}' is not valid YAML: {str(e).splitlines()[0]}") from None
    return from_dict(data, base)


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override '{item}' must look like key=value (for example optim.lr=0.1)")
        set_key(cfg, key.strip(), value.strip())
    return cfg


def override_text(value) -> str:
    """A Python value as the text of a key=value override (lists and booleans as YAML reads them)."""
    if isinstance(value, (list, tuple, dict, bool)) or value is None:
        text = yaml.safe_dump(list(value) if isinstance(value, tuple) else value, default_flow_style=True)
        return text.strip().removesuffix("...").strip()  # a bare scalar document ends with '...'
    return str(value)


def build_config(preset: str, overrides: list[str] | None = None) -> Config:
    return apply_overrides(load_preset(preset), overrides or []).validate()


def save_yaml(cfg: Config, path: Path) -> None:
    from .runfiles import write_yaml  # temp + fsync + rename; a full disk is one line naming the file

    write_yaml(path, cfg.to_dict())


def command_line_overrides(args) -> list[str]:
    """The `key=value` overrides of a command, with --epochs, --budget-minutes and --batch-size
    turned into their keys."""
    overrides = list(args.overrides)
    for flag, key in (("epochs", "run.epochs"), ("budget_minutes", "run.budget_minutes"), ("init", "model.init"),
                      ("batch_size", "optim.batch_size")):
        if getattr(args, flag, None) is not None:
            overrides.append(f"{key}={getattr(args, flag)}")
    return overrides


def check_limits(cfg: Config, n_train: int = 0, device=None) -> None:
    """Temperatures below 1e-4 and memory the run could not have (the queue, the bank, the batch
    at data.image_size, the decoded cache), refused as one line before anything is allocated
    (mocolab.limits.check_config). n_train (the bank, the cache) and device (CUDA's free memory)
    are known once the data is loaded: pretraining calls it again then."""
    from .limits import check_config

    check_config(cfg, n_train, device)
