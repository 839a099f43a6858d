"""Hostile and messy files (issue 28, data half): images whose header promises a huge decode,
annotation fields of any number and type, COCO file names outside the data folder, webdataset
tars made by other tools. Each is a warning and a skip, or one line of error; never a traceback."""

import json
import math
import os
import subprocess
import sys
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import cifar_subset
from PIL import Image

from mocolab.data import (
    MAX_ASPECT,
    MAX_PIXELS,
    CenterCropFiles,
    FileList,
    ImageTooLarge,
    PILFileDataset,
    check_image_size,
    load_image,
)
from mocolab.transfer.coco import load_coco
from mocolab.transfer.masks import load_masks
from mocolab.transfer.voc import load_voc

TINY = ["--epochs", "1", "optim.batch_size=8", "model.width=8", "moco.queue_size=32", "model.hidden_dim=32",
        "data.image_size=16", "run.threads=1", "run.amp=off", "data.workers=0"]
TINY_DETECT = ["task.train_sizes=[64]", "task.test_size=64", "task.max_size=96", "task.fpn_channels=8",
               "task.representation_size=16", "task.box_convs=1", "task.anchor_sizes=[8,16,32,64,128]",
               "task.rpn_pre_nms_train=20", "task.rpn_post_nms_train=10", "task.rpn_pre_nms_test=20",
               "task.rpn_post_nms_test=10", "task.rpn_batch_size=16", "task.roi_batch_size=8",
               "task.box_detections_per_img=10", "task.workers=0", "task.warmup_iters=1", "optim.batch_size=2",
               "optim.milestones=[]", "run.threads=1", "run.log_every=1", "run.amp=off", "run.device=cpu"]


def mocolab(*argv, cwd=None) -> subprocess.CompletedProcess:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "mocolab", *map(str, argv)], capture_output=True, text=True,
                          timeout=600, env=env, cwd=cwd)


