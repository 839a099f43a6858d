"""The transfer commands' configuration (`mocolab detect | segment`): a `task` group for the
detector or segmenter, its data and evaluation, plus the pretraining config's `optim` and `run`
groups (the Trainer reads only those). Presets are YAML files in `mocolab/transfer/presets/`;
`key=value` overrides work as for pretraining (`task.head=c4`, `optim.lr=0.01`, `run.seed=1`).

Schedule length: `task.iters` > 0 runs exactly that many iterations (the milestones are fractions
of it, `task.warmup_iters` replaces optim.warmup_epochs when > 0); else `run.epochs`; a time
budget (`run.budget_minutes`) overrides both and anneals the schedule within it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from .. import config
from ..config import ConfigError, OptimConfig, RunConfig, apply_overrides, common_checks

KINDS = {"detect": ("fpn", "c4"), "segment": ("fcn", "deeplabv3")}


@dataclass
class TaskConfig:
    kind: str = "detect"  # detect | segment
    head: str = "fpn"  # detect: fpn | c4 (the paper's R50-C4); segment: fcn | deeplabv3
    norm: str = "bn"  # bn (trained everywhere) | syncbn (across GPUs under torchrun) | frozen
    trainable_layers: int = 5  # backbone stages fine-tuned, from layer4 down (5: all, stem too)
    iters: int = 0  # > 0: train exactly this many iterations (instead of run.epochs)
    warmup_iters: int = 0  # > 0: linear lr warm-up over this many iterations (not optim.warmup_epochs)
    workers: int = 2  # DataLoader workers decoding and augmenting images
    flip: float = 0.5  # probability of a horizontal flip (training)
    num_classes: int = 0  # foreground classes (0 = from the training data)
    # > 0: fine-tune on this many training images only (few labels), drawn with run.seed, so every
    # backbone fine-tuned at a seed sees the same images
    train_images: int = 0
    # the draw of those images: -1 draws with run.seed (each seed its own labeled images); >= 0 draws
    # one fixed subset for every seed (as the 1% / 10% label subsets of semi-supervised ImageNet), so
    # the seeds vary only the fine-tuning (random init of the new layers, data order, augmentation)
    subset_seed: int = -1
    # detection
    train_sizes: list[int] = field(default_factory=lambda: [800])  # shorter side, one picked per batch
    test_size: int = 800  # shorter side at test time
    max_size: int = 1333  # longer side at most (train and test)
    fpn_channels: int = 256  # FPN's output channels (fpn head)
    representation_size: int = 1024  # box head's FC width
    box_convs: int = 4  # FPN with BN: convs in the box head before its FC (torchvision's v2)
    # anchor sides in input pixels, one per FPN level (smallest first)
    anchor_sizes: list[int] = field(default_factory=lambda: [32, 64, 128, 256, 512])
    rpn_pre_nms_train: int = 2000  # proposals kept per level before NMS (training)
    rpn_post_nms_train: int = 2000  # proposals after NMS (training)
    rpn_pre_nms_test: int = 1000  # RPN proposals kept before NMS at test time (per image and level)
    rpn_post_nms_test: int = 1000  # RPN proposals kept after NMS at test time
    rpn_batch_size: int = 256  # anchors sampled per image for the RPN loss
    roi_batch_size: int = 512  # proposals sampled per image for the box head's loss
    box_detections_per_img: int = 100  # detections kept per test image (COCO's 100)
    eval_metric: str = "voc"  # voc (area under PR) | voc07 (11-point) | coco; all are reported
    # segmentation
    crop_size: list[int] = field(default_factory=lambda: [512, 512])  # training crop, [H, W]
    scale_range: list[float] = field(default_factory=lambda: [0.5, 2.0])  # random rescale of the image
    test_scale: float = 1.0  # images rescaled by this at test time; scored at full resolution
    ignore_index: int = 255  # unlabelled pixels (CamVid: 11)
    aux: bool = False  # torchvision's auxiliary FCN head on layer3 (0.5 x its loss)
    eval_batch: int = 4  # images per evaluation batch

    def check(self) -> list[tuple[bool, str]]:
        heads = KINDS.get(self.kind, ())
        return [
            (self.kind in KINDS, "task.kind must be detect or segment"),
            (not heads or self.head in heads, f"task.head must be {' or '.join(heads)} for task.kind={self.kind}"),
            (self.norm in ("bn", "syncbn", "frozen"), "task.norm must be bn, syncbn or frozen"),
            (0 <= self.trainable_layers <= 5, "task.trainable_layers must be in 0..5"),
            (min(self.iters, self.warmup_iters, self.workers, self.num_classes, self.train_images) >= 0,
             "task.iters, task.warmup_iters, task.workers, task.num_classes and task.train_images must be >= 0"),
            (self.subset_seed >= -1, "task.subset_seed must be -1 (run.seed) or a seed >= 0"),
            (0.0 <= self.flip <= 1.0, "task.flip must lie in [0, 1]"),
            (len(self.train_sizes) >= 1 and min(self.train_sizes) >= 32,
             "task.train_sizes must list one or more sizes >= 32"),
            (self.test_size >= 32 and self.max_size >= max(self.train_sizes + [self.test_size]),
             "task.test_size must be >= 32 and task.max_size >= every train/test size"),
            (min(self.fpn_channels, self.representation_size, self.rpn_pre_nms_train,
                 self.rpn_post_nms_train, self.rpn_pre_nms_test, self.rpn_post_nms_test,
                 self.rpn_batch_size, self.roi_batch_size, self.box_detections_per_img,
                 self.eval_batch) >= 1,
             "task's channel, proposal, sample and batch counts must be positive"),
            (self.box_convs >= 0, "task.box_convs must be >= 0"),
            (len(self.anchor_sizes) >= 1 and min(self.anchor_sizes) > 0
             and (self.head != "fpn" or self.kind != "detect" or len(self.anchor_sizes) == 5),
             "task.anchor_sizes must be positive (5 of them with the FPN head: one per level)"),
            (self.eval_metric in ("voc", "voc07", "coco"), "task.eval_metric must be voc, voc07 or coco"),
            (len(self.crop_size) == 2 and min(self.crop_size) >= 16, "task.crop_size must be [H, W], each >= 16"),
            (len(self.scale_range) == 2 and 0 < self.scale_range[0] <= self.scale_range[1],
             "task.scale_range must be [min, max] with 0 < min <= max"),
            (self.test_scale > 0, "task.test_scale must be positive"),
            (self.ignore_index >= 0, "task.ignore_index must be >= 0"),
        ]


@dataclass
class TransferConfig:
    task: TaskConfig = field(default_factory=TaskConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(
        batch_size=16, lr=0.02, base_batch_size=16, weight_decay=1e-4, schedule="step",
        milestones=[0.75, 0.9167]))
    run: RunConfig = field(default_factory=lambda: RunConfig(epochs=12, channels_last=False, log_every=20))

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self) -> TransferConfig:
        """Checks the values that a type alone cannot; raises ConfigError (one line)."""
        o, r = self.optim, self.run
        checks = self.task.check() + [
            (o.batch_size >= 1, "optim.batch_size must be >= 1"),
            (0 < o.lr < math.inf, "optim.lr must be positive"),
            (o.schedule in ("step", "cosine"), "optim.schedule must be step or cosine"),
            *common_checks(o, r),
            (r.epochs >= 1 or r.budget_minutes > 0 or self.task.iters > 0, "run.epochs must be >= 1"),
            (0 <= r.budget_minutes < math.inf,
             "run.budget_minutes must be >= 0 (0: no time budget, the run is run.epochs long)"),
            (r.amp in ("auto", "bf16", "off"), "run.amp must be auto, bf16 or off"),
            (r.keep_checkpoints >= 1, "run.keep_checkpoints must be >= 1"),
            (min(r.checkpoint_every, r.save_every, r.skip_nonfinite, r.threads) >= 0,
             "run.checkpoint_every, run.save_every, run.skip_nonfinite and run.threads must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        return self


def preset_names() -> list[str]:
    return config.preset_names("mocolab.transfer")


def load_preset(name: str) -> TransferConfig:
    """A transfer preset by name (mocolab/transfer/presets/NAME.yaml) or YAML path."""
    return config.load_preset(name, "mocolab.transfer", TransferConfig(), "transfer preset")


def build_transfer_config(preset: str, overrides: list[str] | None = None,
                          kind: str | None = None) -> TransferConfig:
    """The preset with the overrides on top, validated; `kind`: the command's (detect | segment)."""
    cfg = apply_overrides(load_preset(preset), overrides or []).validate()
    check_kind(cfg, kind)
    return cfg


def check_kind(cfg: TransferConfig, kind: str | None) -> None:
    if kind is not None and cfg.task.kind != kind:
        raise ConfigError(f"this config is for `mocolab {cfg.task.kind}` (task.kind={cfg.task.kind}), "
                          f"not `mocolab {kind}`")
