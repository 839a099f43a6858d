"""`mocolab detect`: Faster R-CNN fine-tuned from a pretrained backbone (DESIGN.md section 6),
then VOC AP (AP, AP50, AP75; 11-point with task.eval_metric=voc07) and COCO AP (pycocotools) on
the test split. Data: VOC folders (trainval or train to train; test or val to test) or COCO
(annotations/instances_train*.json and instances_val*.json with their image folders).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import distributed as du
from ..data import DataError
from ..methods.base import Method
from ..registry import TASKS
from ..runtime import seed_everything
from .boxes import DetectionData
from .coco import load_coco
from .common import backbone_record, gather, labeled_subset, setup, subset_seed, train, write_results
from .config import TransferConfig
from .feeds import DetectionFeed
from .metrics import coco_detection_ap, voc_detection_ap
from .models import build_detector, detection_loss, load_backbone
from .task import Task
from .voc import load_voc

log = logging.getLogger("mocolab")


class DetectionMethod(Method):
    """A torchvision detector as the Trainer's method: forward(images, targets) -> the sum of
    its four losses, each logged. No momentum pairs, no state."""

    num_views = 2  # (images, targets): the Trainer does not augment with a feed

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    @property
    def encoder_q(self) -> torch.nn.Module:
        """The fine-tuned backbone (FPN: with the FPN; C4: stem..res4)."""
        return self.model.backbone

    def learnable_params(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def encoders(self) -> list[torch.nn.Module]:
        return [self.model]

    def forward(self, images, targets, index=None, generator=None):
        loss, parts = detection_loss(self.model, images, targets)
        return loss, {"logs": parts}


@dataclass
class DetectionSource:
    """Where the detection data is: VOC roots, or COCO annotation files and image folders."""

    voc: list[Path] | None = None
    coco_train: tuple[Path, Path] | None = None  # (instances json, image folder)
    coco_test: tuple[Path, Path] | None = None


def detection_source(data: list[str] | str | None, train_json=None, train_images=None,
                     test_json=None, test_images=None) -> DetectionSource:
    """The command line's data arguments -> a DetectionSource (DataError when unusable)."""
    if train_json or test_json:
        if not (train_json and train_images and test_json and test_images):
            raise DataError("COCO data needs all of --train-json, --train-images, --test-json, --test-images")
        return DetectionSource(coco_train=(Path(train_json), Path(train_images)),
                               coco_test=(Path(test_json), Path(test_images)))
    if not data:
        raise DataError("give --data DIR (VOC or COCO folder) or the --train-json/--test-json files")
    roots = [Path(d) for d in ([data] if isinstance(data, (str, Path)) else data)]
    for r in roots:
        if not r.is_dir():
            raise DataError(f"data folder not found: {r}")
    if all((r / "Annotations").is_dir() for r in roots):
        return DetectionSource(voc=roots)
    if len(roots) == 1 and (roots[0] / "annotations").is_dir():
        return _coco_folder(roots[0])
    bad = next(r for r in roots if not (r / "Annotations").is_dir())
    raise DataError(f"{bad} is neither a VOC folder (Annotations/, JPEGImages/, ImageSets/Main/) nor a "
                    "COCO folder (annotations/instances_train*.json)")


def _coco_folder(root: Path) -> DetectionSource:
    def pick(split: str) -> tuple[Path, Path]:
        found = sorted((root / "annotations").glob(f"instances_{split}*.json"))
        if not found:
            raise DataError(f"no annotations/instances_{split}*.json in {root}")
        js = found[-1]
        name = js.stem[len("instances_"):]  # train2017
        for images in (root / name, root / "images" / name, root / "images"):
            if images.is_dir():
                return js, images
        raise DataError(f"no image folder for {js.name} in {root} (looked for {name}/, images/{name}/, images/)")

    return DetectionSource(coco_train=pick("train"), coco_test=pick("val"))