def long_png(path: Path, size=(1, 200_000)) -> Path:
    """A PNG of a few hundred bytes whose decode, resized up to the training size, takes gigabytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size).save(path)
    return path


def jpeg(path: Path, size=(64, 48), seed=0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = (np.random.default_rng(seed).random((size[1], size[0], 3)) * 255).astype(np.uint8)
    Image.fromarray(arr).save(path)
    return path


def caught(fn, *args, **kw):
    """fn's result and its UserWarnings (mocolab's skips), as text."""
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        out = fn(*args, **kw)
    return out, [str(w.message) for w in rec if issubclass(w.category, UserWarning)]


# ---- image sizes -------------------------------------------------------------------------


def test_size_bounds_are_read_from_the_header(tmp_path):
    side = math.isqrt(MAX_PIXELS)
    check_image_size((MAX_ASPECT, 1))
    check_image_size((side, side))
    for size, why in [((1, MAX_ASPECT + 1), "aspect ratio"), ((2 * MAX_ASPECT + 1, 2), "aspect ratio"),
                      ((side + 1, side + 1), "too large"), ((0, 5), "empty")]:
        with pytest.raises(ImageTooLarge, match=why):
            check_image_size(size)
    path = long_png(tmp_path / "long.png")
    assert path.stat().st_size < 2000  # a few hundred bytes
    with pytest.raises(ImageTooLarge, match="1x200000 pixels"):
        load_image(path)
    with pytest.raises(ImageTooLarge):
        load_image(open(path, "rb"))  # shards decode file objects


def test_every_decoding_dataset_skips_an_elongated_image(tmp_path):
    files = [jpeg(tmp_path / "a.jpg"), long_png(tmp_path / "long.png"), long_png(tmp_path / "wide.png", (40_000, 2))]
    fl = FileList(tmp_path, files, [0, 0, 0], ["x"])
    for ds in (CenterCropFiles(fl, 16, 18), PILFileDataset(fl, lambda im: im.size)):
        got, msgs = caught(lambda d=ds: [d[i] for i in range(3)])
        assert got[0] is not None and got[1] is None and got[2] is None
        assert sum("skipped unreadable image" in m and "long.png" in m and "too elongated" in m for m in msgs) == 1


@pytest.mark.slow
def test_pretrain_and_knn_skip_a_1_by_200000_png_with_a_warning(cifar_dir, tmp_path):
    data = cifar_subset(cifar_dir, tmp_path / "data", 8)
    long_png(data / "train" / "cat" / "long.png")
    long_png(data / "test" / "cat" / "long.png")
    res = mocolab("pretrain", "--data", data, "--out", tmp_path / "run", *TINY)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    assert "skipped unreadable image" in res.stderr and "long.png" in res.stderr and "too elongated" in res.stderr
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == 2  # 16 images of 17, batch 8
    res = mocolab("knn", "--checkpoint", tmp_path / "run", "--data", data, "--stream", "on")  # CenterCropFiles
    assert res.returncode == 0, res.stderr[-3000:]
    assert "long.png" in res.stderr and "too elongated" in res.stderr and "Traceback" not in res.stderr


def test_segmentation_pairs_over_the_bound_are_dropped_at_load_time(tmp_path):
    for name in ("a", "b"):
        jpeg(tmp_path / "images" / f"{name}.jpg", size=(8, 6))
        (tmp_path / "masks").mkdir(exist_ok=True)
        Image.fromarray(np.zeros((6, 8), dtype=np.uint8)).save(tmp_path / "masks" / f"{name}.png")
    long_png(tmp_path / "images" / "c.png", size=(1, 40_000))
    Image.new("L", (1, 40_000)).save(tmp_path / "masks" / "c.png")
    seg, msgs = caught(load_masks, tmp_path, num_classes=2)
    assert [p.name for p in seg.images] == ["a.jpg", "b.jpg"]
    assert len(msgs) == 1 and "c.png" in msgs[0] and "too elongated" in msgs[0]


# ---- VOC ---------------------------------------------------------------------------------


def voc_tree(root: Path, xmls: dict[str, str], test: dict[str, str] | None = None) -> Path:
    """A VOC folder: trainval lists `xmls`, test lists `test` (default: one good image)."""
    test = test or {"t0": voc_xml([("cell", ("11", "11", "30", "30"), "0")])}
    (root / "Annotations").mkdir(parents=True)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    for i, (name, text) in enumerate({**xmls, **test}.items()):
        (root / "Annotations" / f"{name}.xml").write_text(text)
        jpeg(root / "JPEGImages" / f"{name}.jpg", seed=i)
    (root / "ImageSets" / "Main" / "trainval.txt").write_text("\n".join(xmls) + "\n")
    (root / "ImageSets" / "Main" / "test.txt").write_text("\n".join(test) + "\n")
    return root


def voc_xml(objects, size=("64", "48")) -> str:
    objs = "".join(f"<object><name>{n}</name><difficult>{d}</difficult><bndbox><xmin>{b[0]}</xmin>"
                   f"<ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
                   for n, b, d in objects)
    return f"<annotation><size><width>{size[0]}</width><height>{size[1]}</height></size>{objs}</annotation>"


GOOD = ("cell", ("11", "11", "30", "30"), "0")


@pytest.fixture
def hostile_voc(tmp_path) -> Path:
    return voc_tree(tmp_path / "voc", {
        "good": voc_xml([GOOD]),
        "inf_size": voc_xml([GOOD], size=("inf", "48")),
        "big_size": voc_xml([GOOD], size=("1e999", "-nan")),
        "text_size": voc_xml([GOOD], size=("wide", "[1]")),
        "nan_box": voc_xml([GOOD, ("cell", ("nan", "1", "5", "5"), "0"), ("cell", ("1", "1", "inf", "5"), "0")]),
        "huge_box": voc_xml([GOOD, ("cell", ("1e999", "1", "5", "5"), "0"), ("cell", ("0x10", "1", "5", "5"), "0")]),
        "difficult": voc_xml([("cell", ("11", "11", "30", "30"), "inf"), ("cell", ("1", "1", "9", "9"), "yes")]),
    })


def test_voc_numbers_of_any_kind_are_warned_and_skipped(hostile_voc):
    (hostile_voc / "ImageSets" / "Main" / "trainval.txt").write_text(
        "good\ninf_size\nbig_size\ntext_size\nnan_box\nhuge_box\ndifficult\n../voc/Annotations/good\n/etc/passwd\n")
    data, msgs = caught(load_voc, hostile_voc, "trainval")
    by_name = {it.path.stem: it for it in data.items}
    assert sorted(by_name) == ["big_size", "difficult", "good", "huge_box", "inf_size", "nan_box", "text_size"]
    for name in ("inf_size", "big_size", "text_size"):  # read from the image's header instead
        assert (by_name[name].width, by_name[name].height) == (64, 48)
        assert sum(f"{name}.xml" in m and "unusable <size>" in m for m in msgs) == 1
    for name in ("nan_box", "huge_box"):
        assert len(by_name[name].boxes) == 1
        assert sum(f"{name}.xml" in m and "dropped 2 objects without a name or a finite" in m for m in msgs) == 1
    assert by_name["difficult"].difficult.tolist() == [False, False]
    assert sum("difficult.xml" in m and "2 <difficult> values other than 0 or 1" in m for m in msgs) == 1
    assert sum("plain file name" in m for m in msgs) == 2  # ../ and absolute ids: never read


@pytest.fixture(scope="module")
def tiny_backbone(tmp_path_factory) -> str:
    """random:PRESET for a width-8 ResNet-10 with the ImageNet stem."""
    path = tmp_path_factory.mktemp("bb") / "r10w8.yaml"
    path.write_text("model: {arch: resnet10, width: 8, stem: imagenet}\ndata: {image_size: 64}\n")
    return f"random:{path}"


@pytest.mark.slow
def test_detect_trains_on_a_hostile_voc_folder(hostile_voc, tiny_backbone, tmp_path):
    res = mocolab("detect", "--backbone", tiny_backbone, "--data", hostile_voc, "--out", tmp_path / "run",
                  "--iters", "2", *TINY_DETECT)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Traceback" not in res.stderr and "unusable <size>" in res.stderr and "finite" in res.stderr
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == 2


# ---- COCO --------------------------------------------------------------------------------


def coco_folder(root: Path, images: list, annotations: list, categories=None) -> Path:
    """root/annotations/instances_{train,val}.json and root/{train,val}/N.jpg for every int id;
    val holds one good image."""
    categories = categories or [{"id": 1, "name": "cell"}]
    for i in range(1, 5):
        jpeg(root / "train" / f"{i}.jpg", seed=i)
    jpeg(root / "val" / "1.jpg")
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "instances_train.json").write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    (root / "annotations" / "instances_val.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "1.jpg", "width": 64, "height": 48}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "iscrowd": 0}],
        "categories": categories}))
    return root


def image(i, name=None, w=64, h=48):
    return {"id": i, "file_name": name or f"{i}.jpg", "width": w, "height": h}


def ann(i, image_id, bbox=(10, 10, 20, 20), iscrowd=0, category_id=1):
    return {"id": i, "image_id": image_id, "category_id": category_id, "bbox": list(bbox), "iscrowd": iscrowd}


@pytest.fixture
def hostile_coco(tmp_path) -> Path:
    outside = jpeg(tmp_path / "secret.jpg")
    images = [image(1), image(2), image(3), image(float("inf")), image(4, w=float("inf")), image([5]),
              image(6, name=str(outside)), image(7, name="../secret.jpg"), image(2, name="3.jpg"), "not a dict",
              image(8, w=True), image(9, name=["1.jpg"])]
    anns = [ann(1, 1), ann(2, 1, bbox=(float("nan"), 1, 5, 5)), ann(3, 1, bbox=(1, 1, float("inf"), 5)),
            ann(4, 1, bbox="1234"), ann(5, [1]), ann(6, 1, category_id=float("inf")), ann(7, 2, iscrowd="no"),
            ann(8, 2, iscrowd=1), ann(9, 3, iscrowd=True), ann(10, 3, bbox=(1, 1, 5, 5), iscrowd=2),
            ann(11, {"a": 1}), [1, 2], ann(12, 2, bbox=(1, 2, 3)), ann(13, 1, bbox=(1, 1, 10**400, 5))]
    cats = [{"id": 1, "name": "cell"}, {"id": float("inf"), "name": "x"}, {"id": 2, "name": ["y"]}, "cat",
            {"id": 1, "name": "dup"}]
    return coco_folder(tmp_path / "coco", images, anns, cats)


def test_coco_numbers_types_and_paths_are_warned_and_skipped(hostile_coco):
    train = hostile_coco / "annotations" / "instances_train.json"
    assert "Infinity" in train.read_text() and "NaN" in train.read_text()  # as json.dumps writes them
    data, msgs = caught(load_coco, train, hostile_coco / "train")
    assert data.classes == ["cell"]
    by_id = {it.image_id: it for it in data.items}
    assert sorted(by_id) == [1, 2, 3]  # 4, 5, [5], inf: malformed; 6, 7: outside; the second 2: duplicate
    assert by_id[1].boxes.tolist() == [[10, 10, 30, 30]]
    assert by_id[2].path.name == "2.jpg" and by_id[2].difficult.tolist() == [False, True]  # "no" read as 0
    assert by_id[3].difficult.tolist() == [True, False]  # true is 1; 2 read as 0
    file_msg = next(m for m in msgs if m.startswith(f"{train}:"))
    for part in ("skipped 3 malformed categories", "skipped 1 category with a duplicate id",
                 "skipped 6 image entries malformed", "skipped 2 image entries whose file_name is absolute or leaves",
                 "skipped 1 image entry with a duplicate id", "skipped 3 annotations without an integer image_id"):
        assert part in file_msg, (part, file_msg)
    assert sum("(1.jpg)" in m and "dropped 5 malformed annotations" in m for m in msgs) == 1
    assert sum("(2.jpg)" in m and "1 iscrowd value other than 0 or 1" in m for m in msgs) == 1
    assert sum("(3.jpg)" in m and "1 iscrowd value other than 0 or 1" in m for m in msgs) == 1
    assert not any("secret" in str(it.path) for it in data.items)


def test_coco_file_name_outside_the_image_folder_is_never_opened(hostile_coco, monkeypatch):
    opened = []
    real = Path.is_file
    monkeypatch.setattr(Path, "is_file", lambda p: opened.append(str(p)) or real(p))
    caught(load_coco, hostile_coco / "annotations" / "instances_train.json", hostile_coco / "train")
    assert opened and not any("secret" in p for p in opened)


def test_a_coco_file_without_usable_categories_or_images_is_one_line(tmp_path):
    from mocolab.data import DataError

    path = tmp_path / "instances.json"
    nan_category = [{"id": float("nan"), "name": "a"}]
    for d, why in [({"images": [image(1)], "categories": nan_category}, "no usable 'categories'"),
                   ({"images": [image(float("inf"))], "categories": [{"id": 1, "name": "a"}]}, "no usable image"),
                   ("[" * 100_000, "not a readable COCO JSON")]:
        path.write_text(d if isinstance(d, str) else json.dumps(d))
        with pytest.raises(DataError, match=why) as e:
            caught(load_coco, path, tmp_path)
        assert "\n" not in str(e.value)


@pytest.mark.slow
def test_detect_trains_on_a_hostile_coco_folder(hostile_coco, tiny_backbone, tmp_path):
    res = mocolab("detect", "--backbone", tiny_backbone, "--data", hostile_coco, "--out", tmp_path / "run",
                  "--iters", "2", *TINY_DETECT)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Traceback" not in res.stderr and "leaves the image folder" in res.stderr
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == 2


# ---- shards ------------------------------------------------------------------------------


def test_a_tar_made_with_tar_cf_dot_counts_and_streams_every_sample(tmp_path):
    """`./` prefixes, nested folders, dots in keys, .jpeg/.png/.webp, as webdataset splits them."""
    from mocolab.shards import ShardStream

    src = tmp_path / "src"
    names = ["000.jpg", "001.jpeg", "002.png", "003.webp", "sub/004.jpg", "sub.v2/005.JPG", "a.b/006.x.jpg"]
    for i, name in enumerate(names):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        arr = np.full((10, 12, 3), i * 30, dtype=np.uint8)
        Image.fromarray(arr).save(src / name, format={"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG",
                                                      "webp": "WEBP"}[name.rsplit(".", 1)[1].lower()])
        (src / name).with_name(name.split("/")[-1].split(".")[0] + ".cls").write_text(str(i % 3))
    (src / "__meta__").write_text("not a sample")
    # a sample's files must be adjacent in the tar (webdataset groups consecutive members)
    subprocess.run(["tar", "cf", str(tmp_path / "x.tar"), "--sort=name", "."], cwd=src, check=True)
    with tarfile.open(tmp_path / "x.tar") as tar:
        assert "./000.jpg" in tar.getnames()
    stream = ShardStream(str(tmp_path / "x.tar"), 8)
    assert len(stream) == 7
    got, msgs = caught(lambda: [(x, y) for x, y in stream.dataset(0)])
    assert not msgs
    assert sorted(round(x.float().mean().item() / 30) for x, _ in got) == list(range(7))  # each image once
    assert sorted(y for _, y in got) == sorted(i % 3 for i in range(7))  # with its label


def test_a_plain_tar_cf_dot_of_images_is_counted_by_sample(tmp_path):
    """The issue's case: `tar cf x.tar .` of NNN.jpg files (members ./NNN.jpg), in directory order."""
    from mocolab.shards import ShardStream

    for i in range(5):
        jpeg(tmp_path / "src" / f"{i:03d}.jpg", size=(12, 10), seed=i)
    subprocess.run(["tar", "cf", str(tmp_path / "x.tar"), "."], cwd=tmp_path / "src", check=True)
    stream = ShardStream(str(tmp_path / "x.tar"), 8)
    assert len(stream) == 5
    got, msgs = caught(lambda: [y for _, y in stream.dataset(0)])
    assert got == [-1] * 5 and not msgs


