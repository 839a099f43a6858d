"""Detection and segmentation metrics, in percent.

- voc_detection_ap: the VOC devkit algorithm as detectron2's PascalVOCDetectionEvaluator runs
  it (voc_eval per class at IoU 0.50:0.05:0.95; AP = mean over classes and thresholds).
- coco_detection_ap: pycocotools' COCOeval on the same data.
- confusion_matrix / segmentation_scores: mIoU, pixel and mean class accuracy.

detections: one dict per image, aligned with data.items: {"boxes": N x 4 x1 y1 x2 y2,
"scores": N, "labels": N (1-based)}; tensors (any device), arrays or lists.
"""

from __future__ import annotations

import contextlib
import io
import math

import numpy as np
import torch

from mocolab.transfer.boxes import DetectionData
from mocolab.transfer.coco import to_coco_gt

VOC_THRESHOLDS = range(50, 100, 5)  # IoU x 100, as detectron2


def _np(x, shape=(-1,)) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
    return np.asarray(x, dtype=np.float64).reshape(shape)


def voc_ap(rec: np.ndarray, prec: np.ndarray, use_07_metric: bool) -> float:
    """The devkit's AP from recall/precision at each detection (detectron2's voc_ap)."""
    if use_07_metric:  # 11-point: mean of the max precision at recall >= 0, 0.1, ..., 1
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            p = 0 if np.sum(rec >= t) == 0 else np.max(prec[rec >= t])
            ap = ap + p / 11.0
        return float(ap)
    # area under the PR curve made monotonically decreasing
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = np.maximum(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def _class_aps(detections, data: DetectionData, label: int, use_07_metric: bool) -> list[float]:
    """AP of one class at each VOC threshold; NaN when it has no non-difficult object."""
    gt, npos = [], 0
    for it in data.items:
        sel = it.labels == label
        gt.append((_np(it.boxes[sel], (-1, 4)), it.difficult[sel].cpu().numpy()))
        npos += int((~gt[-1][1]).sum())
    # the class's detections over all images: image index, score, box
    img = []
    score = []
    box = []
    for i, det in enumerate(detections):
        sel = _np(det["labels"]) == label
        img += [i] * int(sel.sum())
        score.append(_np(det["scores"])[sel])
        box.append(_np(det["boxes"], (-1, 4))[sel])
    order = np.argsort(-np.concatenate(score + [np.zeros(0)]), kind="stable")
    img = np.asarray(img, dtype=np.int64)[order]  # D image indices, by decreasing score
    box = np.concatenate(box + [np.zeros((0, 4))])[order]  # D x 4
    # IoU of each detection with its image's objects does not depend on the threshold: the best
    # overlap and its object (jmax) are found once. Continuous coordinates: detectron2 adds 1 to
    # both x1 and y1 before its "+1" IoU, which is the same IoU.
    ovmax, jmax = np.full(len(img), -np.inf), np.zeros(len(img), dtype=np.int64)
    for d, (i, bb) in enumerate(zip(img, box)):
        g = gt[i][0]  # K x 4
        if g.size:
            iw = np.maximum(np.minimum(g[:, 2], bb[2]) - np.maximum(g[:, 0], bb[0]), 0.0)
            ih = np.maximum(np.minimum(g[:, 3], bb[3]) - np.maximum(g[:, 1], bb[1]), 0.0)
            inter = iw * ih
            union = (bb[2] - bb[0]) * (bb[3] - bb[1]) + (g[:, 2] - g[:, 0]) * (g[:, 3] - g[:, 1])
            ov = inter / np.maximum(union - inter, np.finfo(np.float64).eps)
            ovmax[d], jmax[d] = ov.max(), ov.argmax()
    aps = []
    for t in VOC_THRESHOLDS:
        if npos == 0:
            aps.append(math.nan)
            continue
        matched = [np.zeros(len(g[0]), dtype=bool) for g in gt]
        tp, fp = np.zeros(len(img)), np.zeros(len(img))
        for d, i in enumerate(img):
            if ovmax[d] > t / 100:
                if not gt[i][1][jmax[d]]:  # difficult: neither TP nor FP
                    if not matched[i][jmax[d]]:
                        tp[d], matched[i][jmax[d]] = 1.0, True
                    else:
                        fp[d] = 1.0  # a duplicate of an already matched object
            else:
                fp[d] = 1.0
        tp, fp = np.cumsum(tp), np.cumsum(fp)
        rec = tp / float(npos)
        prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        aps.append(voc_ap(rec, prec, use_07_metric) * 100)
    return aps


def voc_detection_ap(detections, data: DetectionData, use_07_metric: bool) -> dict:
    """{"AP", "AP50", "AP75", "AP50-<class>"...} in percent; use_07_metric: 11-point AP (VOC2007).

    As detectron2, except: scores and boxes keep full precision (it writes them rounded to text
    files), ties in score keep image order (stable sort), and a class without a non-difficult
    object gets NaN and is left out of the means (detectron2 would divide by zero).
    """
    if len(detections) != len(data.items):
        raise ValueError(f"{len(detections)} detection lists for {len(data.items)} images")
    aps = np.array([_class_aps(detections, data, c, use_07_metric)
                    for c in range(1, data.num_classes + 1)]).reshape(-1, len(VOC_THRESHOLDS))
    by_t = [_nanmean(aps[:, j]) for j in range(len(VOC_THRESHOLDS))]  # mean over classes
    t = list(VOC_THRESHOLDS)
    out = {"AP": _nanmean(np.array(by_t)), "AP50": by_t[t.index(50)], "AP75": by_t[t.index(75)]}
    out.update({f"AP50-{c}": float(aps[k, 0]) for k, c in enumerate(data.classes)})
    return out


def _nanmean(x: np.ndarray) -> float:
    x = x[~np.isnan(x)]
    return float(x.mean()) if x.size else math.nan


COCO_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def coco_detection_ap(detections, data: DetectionData) -> dict:
    """COCOeval bbox AP (pycocotools) in percent; NaN where an area range has no object,
    all 0 when there is no detection."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if len(detections) != len(data.items):
        raise ValueError(f"{len(detections)} detection lists for {len(data.items)} images")
    results = []
    for it, det in zip(data.items, detections):
        for (x1, y1, x2, y2), s, c in zip(_np(det["boxes"], (-1, 4)).tolist(),
                                          _np(det["scores"]).tolist(), _np(det["labels"]).tolist()):
            if 1 <= c <= data.num_classes:
                results.append({"image_id": it.image_id, "category_id": int(c),
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "score": s})
    if not results:
        return {k: 0.0 for k in COCO_KEYS}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        gt = COCO()
        gt.dataset = to_coco_gt(data)
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(results), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {k: float(v * 100) if v >= 0 else math.nan for k, v in zip(COCO_KEYS, ev.stats)}


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: int = 255) -> torch.Tensor:
    """C x C int64, rows = target class, columns = predicted class; ignore pixels excluded.
    pred, target: same shape (N x H x W or H x W), integer class indices, same device."""
    pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
    keep = target != ignore_index
    pred, target = pred[keep], target[keep]
    for name, x in (("target", target), ("prediction", pred)):
        if x.numel() and (x.min() < 0 or x.max() >= num_classes):
            raise ValueError(f"{name} values outside 0..{num_classes - 1} (and not ignore)")
    return torch.bincount(target * num_classes + pred,
                          minlength=num_classes**2).reshape(num_classes, num_classes)


def segmentation_scores(conf: torch.Tensor, classes: list[str] | None = None) -> dict:
    """{"mIoU", "pixel_acc", "mean_acc", "per_class_iou": {name: IoU}} in percent.

    A class absent from both target and prediction has IoU 0/0 = NaN and is left out of mIoU
    (it says nothing about the model; mmseg's nanmean does the same); a class predicted but absent
    from the target counts with IoU 0. mean_acc averages the classes present in the target.
    """
    c = conf.detach().cpu().double()  # C x C
    tp = c.diag()  # C: pixels of class c predicted as c
    in_target = c.sum(1)  # C: pixels of class c in the masks
    in_pred = c.sum(0)  # C: pixels predicted as c
    iou = tp / (in_target + in_pred - tp)  # NaN for 0/0
    acc = tp / in_target
    names = classes if classes is not None else [str(k) for k in range(len(c))]
    return {"mIoU": float(iou.nanmean() * 100), "pixel_acc": float(tp.sum() / c.sum() * 100),
            "mean_acc": float(acc.nanmean() * 100),
            "per_class_iou": {n: float(v * 100) for n, v in zip(names, iou)}}
