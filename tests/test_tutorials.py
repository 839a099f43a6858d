"""The docs' tutorials run as written (docs/tutorials/*.sh, included verbatim in their pages), on tiny
real data: a few BCCD and CIFAR-10 images, networks and schedules shrunk through the scripts' own
variables. What each tutorial promises (embeddings, a detection score, a sweep row, exports that load
back with the same features) is checked on what it wrote."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, cifar_subset, shared

TUTORIALS = ROOT / "docs" / "tutorials"
SMALL_NET = "optim.batch_size=8 moco.queue_size=16 model.bn_splits=2 data.image_size=64 run.compile=false run.threads=1"


def run_tutorial(script: str, tmp_path: Path, **env) -> str:
    """Runs docs/tutorials/SCRIPT with the repository's mocolab and python; returns its output."""
    full = {**os.environ, "MOCOLAB": f"{sys.executable} -m mocolab", "MOCOLAB_CACHE": str(tmp_path / "cache"),
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", **env}
    p = subprocess.run(["bash", str(TUTORIALS / script)], cwd=ROOT, env=full, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, f"{script} failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p.stdout


def tiny_voc(src: Path, dest: Path, train: int, test: int) -> Path:
    """dest/: a VOC folder (Annotations/, JPEGImages/, ImageSets/Main/) of the first BCCD images."""
    ids = (src / "ImageSets" / "Main" / "trainval.txt").read_text().split()[:train]
    test_ids = (src / "ImageSets" / "Main" / "test.txt").read_text().split()[:test]
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (dest / sub).mkdir(parents=True)
    for i in ids + test_ids:
        (dest / "Annotations" / f"{i}.xml").symlink_to(src / "Annotations" / f"{i}.xml")
        (dest / "JPEGImages" / f"{i}.jpg").symlink_to(src / "JPEGImages" / f"{i}.jpg")
    (dest / "ImageSets" / "Main" / "trainval.txt").write_text("\n".join(ids) + "\n")
    (dest / "ImageSets" / "Main" / "test.txt").write_text("\n".join(test_ids) + "\n")
    return dest


@pytest.mark.slow
def test_own_images_to_detection(tmp_path):
    bccd = shared("bccd/BCCD")
    voc = tiny_voc(bccd, tmp_path / "voc", train=4, test=2)
    images = tmp_path / "images"  # a flat folder of unlabeled images
    images.mkdir()
    for f in sorted((bccd / "JPEGImages").glob("*.jpg"))[:16]:
        (images / f.name).symlink_to(f)
    out = tmp_path / "tutorial"
    log = run_tutorial("own_images.sh", tmp_path, IMAGES=str(images), VOC=str(voc), OUT=str(out), EPOCHS="1",
                       ITERS="2", PRETRAIN_SET=SMALL_NET,
                       DETECT_SET="task.train_sizes=[96] task.test_size=96 task.max_size=128 task.workers=0 "
                                  "task.warmup_iters=0 optim.batch_size=2 run.threads=1")
    emb = np.load(out / "embeddings.npy")
    assert emb.shape == (16, json.loads((out / "backbone" / "backbone.json").read_text())["feature_dim"])
    assert np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-4)  # unit-length features
    assert "nearest" in log
    ap50 = json.loads((out / "detect" / "detect.json").read_text())["AP50"]
    assert 0 <= ap50 <= 100 and f"detection AP50: {ap50}" in log


@pytest.mark.slow
def test_ablation_cell(tmp_path, cifar_dir):
    data = cifar_subset(cifar_dir, tmp_path / "c10", 16)
    out = tmp_path / "sweep"
    log = run_tutorial("ablation_cell.sh", tmp_path, DATA=str(data), OUT=str(out), EPOCHS="1", LIMIT="32",
                       SET="model.width=8 " + SMALL_NET.replace("data.image_size=64 ", ""))
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert sorted((r["method"], r["K"], r["status"]) for r in rows) == [("bank", 256, "done"), ("moco", 256, "done")]
    assert all(0 <= r["knn"] <= 100 and 0 <= r["linear"] <= 100 for r in rows), rows
    assert "| " in log  # results.md printed


@pytest.mark.slow
def test_export_and_load_back(tmp_path):
    bccd = shared("bccd/BCCD")
    images = tmp_path / "images"
    images.mkdir()
    for f in sorted((bccd / "JPEGImages").glob("*.jpg"))[:8]:
        (images / f.name).symlink_to(f)
    out = tmp_path / "export"
    log = run_tutorial("export_load.sh", tmp_path, DATA=str(images), OUT=str(out), EPOCHS="1", SET=SMALL_NET)
    for name in ("timm.pth", "timm.json", "detectron2.pkl", "torchvision.pth", "safetensors.safetensors"):
        assert (out / f"backbone_{name}").is_file(), name
    assert "timm: strict load into resnet18" in log and "torchvision: strict load, same features" in log
    assert "detectron2:" in log and "safetensors: strict load" in log
