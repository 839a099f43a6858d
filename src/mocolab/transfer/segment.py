"""`mocolab segment`: FCN or DeepLabV3 fine-tuned from a pretrained backbone, then mIoU, pixel
accuracy and per-class IoU on the test split (val/ when there is no test/), scored at the masks'
full resolution (logits upsampled from the task.test_scale input)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import distributed as du
from ..data import DataError
from ..methods.base import Method
from ..registry import TASKS
from ..runtime import seed_everything
from .common import backbone_record, labeled_subset, setup, subset_seed, train, write_results
from .config import TransferConfig
from .feeds import SegmentationFeed
from .masks import SegData, load_masks
from .metrics import confusion_matrix, segmentation_scores
from .models import build_segmenter, freeze_stages, load_backbone, segmentation_loss
from .task import Task

log = logging.getLogger("mocolab")


class SegmentationMethod(Method):
    """A Segmenter as the Trainer's method: forward(images, masks) -> pixel cross-entropy
    (ignore_index excluded; + 0.5 x the aux head's with task.aux)."""

    num_views = 2  # (images, masks): the Trainer does not augment with a feed

    def __init__(self, model: torch.nn.Module, ignore_index: int):
        super().__init__()
        self.model, self.ignore_index = model, ignore_index

    @property
    def encoder_q(self) -> torch.nn.Module:
        """The fine-tuned (dilated) backbone."""
        return self.model.net.backbone

    def learnable_params(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def encoders(self) -> list[torch.nn.Module]:
        return [self.model]

    def forward(self, images, masks, index=None, generator=None):
        return segmentation_loss(self.model(images), masks, self.ignore_index), {"logs": {}}


def load_segmentation(data: str | Path, num_classes: int, ignore_index: int) -> tuple[SegData, SegData]:
    """DIR/train and DIR/test (or DIR/val); class names from DIR/classes.txt if present."""
    root = Path(data)
    if not root.is_dir():
        raise DataError(f"data folder not found: {root}")
    test_dir = next((root / s for s in ("test", "val") if (root / s).is_dir()), None)
    if not (root / "train").is_dir() or test_dir is None:
        raise DataError(f"{root} needs train/ and test/ (or val/) folders, each with images/ and masks/")
    names = root / "classes.txt"
    classes = [n.strip() for n in names.read_text().splitlines() if n.strip()] if names.is_file() else None
    train = load_masks(root / "train", num_classes or None, ignore_index, classes)
    test = load_masks(test_dir, train.num_classes, ignore_index, classes)
    return train, test


@torch.no_grad()
def evaluate(model: torch.nn.Module, feed: SegmentationFeed, num_classes: int, ignore_index: int,
             autocast) -> torch.Tensor:
    """The test split's confusion matrix (C x C, summed over ranks); model in eval mode."""
    was_training = model.training
    model.eval()
    conf = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=feed.device)
    try:
        for images, masks, _ in feed.eval_batches():
            same = all(x.shape == images[0].shape for x in images)
            groups = [(torch.stack(images), masks)] if same else [(x[None], [m]) for x, m in zip(images, masks)]
            for x, ms in groups:
                with autocast:
                    logits = model(x)
                for lg, m in zip(logits, ms):  # upsampled to the mask's full size
                    lg = F.interpolate(lg[None].float(), size=m.shape, mode="bilinear", align_corners=False)
                    conf += confusion_matrix(lg.argmax(1)[0], m, num_classes, ignore_index)
    finally:
        model.train(was_training)
    return du.all_reduce(conf)


def run_segment(cfg: TransferConfig, backbone_src: str, data, out: str | Path,
                state: dict | None = None) -> dict:
    """Fine-tunes a segmenter into `out` and evaluates it; `data`: a folder (see
    load_segmentation) or (train, test) SegData. `state`: a training checkpoint to continue from."""
    out, t_start = Path(out), time.perf_counter()
    device, autocast_dtype = setup(cfg, out)
    t = cfg.task
    # seeded apart from the global RNG
    backbone, meta = load_backbone(backbone_src, seed=cfg.run.seed)
    if isinstance(data, tuple):
        train_data, test_data = data
    else:
        train_data, test_data = load_segmentation(data, t.num_classes, t.ignore_index)
    train_data = labeled_subset(train_data, t.train_images, subset_seed(cfg))
    n_cls = train_data.num_classes
    log.info("data: %d train, %d test images; %d classes (ignore %d)", len(train_data), len(test_data),
             n_cls, t.ignore_index)

    seed_everything(cfg.run.seed)
    model = build_segmenter(backbone, meta, n_cls, head=t.head, norm=t.norm, aux=t.aux).to(device)
    if t.trainable_layers < 5:
        freeze_stages(model.net.backbone, t.trainable_layers)
    method = SegmentationMethod(model, t.ignore_index)
    feed = SegmentationFeed(train_data, cfg, train=True, device=device)
    trainer = train(cfg, method, feed, device, out, autocast_dtype, state)
    summary = trainer.summary()

    t_eval = time.perf_counter()
    test_feed = SegmentationFeed(test_data, cfg, train=False, device=device)
    conf = evaluate(model, test_feed, n_cls, t.ignore_index, trainer.autocast())
    eval_seconds = time.perf_counter() - t_eval
    scores = segmentation_scores(conf, train_data.classes)
    summary.update(eval_seconds=eval_seconds, eval_images_per_second=len(test_data) / max(eval_seconds, 1e-9),
                   wall_seconds=time.perf_counter() - t_start)
    result = {
        "task": "segment", "head": t.head, "norm": t.norm, **scores,
        "backbone": backbone_record(meta), "seed": cfg.run.seed,
        "data": {"num_classes": n_cls, "ignore_index": t.ignore_index, "train_images": len(train_data),
                 "subset_seed": subset_seed(cfg) if t.train_images else None,
                 "test_images": len(test_data), "crop_size": t.crop_size, "test_scale": t.test_scale},
        "confusion_matrix": conf.cpu().tolist(),
        "train": summary, "settings": cfg.to_dict(),
    }
    summary.update(mIoU=scores["mIoU"], pixel_acc=scores["pixel_acc"], mean_acc=scores["mean_acc"],
                   backbone=meta.get("source"))
    write_results(out, "segment.json", result, summary)
    du.barrier()
    return result


def add_arguments(p) -> None:
    """`mocolab segment`'s data options."""
    p.add_argument("--data", required=True, metavar="DIR",
                   help="folder with train/ and test/ (or val/), each images/NAME.jpg + masks/NAME.png; "
                        "optional classes.txt (one name per line)")


def check_folder(data: str) -> None:
    """Before any training: the folder exists (its images and masks are read by each run)."""
    if not Path(data).is_dir():
        raise DataError(f"segmentation data folder not found: {data}")


TASKS.register(Task(
    name="segment",
    help="FCN or DeepLabV3 fine-tuned from a backbone; mIoU on the test split",
    default_preset="camvid_cpu",
    columns=(("mIoU", "segment mIoU"),),
    add_arguments=add_arguments,
    source_from_args=lambda a: a.data,
    check_data=check_folder,
    load_data=load_segmentation,
    build_model=build_segmenter,
    metric=segmentation_scores,
    run=run_segment,
    headline=lambda r: f"mIoU {r['mIoU']:.2f}%, pixel accuracy {r['pixel_acc']:.2f}%",
    metric_name=lambda cfg: "mIoU",
))