def test_shards_refuses_to_overwrite_without_the_flag(cifar_dir, tmp_path):
    data = cifar_subset(cifar_dir, tmp_path / "data", 3, classes=("cat",))
    out = tmp_path / "sh" / "c"
    res = mocolab("shards", "--data", data / "train", "--out", out, "--shard-size", "1")
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in out.parent.iterdir()) == ["c-000000.tar", "c-000001.tar", "c-000002.tar", "c.json"]
    before = (out.parent / "c-000000.tar").read_bytes()
    res = mocolab("shards", "--data", data / "train", "--out", out, "--shard-size", "2")
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "pass --overwrite" in res.stderr, res.stderr
    assert (out.parent / "c-000000.tar").read_bytes() == before  # untouched
    res = mocolab("shards", "--data", data / "train", "--out", out, "--shard-size", "2", "--overwrite")
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in out.parent.iterdir()) == ["c-000000.tar", "c-000001.tar", "c.json"]  # none stale
    assert json.loads((out.parent / "c.json").read_text())["counts"] == [2, 1]


def test_rgb_array_copies_in_strips_exactly(tmp_path):
    from mocolab.data import rgb_array

    im = load_image(jpeg(tmp_path / "a.jpg", size=(8000, 1000)))  # 24 strips of 43 rows
    ref = np.asarray(im)
    assert np.array_equal(rgb_array(im), ref) and np.array_equal(rgb_array(im, flip=True), ref[:, ::-1])
