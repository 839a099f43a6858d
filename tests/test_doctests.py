"""The API's examples (mocolab, mocolab.api, Config.from_preset) run as doctests, on tiny inputs:
a folder of 6 generated images, a labeled folder of real CIFAR-10 JPEGs, a few BCCD and CamVid
images, and untrained backbones (random:PRESET)."""

import doctest
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import cifar_subset, shared
from PIL import Image

import mocolab
import mocolab.api
import mocolab.config

TINY_DETECT = {"task__iters": 1, "task__train_sizes": "[96]", "task__test_size": 96, "task__max_size": 128,
               "task__fpn_channels": 16, "task__representation_size": 32, "task__box_convs": 1,
               "task__anchor_sizes": "[8,16,32,64,128]", "task__rpn_pre_nms_train": 50,
               "task__rpn_post_nms_train": 20, "task__rpn_pre_nms_test": 50, "task__rpn_post_nms_test": 20,
               "task__rpn_batch_size": 32, "task__roi_batch_size": 16, "task__box_detections_per_img": 20,
               "task__workers": 0, "task__warmup_iters": 1, "optim__batch_size": 2, "optim__milestones": "[]",
               "run__threads": 1, "run__amp": "off", "run__device": "cpu", "run__budget_minutes": 0}
TINY_SEGMENT = {"task__iters": 1, "task__crop_size": "[64,64]", "task__scale_range": "[0.25,0.4]",
                "task__test_scale": 0.25, "task__workers": 0, "optim__batch_size": 2, "run__threads": 1,
                "run__amp": "off", "run__device": "cpu", "run__budget_minutes": 0}


def image_folder(path: Path, n: int = 6) -> Path:
    """n generated 40 x 40 PNGs, unlabeled (directly in the folder)."""
    path.mkdir(parents=True)
    for i in range(n):
        rng = np.random.default_rng(i)
        Image.fromarray((rng.random((40, 40, 3)) * 255).astype(np.uint8)).save(path / f"img{i}.png")
    return path


@pytest.fixture(scope="module")
def globs(tmp_path_factory, cifar_dir):
    tmp = tmp_path_factory.mktemp("doctest")
    bccd, camvid = shared("bccd/BCCD"), shared("camvid")
    voc = tmp / "voc"
    names = sorted(p.stem for p in (bccd / "Annotations").glob("*.xml"))[:3]
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (voc / sub).mkdir(parents=True)
    for n in names:
        shutil.copy(bccd / "Annotations" / f"{n}.xml", voc / "Annotations")
        shutil.copy(bccd / "JPEGImages" / f"{n}.jpg", voc / "JPEGImages")
    (voc / "ImageSets/Main/trainval.txt").write_text("\n".join(names[:2]) + "\n")
    (voc / "ImageSets/Main/test.txt").write_text(names[2] + "\n")
    seg = tmp / "camvid"
    for split, n in (("train", 2), ("val", 1)):
        for sub in ("images", "masks"):
            (seg / split / sub).mkdir(parents=True)
        for img in sorted((camvid / split / "images").glob("*.jpg"))[:n]:
            shutil.copy(img, seg / split / "images")
            shutil.copy(camvid / split / "masks" / f"{img.stem}.png", seg / split / "masks")
    tiny = tmp / "r10w8.yaml"
    tiny.write_text("model: {arch: resnet10, width: 8, stem: imagenet}\ndata: {image_size: 64}\n")
    return {"images_dir": str(image_folder(tmp / "images")),
            "labeled_dir": str(cifar_subset(cifar_dir, tmp / "labeled", 4)), "out_dir": str(tmp / "out"),
            "voc_dir": str(voc), "seg_dir": str(seg), "tiny_backbone": f"random:{tiny}",
            "TINY_DETECT": TINY_DETECT, "TINY_SEGMENT": TINY_SEGMENT, "Path": Path, "torch": torch}


def run_doctests(obj, globs) -> doctest.TestResults:
    threads = torch.get_num_threads()
    try:
        finder, runner = doctest.DocTestFinder(), doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
        for test in finder.find(obj, globs=dict(globs)):
            runner.run(test)
        return runner.summarize(verbose=False)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("obj", [mocolab, mocolab.api.load, mocolab.api.embed, mocolab.api.neighbors,
                                 mocolab.api.knn, mocolab.api.linear, mocolab.api.pretrain, mocolab.api.segment,
                                 mocolab.api.detect, mocolab.config.Config.from_preset],
                         ids=lambda o: getattr(o, "__qualname__", getattr(o, "__name__", "")))
def test_examples(obj, globs):
    res = run_doctests(obj, globs)
    assert res.attempted > 0 and res.failed == 0


def test_every_api_function_has_an_example():
    for name in mocolab.api.__all__:
        obj = getattr(mocolab.api, name)
        if callable(obj) and not isinstance(obj, type):
            doc = obj.__doc__ or ""
            assert all(s in doc for s in ("Args:", "Returns:", "Example:", ">>>")), name
    assert set(mocolab.__all__) >= {"load", "embed", "neighbors", "pretrain", "knn", "linear", "detect", "segment"}
