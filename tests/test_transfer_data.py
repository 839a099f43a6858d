"""Transfer datasets: real BCCD (VOC) and CamVid, a COCO round trip, and bad input written
into tmp_path (each problem: one warning naming the file, or a one-line DataError)."""

import json
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import shared
from PIL import Image

from mocolab.data import DataError
from mocolab.transfer.coco import load_coco, to_coco_gt
from mocolab.transfer.masks import load_masks
from mocolab.transfer.voc import load_voc


@pytest.fixture(scope="module")
def bccd() -> Path:
    return shared("bccd/BCCD")


def messages(record) -> list[str]:
    return [str(w.message) for w in record]


def one_line_error(match: str, fn, *args, **kw) -> str:
    with pytest.raises(DataError, match=match) as e:
        fn(*args, **kw)
    assert "\n" not in str(e.value)
    return str(e.value)


# ---- real data ---------------------------------------------------------------------------


def test_bccd_trainval_and_test(bccd):
    with pytest.warns(UserWarning) as rec:
        tv = load_voc(bccd, "trainval")
    # the two zero-size RBC boxes (BloodImage_00338, _00343), one warning each naming the file
    msgs = messages(rec)
    assert len(msgs) == 2
    for name in ("BloodImage_00338.xml", "BloodImage_00343.xml"):
        assert sum(name in m and "zero-size" in m for m in msgs) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        test = load_voc(bccd, "test", classes=tv.classes)
    assert tv.classes == test.classes == ["Platelets", "RBC", "WBC"]
    assert (len(tv), len(test)) == (292, 72)
    n_xml = sum(len(ET.parse(p).getroot().findall("object"))
                for p in (bccd / "Annotations").glob("*.xml"))
    assert sum(len(it.boxes) for it in tv.items + test.items) == n_xml - 2
    it = test.items[0]
    assert it.boxes.dtype == torch.float32 and it.labels.dtype == torch.int64
    assert it.difficult.dtype == torch.bool and not it.difficult.any()
    assert (it.width, it.height, it.image_id) == (640, 480, 1)
    # detectron2's conversion: xmin, ymin - 1; xmax, ymax as they are
    raw = [[float(o.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")]
           for o in ET.parse(bccd / "Annotations" / f"{it.path.stem}.xml").getroot().iter("object")]
    assert torch.equal(it.boxes, torch.tensor(raw) - torch.tensor([1.0, 1.0, 0.0, 0.0]))
    assert all(it.labels.min() >= 1 and it.labels.max() <= 3 for it in tv.items if len(it.labels))


def test_coco_round_trip(bccd, tmp_path):
    data = load_voc(bccd, "test")
    data.items[0].difficult[0] = True  # -> iscrowd -> difficult
    gt = to_coco_gt(data)
    (tmp_path / "instances_test.json").write_text(json.dumps(gt))
    back = load_coco(tmp_path / "instances_test.json", bccd / "JPEGImages")
    assert back.classes == data.classes and len(back) == len(data)
    for a, b in zip(data.items, back.items):
        assert (a.path, a.width, a.height, a.image_id) == (b.path, b.width, b.height, b.image_id)
        assert torch.equal(a.boxes, b.boxes) and torch.equal(a.labels, b.labels)
        assert torch.equal(a.difficult, b.difficult)
    assert [a["id"] for a in gt["annotations"]][:2] == [1, 2]  # COCOeval reads id 0 as unmatched


def test_camvid_masks():
    camvid = shared("camvid")
    train = load_masks(camvid / "train", num_classes=11, ignore_index=11)
    val = load_masks(camvid / "val", num_classes=11, ignore_index=11)
    assert (len(train), len(val)) == (367, 101)
    assert [p.stem for p in train.images] == [p.stem for p in train.masks]
    x, y = val.read_pair(0)
    assert x.dtype == torch.uint8 and x.shape == (3, 360, 480)
    assert y.dtype == torch.int64 and y.shape == (360, 480) and 0 <= y.min() and y.max() <= 11


# ---- bad input ---------------------------------------------------------------------------


def jpeg(path: Path, size=(64, 48)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (200, 30, 30)).save(path)


def voc_xml(objects, size=(64, 48)) -> str:
    objs = "".join(f"<object><name>{n}</name><difficult>{d}</difficult><bndbox><xmin>{b[0]}</xmin>"
                   f"<ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
                   for n, b, d in objects)
    return (f"<annotation><size><width>{size[0]}</width><height>{size[1]}</height></size>"
            f"{objs}</annotation>")


@pytest.fixture
def voc(tmp_path) -> Path:
    """A VOC tree: 'all' lists 7 images, 2 unusable; 'bad' has none usable."""
    cases = {
        "good": voc_xml([("cell", (11, 11, 30, 30), 0)]),
        "broken": "<annotation><object><name>cell</na",
        "noimage": voc_xml([("cell", (11, 11, 30, 30), 0)]),
        "unknown": voc_xml([("cell", (11, 11, 30, 30), 0), ("dog", (1, 1, 5, 5), 0)]),
        "outside": voc_xml([("cell", (50, 40, 80, 60), 0), ("cell", (70, 1, 90, 9), 0)]),
        "negative": voc_xml([]),
        "hard": voc_xml([("cell", (11, 11, 30, 30), 1), ("cell", (31, 11, 50, 30), 0)]),
    }
    (tmp_path / "Annotations").mkdir()
    for name, text in cases.items():
        (tmp_path / "Annotations" / f"{name}.xml").write_text(text)
        if name != "noimage":
            jpeg(tmp_path / "JPEGImages" / f"{name}.jpg")
    (tmp_path / "ImageSets" / "Main").mkdir(parents=True)
    (tmp_path / "ImageSets" / "Main" / "all.txt").write_text("\n".join(cases) + "\n")
    (tmp_path / "ImageSets" / "Main" / "bad.txt").write_text("broken\nnoimage\n")
    return tmp_path


def test_voc_bad_input(voc):
    with pytest.warns(UserWarning) as rec:
        data = load_voc(voc, "all", classes=["cell"])
    msgs = messages(rec)
    assert len(msgs) == 4  # one per problem file
    for name, what in [("broken", "not a readable VOC XML"), ("noimage", "image not found"),
                       ("unknown", "unknown class dog"), ("outside", "clipped 1 box")]:
        assert sum(f"{name}.xml" in m and what in m for m in msgs) == 1, (name, msgs)
    by_name = {it.path.stem: it for it in data.items}
    assert sorted(by_name) == ["good", "hard", "negative", "outside", "unknown"]
    assert by_name["negative"].boxes.shape == (0, 4) and by_name["negative"].labels.shape == (0,)
    assert by_name["unknown"].labels.tolist() == [1]
    # (50, 40, 80, 60) -> (49, 39, 80, 60) -> clipped to 64 x 48; (70, 1, 90, 9) lies outside
    assert by_name["outside"].boxes.tolist() == [[49.0, 39.0, 64.0, 48.0]]
    assert "dropped 1 box outside the image" in next(m for m in msgs if "outside.xml" in m)
    assert by_name["hard"].difficult.tolist() == [True, False]
    with pytest.warns(UserWarning):
        assert load_voc(voc, "all").classes == ["cell", "dog"]  # names from the data


def test_voc_fatal_errors(voc, tmp_path):
    assert str(tmp_path / "nowhere") in one_line_error("not found", load_voc, tmp_path / "nowhere",
                                                       "all")
    assert "nosuch.txt" in one_line_error("split file not found", load_voc, voc, "nosuch")
    with pytest.warns(UserWarning):
        one_line_error("no usable image", load_voc, voc, "bad", classes=["cell"])


def test_coco_bad_input(tmp_path):
    for name in ("1.jpg", "3.jpg"):
        jpeg(tmp_path / "img" / name)
    d = {"images": [{"id": i, "file_name": f"{i}.jpg", "width": 64, "height": 48}
                    for i in (1, 2, 3)],
         "categories": [{"id": 7, "name": "dog"}, {"id": 3, "name": "cell"}],
         "annotations": [
             {"id": 1, "image_id": 1, "category_id": 3, "bbox": [10, 10, 20, 20], "iscrowd": 0},
             {"id": 2, "image_id": 1, "category_id": 7, "bbox": [50, 40, 30, 30], "iscrowd": 1},
             {"id": 3, "image_id": 1, "category_id": 3, "bbox": [5, 5, 0, 10], "iscrowd": 0},
             {"id": 4, "image_id": 2, "category_id": 3, "bbox": [1, 1, 5, 5], "iscrowd": 0}]}
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(d))
    with pytest.warns(UserWarning) as rec:
        data = load_coco(path, tmp_path / "img")
    msgs = messages(rec)
    assert len(msgs) == 2
    assert sum("2.jpg" in m and "image not found" in m for m in msgs) == 1
    assert sum("1.jpg" in m and "1 zero-size box" in m and "clipped 1 box" in m for m in msgs) == 1
    assert data.classes == ["cell", "dog"]  # sorted by category id
    one, three = data.items
    assert one.labels.tolist() == [1, 2] and one.difficult.tolist() == [False, True]
    assert one.boxes.tolist() == [[10, 10, 30, 30], [50, 40, 64, 48]]  # xywh -> xyxy, clipped
    assert three.image_id == 3 and len(three.boxes) == 0  # a negative, kept
    with pytest.warns(UserWarning) as rec:
        assert load_coco(path, tmp_path / "img", classes=["cell"]).items[0].labels.tolist() == [1]
    assert sum("1.jpg" in m and "unknown class dog" in m for m in messages(rec)) == 1
    path.write_text('{"images": [')
    assert "instances.json" in one_line_error("not a readable COCO JSON", load_coco, path, tmp_path)
    path.write_text("[]")
    one_line_error("not a COCO instances file", load_coco, path, tmp_path)
    one_line_error("not found", load_coco, tmp_path / "missing.json", tmp_path)


def test_masks_bad_input(tmp_path):
    for name in "abcde":
        jpeg(tmp_path / "images" / f"{name}.jpg", size=(8, 6))
    (tmp_path / "masks").mkdir()
    m = np.zeros((6, 8), dtype=np.uint8)
    m[0, :3] = [1, 2, 255]
    Image.fromarray(m).save(tmp_path / "masks" / "a.png")
    Image.fromarray(np.zeros((5, 8), dtype=np.uint8)).save(tmp_path / "masks" / "b.png")
    m9 = m.copy()
    m9[1, 1] = 9
    Image.fromarray(m9).save(tmp_path / "masks" / "d.png")  # c.png missing
    Image.new("RGB", (8, 6)).save(tmp_path / "masks" / "e.png")  # not single-channel
    with pytest.warns(UserWarning) as rec:
        seg = load_masks(tmp_path, num_classes=4)
    msgs = messages(rec)
    assert len(msgs) == 3
    assert sum("b.png is 8x5, its image 8x6" in m for m in msgs) == 1
    assert sum("c.jpg" in m and "mask not found" in m for m in msgs) == 1
    assert sum("e.png is not single-channel" in m for m in msgs) == 1
    assert [p.name for p in seg.masks] == ["a.png", "d.png"] and seg.ignore_index == 255
    x, y = seg.read_pair(0)
    assert x.shape == (3, 6, 8) and y[0, :3].tolist() == [1, 2, 255]
    with pytest.warns(UserWarning, match=r"d.png: values \[9\] outside 0..3 set to ignore"):
        assert seg.read_pair(1)[1][1, 1] == 255
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one warning per file
        seg.read_pair(1)
    with pytest.warns(UserWarning):
        assert load_masks(tmp_path).num_classes == 10  # 1 + the largest value, 9
    Image.fromarray(np.zeros((6, 7), dtype=np.uint8)).save(tmp_path / "masks" / "a.png")
    one_line_error("a.png: mask of shape", seg.read_pair, 0)
    one_line_error("not found", load_masks, tmp_path / "nowhere")