def load_detection(source: DetectionSource) -> tuple[DetectionData, DetectionData, str]:
    """-> (train, test, "voc" | "coco"); test uses train's class names."""
    if source.voc:
        first = source.voc[0]
        splits = first / "ImageSets" / "Main"
        train_split = "trainval" if (splits / "trainval.txt").is_file() else "train"
        train = load_voc(first, train_split)
        for extra in source.voc[1:]:  # e.g. VOC2012 trainval with VOC2007's
            s = "trainval" if (extra / "ImageSets" / "Main" / "trainval.txt").is_file() else "train"
            train.items += load_voc(extra, s, classes=train.classes).items
        test_split = next((s for s in ("test", "val") if (splits / f"{s}.txt").is_file()), None)
        if test_split is None:
            raise DataError(f"no test.txt or val.txt in {splits} (the split to evaluate on)")
        log.info("VOC: training on %s (%d images), testing on %s/%s", train_split, len(train), first, test_split)
        return train, load_voc(first, test_split, classes=train.classes), "voc"
    train = load_coco(*source.coco_train)
    return train, load_coco(*source.coco_test, classes=train.classes), "coco"


def build_model(cfg: TransferConfig, backbone, meta: dict, num_classes: int) -> torch.nn.Module:
    t = cfg.task
    return build_detector(
        backbone, meta, num_classes, head=t.head, norm=t.norm, min_size=tuple(t.train_sizes),
        max_size=t.max_size, fpn_channels=t.fpn_channels, trainable_layers=t.trainable_layers,
        anchor_sizes=tuple(t.anchor_sizes), representation_size=t.representation_size,
        box_convs=t.box_convs, rpn_pre_nms_top_n_train=t.rpn_pre_nms_train,
        rpn_post_nms_top_n_train=t.rpn_post_nms_train, rpn_pre_nms_top_n_test=t.rpn_pre_nms_test,
        rpn_post_nms_top_n_test=t.rpn_post_nms_test, rpn_batch_size_per_image=t.rpn_batch_size,
        box_batch_size_per_image=t.roi_batch_size, box_detections_per_img=t.box_detections_per_img)


@torch.no_grad()
def predict(model: torch.nn.Module, feed: DetectionFeed, test_size: int, autocast) -> list[dict]:
    """Detections for every test image (in order) at test_size, the model in eval mode;
    the images are shared over ranks and gathered."""
    was_training, sizes = model.training, model.transform.min_size
    model.eval()
    model.transform.min_size = (test_size,)
    local = {}
    try:
        for images, index in feed.eval_batches():
            with autocast:
                out = model(images)
            for i, o in zip(index, out):
                local[i] = {"boxes": o["boxes"].float().cpu(), "scores": o["scores"].float().cpu(),
                            "labels": o["labels"].cpu()}
    finally:
        model.transform.min_size = sizes
        model.train(was_training)
    merged = gather(local)
    return [merged[i] for i in range(len(feed))]


def score(detections: list[dict], test: DetectionData, metric: str) -> dict:
    """{"AP", "AP50", "AP75", "metric", "voc": {...}, "coco": {...}}: the headline numbers are
    task.eval_metric's (voc07: 11-point VOC AP; voc: area under PR; coco: COCOeval)."""
    voc = voc_detection_ap(detections, test, use_07_metric=metric == "voc07")
    coco = coco_detection_ap(detections, test)
    head = coco if metric == "coco" else voc
    return {"AP": head["AP"], "AP50": head["AP50"], "AP75": head["AP75"], "metric": metric,
            "voc": dict(voc, metric="11-point (VOC2007)" if metric == "voc07" else "area under PR"),
            "coco": coco}


