"""The catalogue of bad inputs, run against the command line: each must give a one-line error
(exit 2, one `mocolab: error:` line saying what is wrong, no traceback) or a documented skip
(exit 0 with its `warning: skipped ...` line), or, for a file another tool makes (a webdataset tar
made with `tar cf`), read correctly (exit 0); never a traceback or a silent acceptance.

    python benchmarks/bad_inputs.py --data ../shared/data/cifar10 [--only WORD] [--json bad_inputs.json]

Tiny data (a few CIFAR-10 JPEGs per class) and a tiny finished run are made in a temporary
folder; each case is one `python -m mocolab ...` process (a few seconds each, one thread).
It prints a line per case and the counts: one-line errors, documented skips, read correctly,
tracebacks, silent acceptances, other (goal: the last three 0); exit status 1 if any of those is not 0.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

TINY = ["--epochs", "1", "optim.batch_size=8", "model.width=8", "moco.queue_size=32", "model.hidden_dim=32",
        "data.image_size=16", "run.threads=1", "run.amp=off", "data.workers=0"]


class _Code:  # a pickle that would run a command when loaded without weights_only
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def make_inputs(cifar: Path, tmp: Path) -> dict[str, str]:
    """The files and folders the cases point at -> {placeholder: path}."""
    from PIL import Image

    data = tmp / "data"
    for split in ("train", "test"):
        for cls in ("airplane", "cat"):
            (data / split / cls).mkdir(parents=True)
            for src in sorted((cifar / split / cls).glob("*.jpg"))[:8]:
                (data / split / cls / src.name).write_bytes(src.read_bytes())
    corrupt, truncated = tmp / "corrupt", tmp / "truncated"
    for d in (corrupt, truncated):
        subprocess.run(["cp", "-r", str(data), str(d)], check=True)
    (corrupt / "train" / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    jpg = next((data / "train" / "cat").glob("*.jpg")).read_bytes()
    (truncated / "train" / "cat" / "cut.jpg").write_bytes(jpg[: len(jpg) // 3])
    flat = tmp / "flat"
    flat.mkdir()
    for i in range(16):
        Image.new("RGB", (20, 20), (i * 10, 50, 100)).save(flat / f"{i}.png")
    (tmp / "empty").mkdir()
    (tmp / "text.pth").write_text("these are not weights\n")
    with open(tmp / "code.pth", "wb") as f:
        pickle.dump({"state_dict": _Code()}, f)
    (tmp / "bad.yaml").write_text("optim: {lr: [1, 2\n")
    (tmp / "unknown_key.yaml").write_text("optim: {speed: 3}\n")
    (tmp / "a_file").write_text("x")
    run = tmp / "run"
    res = subprocess.run([sys.executable, "-m", "mocolab", "pretrain", "--data", str(data), "--out", str(run),
                          *TINY], capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"could not make the tiny run: {res.stderr[-2000:]}")
    (tmp / "truncated.pth").write_bytes((run / "backbone.pth").read_bytes()[:300])
    (tmp / "exists.pth").write_text("x")
    # a finished run whose files were torn or hand-edited (issue 28): backbone.json cut mid-way, an empty
    # summary.json, a config with numbers where groups belong, metrics lines without a step or not objects
    torn = tmp / "torn"
    shutil.copytree(run, torn)
    (torn / "backbone.json").write_text('{"mean": [0.5, 0.4')
    (torn / "summary.json").write_text("")
    (torn / "config.yaml").write_text("optim: 5\nrun: {knn_k: abc}\n")
    with open(torn / "metrics.jsonl", "a") as f:
        f.write('{"loss": 1.0}\n[1, 2]\n{"step": 9, "lo')
    # class folders named like matplotlib's mathtext
    dollars = tmp / "dollars"
    for split in ("train", "test"):
        for old, new in (("airplane", "$\\bogus$"), ("cat", "$5-$10")):
            shutil.copytree(data / split / old, dollars / split / new)
    return make_hostile_inputs(data, tmp) | {"TORN": str(torn), "DOLLARS": str(dollars),
            "DATA": str(data), "CORRUPT": str(corrupt), "TRUNCATED": str(truncated), "FLAT": str(flat),
            "EMPTY": str(tmp / "empty"), "TEXT": str(tmp / "text.pth"), "CODE": str(tmp / "code.pth"),
            "TRUNCPTH": str(tmp / "truncated.pth"), "BADYAML": str(tmp / "bad.yaml"),
            "KEYYAML": str(tmp / "unknown_key.yaml"), "AFILE": str(tmp / "a_file"), "RUN": str(run),
            "EXPORT": str(run / "backbone.pth"), "EXISTS": str(tmp / "exists.pth"), "TMP": str(tmp)}


def _voc(root: Path, xmls: dict[str, str], jpeg: bytes, extra_ids=(), images: dict[str, bytes] | None = None) -> str:
    """A VOC folder: trainval lists `xmls` (+ extra_ids), test one good image."""
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True)
    xmls = {**xmls, "t0": VOC_GOOD}
    for name, text in xmls.items():
        (root / "Annotations" / f"{name}.xml").write_text(text)
        (root / "JPEGImages" / f"{name}.jpg").write_bytes((images or {}).get(name, jpeg))
    (root / "ImageSets/Main/trainval.txt").write_text("\n".join([*list(xmls)[:-1], *extra_ids]) + "\n")
    (root / "ImageSets/Main/test.txt").write_text("t0\n")
    return str(root)


def _voc_xml(width="64", height="48", box=("11", "11", "30", "30")) -> str:
    return (f"<annotation><size><width>{width}</width><height>{height}</height></size><object><name>cell</name>"
            f"<bndbox><xmin>{box[0]}</xmin><ymin>{box[1]}</ymin><xmax>{box[2]}</xmax><ymax>{box[3]}</ymax></bndbox>"
            "</object></annotation>")


VOC_GOOD = _voc_xml()


def _coco(root: Path, jpeg: bytes, images: list, annotations: list, text: str | None = None) -> str:
    """A COCO folder: annotations/instances_{train,val}.json, train/ and val/ with 1.jpg 2.jpg 3.jpg."""
    for split in ("train", "val"):
        (root / split).mkdir(parents=True)
        for i in (1, 2, 3):
            (root / split / f"{i}.jpg").write_bytes(jpeg)
    (root / "annotations").mkdir()
    cats = [{"id": 1, "name": "cell"}]
    good = [{"id": i, "file_name": f"{i}.jpg", "width": 64, "height": 48} for i in (1, 2, 3)]
    anns = [{"id": i, "image_id": i, "category_id": 1, "bbox": [10, 10, 20, 20], "iscrowd": 0} for i in (1, 2, 3)]
    (root / "annotations" / "instances_val.json").write_text(json.dumps({"images": good, "annotations": anns,
                                                                         "categories": cats}))
    (root / "annotations" / "instances_train.json").write_text(text if text is not None else json.dumps(
        {"images": good + images, "annotations": anns + annotations, "categories": cats}))
    return str(root)


def make_hostile_inputs(data: Path, tmp: Path) -> dict[str, str]:
    """Issue 28's files: an image of 1 x 200,000 pixels (a few hundred bytes), VOC and COCO folders
    with hostile numbers, types and paths, a webdataset tar made with `tar cf x.tar .`, shards."""
    import io
    import shutil

    from PIL import Image

    long = tmp / "long"
    shutil.copytree(data, long)
    buf = io.BytesIO()
    Image.new("RGB", (1, 200_000)).save(buf, format="PNG")
    long_png = buf.getvalue()
    for split in ("train", "test"):
        (long / split / "cat" / "long.png").write_bytes(long_png)
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (180, 40, 40)).save(buf, format="JPEG")
    jpeg = buf.getvalue()
    (tmp / "secret.jpg").write_bytes(jpeg)
    bb = tmp / "r10w8.yaml"
    bb.write_text("model: {arch: resnet10, width: 8, stem: imagenet}\ndata: {image_size: 64}\n")
    dot = tmp / "dot_src"
    dot.mkdir()
    for p in sorted((data / "train" / "cat").glob("*.jpg")) + sorted((data / "train" / "airplane").glob("*.jpg")):
        (dot / f"{len(list(dot.iterdir())):03d}.jpg").write_bytes(p.read_bytes())
    subprocess.run(["tar", "cf", str(tmp / "dot.tar"), "."], cwd=dot, check=True)
    shards = tmp / "shards" / "s"
    res = subprocess.run([sys.executable, "-m", "mocolab", "shards", "--data", str(long / "train"), "--out",
                          str(shards), "--shard-size", "100"], capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"could not write the shards: {res.stderr[-2000:]}")
    vocs = tmp / "voc"
    return {
        "LONG": str(long), "BB": f"random:{bb}", "DOTTAR": str(tmp / "dot.tar"), "SHARDS": str(shards),
        "LONGSHARDS": f"{shards}-{{000000..000000}}.tar",
        "VOCINF": _voc(vocs / "inf", {"a": _voc_xml("inf", "1e999"), "b": VOC_GOOD}, jpeg),
        "VOCNAN": _voc(vocs / "nan", {"a": _voc_xml(box=("nan", "1", "1e999", "5")), "b": VOC_GOOD}, jpeg),
        "VOCID": _voc(vocs / "id", {"a": VOC_GOOD, "b": VOC_GOOD}, jpeg, extra_ids=["../nan/Annotations/a"]),
        "VOCLONG": _voc(vocs / "long", {"a": VOC_GOOD, "b": VOC_GOOD, "c": VOC_GOOD}, jpeg, images={"c": long_png}),
        "COCOINF": _coco(tmp / "coco_inf", jpeg, [{"id": float("inf"), "file_name": "1.jpg", "width": 64,
                                                   "height": float("inf")}], []),
        "COCOLIST": _coco(tmp / "coco_list", jpeg, [], [{"id": 9, "image_id": [1], "category_id": 1,
                                                         "bbox": [1, 1, 5, 5]}]),
        "COCOPATH": _coco(tmp / "coco_path", jpeg, [{"id": 7, "file_name": "../../secret.jpg", "width": 64,
                                                     "height": 48},
                                                    {"id": 8, "file_name": str(tmp / "secret.jpg"), "width": 64,
                                                     "height": 48}], []),
        "COCODUP": _coco(tmp / "coco_dup", jpeg, [{"id": 1, "file_name": "2.jpg", "width": 64, "height": 48}], []),
        "COCOCROWD": _coco(tmp / "coco_crowd", jpeg, [], [{"id": 9, "image_id": 1, "category_id": 1,
                                                           "bbox": [1, 1, 5, 5], "iscrowd": "no"}]),
        "COCOTORN": _coco(tmp / "coco_torn", jpeg, [], [], text='{"images": [{"id": 1, "file_na'),
    }


TINY_DETECT = ["--iters", "2", "task.train_sizes=[64]", "task.test_size=64", "task.max_size=96",
               "task.fpn_channels=8", "task.representation_size=16", "task.box_convs=1",
               "task.anchor_sizes=[8,16,32,64,128]", "task.rpn_pre_nms_train=20", "task.rpn_post_nms_train=10",
               "task.rpn_pre_nms_test=20", "task.rpn_post_nms_test=10", "task.rpn_batch_size=16",
               "task.roi_batch_size=8", "task.box_detections_per_img=10", "task.workers=0", "task.warmup_iters=1",
               "optim.batch_size=2", "optim.milestones=[]", "run.threads=1", "run.amp=off", "run.device=cpu"]


def D(data):  # a tiny detection fine-tuning of 2 iterations into a fresh folder
    return ["detect", "--backbone", "{BB}", "--data", data, "--out", "{NEW}", *TINY_DETECT]


def P(*argv):  # a pretraining into a fresh folder
    return ["pretrain", *argv]


# (name, argv, expected, text): expected "error" (exit 2, one `mocolab: error:` line holding text), "skip" (exit 0,
# a stderr line holding text) or "ok" (exit 0, text in the output: another tool's file read as it reads it).
# To add a case: a line here; a file it needs: make_inputs or make_hostile_inputs, named by a {PLACEHOLDER}.
CASES = [
    # paths and files
    ("data folder missing", P("--data", "{TMP}/missing", "--out", "{NEW}"), "error", "data folder not found"),
    ("data folder empty", P("--data", "{EMPTY}", "--out", "{NEW}"), "error", "no images found"),
    ("checkpoint missing", ["knn", "--checkpoint", "{TMP}/nope.pth", "--data", "{DATA}"], "error",
     "checkpoint not found"),
    ("empty folder as checkpoint", ["knn", "--checkpoint", "{EMPTY}", "--data", "{DATA}"], "error",
     "folder without backbone.pth"),
    ("text file as checkpoint", ["linear", "--checkpoint", "{TEXT}", "--data", "{DATA}"], "error",
     "is not a PyTorch checkpoint"),
    ("pickle with code as checkpoint", ["knn", "--checkpoint", "{CODE}", "--data", "{DATA}"], "error",
     "refused to load"),
    ("truncated checkpoint", ["export", "{TRUNCPTH}", "--format", "timm", "--out", "{TMP}/t.pth"], "error",
     "is not a PyTorch checkpoint"),
    ("system file as --resume", P("--data", "{DATA}", "--out", "{NEW}", "--resume", "/etc/passwd"), "error",
     "is not a PyTorch checkpoint"),
    ("export as --resume", P("--data", "{DATA}", "--out", "{NEW}", "--resume", "{EXPORT}"), "error",
     "not a mocolab training checkpoint"),
    ("text file as --backbone", ["detect", "--backbone", "{TEXT}", "--data", "{DATA}", "--out", "{NEW}"], "error",
     "is not a PyTorch checkpoint"),
    ("head features of an export", ["knn", "--checkpoint", "{EXPORT}", "--data", "{DATA}", "--features", "head"],
     "error", "needs a mocolab training checkpoint"),
    ("export over an existing file", ["export", "{RUN}", "--format", "timm", "--out", "{EXISTS}"], "error",
     "pass --overwrite"),
    ("a file as --out", P("--data", "{DATA}", "--out", "{AFILE}"), "error", "is a file"),
    # run folders
    ("pretrain into a finished run", P("--data", "{DATA}", "--out", "{RUN}", *TINY), "error", "already holds"),
    ("supervised into a pretraining run", ["supervised", "--data", "{DATA}", "--out", "{RUN}", *TINY], "error",
     "already holds"),
    ("supervised --resume of a pretraining run", ["supervised", "--data", "{DATA}", "--out", "{RUN}", "--resume",
                                                  "auto", *TINY], "error", "not a `mocolab supervised` run"),
    ("detect into a pretraining run", ["detect", "--backbone", "{RUN}", "--data", "{DATA}", "--out", "{RUN}"],
     "error", "already holds"),
    ("--resume with --overwrite", P("--data", "{DATA}", "--out", "{RUN}", "--resume", "auto", "--overwrite"),
     "error", "give one of them"),
    # presets and config keys / values
    ("unknown preset", P("--preset", "nope", "--data", "{DATA}", "--out", "{NEW}"), "error", "unknown preset"),
    ("invalid YAML preset", P("--preset", "{BADYAML}", "--data", "{DATA}", "--out", "{NEW}"), "error",
     "not valid YAML"),
    ("unknown key in a YAML preset", P("--preset", "{KEYYAML}", "--data", "{DATA}", "--out", "{NEW}"), "error",
     "unknown config key"),
    ("unknown override key", P("--data", "{DATA}", "--out", "{NEW}", "optim.lrr=1"), "error", "unknown config key"),
    ("override of the wrong type", P("--data", "{DATA}", "--out", "{NEW}", "optim.batch_size=abc"), "error",
     "not a valid int"),
    ("moco.m = 1", P("--data", "{DATA}", "--out", "{NEW}", "moco.m=1"), "error", "moco.m must lie in [0, 1)"),
    ("moco.T = 0", P("--data", "{DATA}", "--out", "{NEW}", "moco.T=0"), "error", "moco.T must be positive"),
    ("negative seed", P("--data", "{DATA}", "--out", "{NEW}", "run.seed=-1"), "error", "run.seed must be >= 0"),
    ("tiny image size", P("--data", "{DATA}", "--out", "{NEW}", "data.image_size=4"), "error",
     "data.image_size must be >= 8"),
    ("NaN learning rate", P("--data", "{DATA}", "--out", "{NEW}", "optim.lr=nan"), "error",
     "optim.lr must be positive"),
    ("negative workers", P("--data", "{DATA}", "--out", "{NEW}", "data.workers=-1"), "error",
     "data.workers and data.limit must be >= 0"),
    ("queue smaller than the batch", P("--data", "{DATA}", "--out", "{NEW}", "optim.batch_size=64",
                                       "moco.queue_size=32"), "error", "is smaller than the keys enqueued"),
    ("BN groups of one image", P("--data", "{DATA}", "--out", "{NEW}", "optim.batch_size=8", "model.bn_splits=8",
                                 "moco.queue_size=32"), "error", "BN groups of fewer than 2 images"),
    # command-line numbers
    ("negative budget", P("--data", "{DATA}", "--out", "{NEW}", "--budget-minutes", "-3"), "error",
     "--budget-minutes must be positive"),
    ("zero budget", P("--data", "{DATA}", "--out", "{NEW}", "--budget-minutes", "0"), "error",
     "--budget-minutes must be positive"),
    ("zero epochs", P("--data", "{DATA}", "--out", "{NEW}", "--epochs", "0"), "error", "--epochs must be positive"),
    ("zero batch size", P("--data", "{DATA}", "--out", "{NEW}", "--batch-size", "0"), "error",
     "--batch-size must be positive"),
    ("kNN k = 0", ["knn", "--checkpoint", "{RUN}", "--data", "{DATA}", "--k", "0"], "error", "--k must be positive"),
    ("kNN image size 4", ["knn", "--checkpoint", "{RUN}", "--data", "{DATA}", "--image-size", "4"], "error",
     "--image-size must be >= 8"),
    ("negative eval seed", ["linear", "--random-init", "cifar10_cpu", "--data", "{DATA}", "--seed", "-1"], "error",
     "--seed must be >= 0"),
    ("label fraction 0", ["finetune", "--checkpoint", "{RUN}", "--data", "{DATA}", "--label-fraction", "0"],
     "error", "a label fraction must lie in (0, 1]"),
    ("label fraction 1.5", ["compare", "{RUN}", "--data", "{DATA}", "--out", "{NEW}", "--fractions", "1.5"],
     "error", "a label fraction must lie in (0, 1]"),
    ("detect iters 0", ["detect", "--backbone", "{RUN}", "--data", "{DATA}", "--out", "{NEW}", "--iters", "0"],
     "error", "--iters must be positive"),
    ("negative transfer seeds", ["compare", "{RUN}", "--data", "{DATA}", "--out", "{NEW}", "--seeds", "-1"],
     "error", "seeds >= 0"),
    ("shard size 0", ["shards", "--data", "{DATA}", "--out", "{NEW}/s", "--shard-size", "0"], "error",
     "--shard-size must be positive"),
    ("sweep budget 0", ["sweep", "--data", "{DATA}", "--out", "{NEW}", "--grid", "moco.m=0.9,0.99",
                        "--budget-minutes", "0"], "error", "--budget-minutes must be positive"),
    # data contents
    ("a corrupt JPEG among the images", P("--data", "{CORRUPT}", "--out", "{NEW}", *TINY), "skip",
     "warning: skipped unreadable image"),
    ("a truncated JPEG among the images", P("--data", "{TRUNCATED}", "--out", "{NEW}", *TINY), "skip",
     "warning: skipped unreadable image"),
    ("supervised on unlabeled images", ["supervised", "--data", "{FLAT}", "--out", "{NEW}", *TINY], "error",
     "needs a labeled train split"),
    ("kNN on unlabeled images", ["knn", "--checkpoint", "{RUN}", "--data", "{FLAT}"], "error",
     "needs labeled"),
    ("batch larger than the dataset", P("--data", "{DATA}", "--out", "{NEW}", "--epochs", "1", "model.width=8",
                                        "optim.batch_size=64", "moco.queue_size=64"), "error",
     "is larger than the dataset"),
    ("a diverging learning rate (NaN loss)", P("--data", "{FLAT}", "--out", "{NEW}", *TINY, "optim.lr=1e30"),
     "error", "loss became nan"),
    ("NaN losses, skipped as asked", P("--data", "{FLAT}", "--out", "{NEW}", *TINY, "optim.lr=1e30",
                                       "run.skip_nonfinite=100"), "skip", "warning: skipped"),
    ("unlabeled data for kNN during pretraining", P("--data", "{FLAT}", "--out", "{NEW}", *TINY), "skip",
     "kNN skipped"),
    # hostile files (issue 28): sizes from the header, annotation numbers, types and paths, other tools' shards
    ("a 1 x 200,000 PNG among the images", P("--data", "{LONG}", "--out", "{NEW}", *TINY), "skip",
     "too elongated to decode"),
    ("a 1 x 200,000 PNG in streamed kNN", ["knn", "--checkpoint", "{RUN}", "--data", "{LONG}", "--stream", "on"],
     "skip", "too elongated to decode"),
    ("a 1 x 200,000 PNG in the pil backend", P("--data", "{LONG}", "--out", "{NEW}", *TINY, "data.backend=pil",
                                               "data.cache=false"), "skip", "too elongated to decode"),
    ("a 1 x 200,000 PNG in shards", P("--data", "{LONGSHARDS}", "--out", "{NEW}", *TINY), "skip",
     "too elongated to decode"),
    ("a 1 x 200,000 image in a VOC folder", D("{VOCLONG}"), "skip", "too elongated to decode"),
    ("VOC width inf, height 1e999", D("{VOCINF}"), "skip", "unusable <size>"),
    ("VOC box coordinates NaN and 1e999", D("{VOCNAN}"), "skip", "without a name or a finite numeric bndbox"),
    ("VOC image id with ../", D("{VOCID}"), "skip", "an image id must be a plain file name"),
    ("COCO Infinity id and size", D("{COCOINF}"), "skip", "malformed (id, width and height must be integers"),
    ("COCO image_id given as a list", D("{COCOLIST}"), "skip", "without an integer image_id"),
    ("COCO file_name absolute or ../", D("{COCOPATH}"), "skip", "leaves the image folder (not read)"),
    ("COCO duplicate image id", D("{COCODUP}"), "skip", "with a duplicate id"),
    ("COCO iscrowd 'no'", D("{COCOCROWD}"), "skip", "iscrowd value other than 0 or 1"),
    ("COCO file torn mid-way", D("{COCOTORN}"), "error", "not a readable COCO JSON file"),
    ("a tar made with `tar cf x.tar .`", P("--data", "{DOTTAR}", "--out", "{NEW}", *TINY), "ok", ""),
    ("shards over existing shards", ["shards", "--data", "{LONG}/train", "--out", "{SHARDS}"], "error",
     "pass --overwrite"),
    # limits and temperatures (issue 28)
    ("queue over memory", P("--data", "{DATA}", "--out", "{NEW}", "moco.queue_size=1e9"), "error",
     "for the logits batch x (1+K)"),
    ("image size over memory", P("--data", "{DATA}", "--out", "{NEW}", "data.image_size=100000"), "error",
     "needs at least"),
    ("temperature 1e-30", P("--data", "{DATA}", "--out", "{NEW}", "moco.T=1e-30"), "error",
     "moco.T=1e-30 is below 0.0001"),
    ("monitor temperature 1e-5", P("--data", "{DATA}", "--out", "{NEW}", "run.knn_t=1e-5"), "error",
     "run.knn_t=1e-05 is below 0.0001"),
    ("kNN t 1e-5", ["knn", "--checkpoint", "{RUN}", "--data", "{DATA}", "--t", "1e-5"], "error",
     "--t=1e-05 is below 0.0001"),
    ("kNN image size over memory", ["knn", "--checkpoint", "{RUN}", "--data", "{DATA}", "--image-size", "100000"],
     "error", "--image-size 100000 needs at least"),
    # run folders (issue 28)
    ("--out '' (empty)", P("--data", "{DATA}", "--out", "", *TINY), "error", "--out is empty"),
    ("--out . with --overwrite", P("--data", "{DATA}", "--out", ".", "--overwrite", *TINY), "error",
     "is the current folder"),
    ("--out .. (a parent of the current folder)", P("--data", "{DATA}", "--out", "..", *TINY), "error",
     "is a parent of the current folder"),
    # continued pretraining (issue 27)
    ("--init of another architecture", P("--data", "{DATA}", "--out", "{NEW}", "--init", "{RUN}", *TINY,
                                         "model.width=16"), "error", "backbone but this run trains a"),
    # torn or hand-edited run files, user names as plain text (issue 28)
    ("run files: a torn backbone.json beside the weights", ["knn", "--checkpoint", "{TORN}/backbone.pth", "--data",
                                                           "{DATA}"], "error", "backbone.json"),
    ("run files: report of a torn summary and metrics lines without step", ["report", "{TORN}", "--data", "{DATA}",
                                                                        "--out", "{NEW}", "--curves-only"],
     "skip", "skipped"),
    ("run files: report of class folders named $\\bogus$ and $5-$10", ["report", "{RUN}", "--data", "{DOLLARS}",
                                                                     "--out", "{NEW}", "--map-points", "8",
                                                                     "--queries", "2", "--neighbours", "2"],
     "ok", ""),
    ("--init from a missing file", P("--data", "{DATA}", "--out", "{NEW}", "--init", "{TMP}/nope.pth", *TINY),
     "error", "not found"),
]


def classify(res: subprocess.CompletedProcess, expected: str, text: str) -> str:
    err = res.stderr
    if "Traceback" in err:
        return "traceback"
    errors = [line for line in err.splitlines() if line.startswith("mocolab: error:")]
    if expected == "error":
        if res.returncode == 0:
            return "silent acceptance"
        if res.returncode == 2 and len(errors) == 1 and text in errors[0]:
            return "one-line error"
        return "other"
    if expected == "ok":  # a file other tools make, read as they read it
        return "read correctly" if res.returncode == 0 and text in res.stdout + err else "other"
    if res.returncode == 0 and any(text in line for line in err.replace("\r", "\n").splitlines()):
        return "documented skip"
    return "silent acceptance" if res.returncode == 0 else "other"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cifar10"),
                    help="CIFAR-10 as JPEG folders (train/ test/ with class folders); a few images are copied")
    ap.add_argument("--only", help="run the cases whose name contains this word")
    ap.add_argument("--json", help="write the outcomes here")
    args = ap.parse_args()
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
               CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    counts = dict.fromkeys(("one-line error", "documented skip", "read correctly", "traceback", "silent acceptance",
                            "other"), 0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ.update(env)
        os.environ["MOCOLAB_CACHE"] = str(tmp / "cache")
        places = make_inputs(Path(args.data), tmp)
        cases = [c for c in CASES if not args.only or args.only in c[0]]
        for i, (name, argv, expected, text) in enumerate(cases):
            places["NEW"] = str(tmp / f"new{i}")
            cmd = [a.format(**places) for a in argv]
            t0 = time.perf_counter()
            res = subprocess.run([sys.executable, "-m", "mocolab", *cmd], capture_output=True, text=True,
                                 timeout=600, cwd=tmp)
            outcome = classify(res, expected, text)
            counts[outcome] += 1
            lines = res.stderr.replace("\r", "\n").splitlines()
            said = [line for line in lines if line.startswith("mocolab: error:") or text in line]
            shown = said[0] if said else (lines or [""])[-1]
            print(f"{outcome:17s} {name:42s} {shown[:110]}  ({time.perf_counter() - t0:.1f}s)", flush=True)
            rows.append({"case": name, "argv": argv, "expected": expected, "outcome": outcome,
                         "exit": res.returncode, "message": shown})
    good = counts["one-line error"] + counts["documented skip"] + counts["read correctly"]
    bad = len(rows) - good
    print(f"{len(rows)} bad inputs: {counts['one-line error']} one-line errors, {counts['documented skip']} "
          f"documented skips, {counts['read correctly']} read correctly; {counts['traceback']} tracebacks, "
          f"{counts['silent acceptance']} silent acceptances, "
          f"{counts['other']} other (goal: 0)")
    if args.json:
        Path(args.json).write_text(json.dumps({"counts": counts, "cases": rows}, indent=2))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
