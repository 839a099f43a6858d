"""Transfer metrics on hand-computed cases: VOC AP (detectron2's voc_eval), COCO AP
(pycocotools) and segmentation scores from a confusion matrix."""

import math
from pathlib import Path

import pytest
import torch

from mocolab.transfer.boxes import DetectionData, DetItem
from mocolab.transfer.metrics import (
    coco_detection_ap,
    confusion_matrix,
    segmentation_scores,
    voc_detection_ap,
)

A, B = [10.0, 10.0, 110.0, 110.0], [200.0, 50.0, 300.0, 250.0]  # two objects, 100 px wide


def data(boxes, labels=None, difficult=None, classes=("cell",)) -> DetectionData:
    """One 400 x 300 image with the given objects."""
    k = len(boxes)
    item = DetItem(path=Path("img0.jpg"), boxes=torch.tensor(boxes).reshape(-1, 4),
                   labels=torch.tensor(labels or [1] * k, dtype=torch.int64),
                   difficult=torch.tensor(difficult or [False] * k, dtype=torch.bool),
                   width=400, height=300, image_id=1)
    return DetectionData(classes=list(classes), items=[item])


def dets(boxes, scores, labels=None):
    return [{"boxes": torch.tensor(boxes).reshape(-1, 4), "scores": torch.tensor(scores),
             "labels": torch.tensor(labels or [1] * len(scores))}]


@pytest.mark.parametrize("use_07", [False, True])
def test_perfect_detections_score_100(use_07):
    d = data([A, B])
    r = voc_detection_ap(dets([A, B], [0.9, 0.8]), d, use_07_metric=use_07)
    assert r["AP"] == pytest.approx(100) and r["AP50"] == pytest.approx(100)
    assert r["AP75"] == pytest.approx(100) and r["AP50-cell"] == pytest.approx(100)
    assert coco_detection_ap(dets([A, B], [0.9, 0.8]), d)["AP"] == pytest.approx(100)


def test_duplicate_detection_is_a_false_positive():
    # sorted: A (TP), A again (FP: A is already matched), B (TP); npos = 2
    # recall 1/2, 1/2, 1; precision 1, 1/2, 2/3
    # area: envelope 1 up to recall 1/2, then 2/3 -> 0.5 * 1 + 0.5 * 2/3 = 5/6
    # 11-point: recall >= 0, .1, ..., .5 -> max precision 1 (6 points); .6 ... 1 -> 2/3 (5)
    #   -> (6 + 5 * 2/3) / 11 = 28/33
    d, det = data([A, B]), dets([A, A, B], [0.9, 0.8, 0.7])
    r = voc_detection_ap(det, d, use_07_metric=False)
    assert r["AP50"] == pytest.approx(500 / 6) and r["AP"] == pytest.approx(500 / 6)
    assert voc_detection_ap(det, d, use_07_metric=True)["AP50"] == pytest.approx(2800 / 33)


def test_missed_object_lowers_recall():
    # one TP out of 2 objects: recall 1/2 at precision 1
    # area: 0.5 * 1 = 50; 11-point: recall >= 0 ... 0.5 (6 points) -> 6/11
    d, det = data([A, B]), dets([A], [0.9])
    assert voc_detection_ap(det, d, use_07_metric=False)["AP"] == pytest.approx(50)
    assert voc_detection_ap(det, d, use_07_metric=True)["AP"] == pytest.approx(600 / 11)


def test_difficult_objects_are_ignored():
    d = data([A, B], difficult=[False, True])
    # a detection on the difficult B is neither TP nor FP: the A detection alone gives 100
    on_b = dets([B, A], [0.95, 0.9])
    for use_07 in (False, True):
        assert voc_detection_ap(on_b, d, use_07_metric=use_07)["AP"] == pytest.approx(100)
    # a missed difficult object does not lower recall
    assert voc_detection_ap(dets([A], [0.9]), d, use_07_metric=False)["AP"] == pytest.approx(100)
    # pycocotools: difficult -> iscrowd, ignored the same way
    assert coco_detection_ap(on_b, d)["AP"] == pytest.approx(100)
    assert coco_detection_ap(dets([A], [0.9]), d)["AP"] == pytest.approx(100)
    # not difficult: the same B detection is a TP and the missed B halves recall
    assert voc_detection_ap(dets([A], [0.9]), data([A, B]), use_07_metric=False)["AP"] == 50


def test_iou_thresholds_sweep():
    # IoU 6200/10000 = 0.62: a TP at 0.50, 0.55, 0.60, a FP from 0.65 (detectron2: ov > t)
    d = data([[0.0, 0.0, 100.0, 100.0]])
    r = voc_detection_ap(dets([[0.0, 0.0, 100.0, 62.0]], [0.9]), d, use_07_metric=False)
    assert (r["AP50"], r["AP75"]) == (pytest.approx(100), 0) and r["AP"] == pytest.approx(30)


def test_classes_and_wrong_labels():
    # class "a" perfect, class "b" missed, class "c" without objects (NaN, left out of the mean)
    d = data([A, B], labels=[1, 2], classes=("a", "b", "c"))
    r = voc_detection_ap(dets([A, B], [0.9, 0.8], labels=[1, 1]), d, use_07_metric=False)
    # "a": A is a TP, B (labelled a) a FP -> recall 1 at precision 1 first: AP 100
    assert r["AP50-a"] == pytest.approx(100) and r["AP50-b"] == 0
    assert math.isnan(r["AP50-c"]) and r["AP"] == pytest.approx(50)


def test_no_detections():
    d = data([A, B])
    assert voc_detection_ap([{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0),
                              "labels": torch.zeros(0, dtype=torch.int64)}], d, True)["AP"] == 0
    assert coco_detection_ap(dets([], []), d) == {k: 0.0 for k in
                                                  ("AP", "AP50", "AP75", "APs", "APm", "APl")}
    with pytest.raises(ValueError, match="detection lists"):
        voc_detection_ap([], d, use_07_metric=False)


def test_confusion_matrix_and_segmentation_scores():
    target = torch.tensor([[0, 0, 1], [1, 2, 255]])
    pred = torch.tensor([[0, 1, 1], [1, 0, 2]])  # the last pixel is ignored
    conf = confusion_matrix(pred, target, num_classes=4, ignore_index=255)
    # rows = target, columns = prediction; class 3 in neither
    assert conf.tolist() == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
    assert conf.dtype == torch.int64
    s = segmentation_scores(conf, classes=["a", "b", "c", "d"])
    # IoU a = 1 / (2 + 2 - 1), b = 2 / (2 + 3 - 2), c = 0 / (1 + 0 - 0); d = 0/0 = NaN, left out
    assert s["mIoU"] == pytest.approx(100 / 3)
    assert s["per_class_iou"]["a"] == pytest.approx(100 / 3)
    assert s["per_class_iou"]["b"] == pytest.approx(200 / 3)
    assert s["per_class_iou"]["c"] == 0 and math.isnan(s["per_class_iou"]["d"])
    assert s["pixel_acc"] == pytest.approx(60)  # 3 of the 5 labelled pixels
    assert s["mean_acc"] == pytest.approx(50)  # (1/2 + 2/2 + 0/1) / 3
    with pytest.raises(ValueError, match="target"):
        confusion_matrix(pred, torch.full_like(target, 7), num_classes=4, ignore_index=255)