def run_detect(cfg: TransferConfig, backbone_src: str, data, out: str | Path,
               state: dict | None = None) -> dict:
    """Fine-tunes a detector into `out` and evaluates it; `data`: a DetectionSource, a VOC or
    COCO folder (or a list of VOC folders), or (train, test) DetectionData. `state`: a loaded
    training checkpoint to continue from (its config is the caller's: see run.resume_config)."""
    out, t_start = Path(out), time.perf_counter()
    device, autocast_dtype = setup(cfg, out)
    # seeded apart from the global RNG
    backbone, meta = load_backbone(backbone_src, seed=cfg.run.seed)
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], DetectionData):
        (train_data, test_data), fmt = data, "voc"
    else:
        source = data if isinstance(data, DetectionSource) else detection_source(data)
        train_data, test_data, fmt = load_detection(source)
    train_data = labeled_subset(train_data, cfg.task.train_images, subset_seed(cfg))
    n_cls = train_data.num_classes
    if cfg.task.num_classes and cfg.task.num_classes != n_cls:
        raise DataError(f"task.num_classes={cfg.task.num_classes} but the training data has {n_cls} "
                        f"classes ({', '.join(train_data.classes)})")
    log.info("data: %d train, %d test images; classes: %s", len(train_data), len(test_data),
             ", ".join(train_data.classes))

    seed_everything(cfg.run.seed)
    if meta["stem"] != "imagenet":
        log.warning("the backbone has a CIFAR stem (stride 1): detection features are at 4x finer "
                    "strides than the anchors expect")
    model = build_model(cfg, backbone, meta, n_cls).to(device)
    method = DetectionMethod(model)
    feed = DetectionFeed(train_data, cfg, train=True, device=device, keep_difficult=fmt == "voc")
    trainer = train(cfg, method, feed, device, out, autocast_dtype, state)
    summary = trainer.summary()

    t_eval = time.perf_counter()
    test_feed = DetectionFeed(test_data, cfg, train=False, device=device)
    detections = predict(model, test_feed, cfg.task.test_size, trainer.autocast())
    eval_seconds = time.perf_counter() - t_eval
    scores = score(detections, test_data, cfg.task.eval_metric)
    summary.update(eval_seconds=eval_seconds, eval_images_per_second=len(test_data) / max(eval_seconds, 1e-9),
                   wall_seconds=time.perf_counter() - t_start)
    result = {
        "task": "detect", "head": cfg.task.head, "norm": cfg.task.norm, **scores,
        "backbone": backbone_record(meta), "seed": cfg.run.seed,
        "data": {"format": fmt, "classes": train_data.classes, "train_images": len(train_data),
                 "subset_seed": subset_seed(cfg) if cfg.task.train_images else None,
                 "test_images": len(test_data), "test_size": cfg.task.test_size,
                 "train_sizes": cfg.task.train_sizes},
        "train": summary, "settings": cfg.to_dict(),
    }
    summary.update({k: scores[k] for k in ("AP", "AP50", "AP75", "metric")}, coco_AP=scores["coco"]["AP"],
                   backbone=meta.get("source"))
    write_results(out, "detect.json", result, summary)
    du.barrier()
    return result


def add_arguments(p) -> None:
    """`mocolab detect`'s data options."""
    p.add_argument("--data", action="append", metavar="DIR",
                   help="VOC folder (Annotations/, JPEGImages/, ImageSets/Main/: trainval or train "
                        "to train, test or val to test; repeat --data to train on several, e.g. "
                        "VOC2007 and VOC2012, tested on the first) or COCO folder "
                        "(annotations/instances_{train,val}*.json + image folders)")
    p.add_argument("--train-json", help="COCO: training annotations (instead of --data)")
    p.add_argument("--train-images", help="COCO: the training images' folder")
    p.add_argument("--test-json", help="COCO: test annotations")
    p.add_argument("--test-images", help="COCO: the test images' folder")


def headline(result: dict) -> str:
    return (f"AP {result['AP']:.2f}, AP50 {result['AP50']:.2f}, AP75 {result['AP75']:.2f} "
            f"({result['metric']}); COCO AP {result['coco']['AP']:.2f}")


TASKS.register(Task(
    name="detect",
    help="Faster R-CNN (FPN or the paper's C4) fine-tuned from a backbone; VOC and COCO AP on the test split",
    default_preset="bccd_cpu",
    columns=(("AP50", "detect AP50"), ("AP", "detect AP")),
    add_arguments=add_arguments,
    source_from_args=lambda a: detection_source(a.data, a.train_json, a.train_images, a.test_json, a.test_images),
    check_data=detection_source,
    load_data=load_detection,
    build_model=build_model,
    metric=score,
    run=run_detect,
    headline=headline,
    metric_name=lambda cfg: cfg.task.eval_metric,
))
