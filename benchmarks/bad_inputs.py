"""The catalogue of bad inputs, run against the command line: each must give a one-line error
(exit 2, one `mocolab: error:` line saying what is wrong, no traceback) or a documented skip
(exit 0 with its `warning: skipped ...` line), or, for a file another tool makes (a webdataset tar
made with `tar cf`) or a run folder whose lock holder was killed, read correctly (exit 0), or, with
stdout closed early (`| head -n 0`), a quiet stop (exit 0 or 141); never a traceback or a silent
acceptance. A run folder held by another process (a live `lock_run_dir` holder) must be refused in
one line naming the holder's PID and host.

    python benchmarks/bad_inputs.py --data ../shared/data/cifar10 [--only WORD ...] [--json bad_inputs.json]

Tiny data (a few CIFAR-10 JPEGs per class) and a tiny finished run are made in a temporary
folder; each case is one `python -m mocolab ...` process (a few seconds each, one thread).
It prints a line per case and the counts: one-line errors, documented skips, read correctly,
stopped quietly, tracebacks, silent acceptances, other (goal: the last three 0); exit status 1 if any
of those is not 0.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import signal
import socket
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
    tornsweep = tmp / "tornsweep"  # a sweep folder whose sweep.json was cut mid-way
    tornsweep.mkdir()
    (tornsweep / "sweep.json").write_text('{"preset": "cifar10_c')
    # class folders named like matplotlib's mathtext
    dollars = tmp / "dollars"
    for split in ("train", "test"):
        for old, new in (("airplane", "$\\bogus$"), ("cat", "$5-$10")):
            shutil.copytree(data / split / old, dollars / split / new)
    return make_hostile_inputs(data, tmp) | {"TORN": str(torn), "DOLLARS": str(dollars), "TORNSWEEP": str(tornsweep),
            "DATA": str(data), "CORRUPT": str(corrupt), "TRUNCATED": str(truncated), "FLAT": str(flat),
            "EMPTY": str(tmp / "empty"), "TEXT": str(tmp / "text.pth"), "CODE": str(tmp / "code.pth"),
            "TRUNCPTH": str(tmp / "truncated.pth"), "BADYAML": str(tmp / "bad.yaml"),
            "KEYYAML": str(tmp / "unknown_key.yaml"), "AFILE": str(tmp / "a_file"), "RUN": str(run),
            "EXPORT": str(run / "backbone.pth"), "EXISTS": str(tmp / "exists.pth"), "TMP": str(tmp)}


# a process that takes a run folder's lock (mocolab.runtime.lock_run_dir, as every run does) and holds it
HOLD = ("import sys, time; from mocolab.runtime import lock_run_dir; lock_run_dir(sys.argv[1]); "
        "print('locked', flush=True); time.sleep(3600)")


def hold_lock(folder: Path) -> subprocess.Popen:
    """A process holding `folder`'s run lock, started and waited for until it holds it."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    if proc.stdout.readline().strip() != "locked":
        proc.kill()
        sys.exit(f"the lock holder did not start: {proc.communicate()[1][-2000:]}")
    return proc


def make_held_inputs(tmp: Path, holders: list[subprocess.Popen]) -> dict[str, str]:
    """Run folders and another process (issue 28): HELD, whose lock a live process holds (HOLDER: its
    `PID N on host H`, which the error must name); KILLED, whose holder was killed with kill -9 after
    taking the lock (its .lock file stays behind, naming the dead PID: the lock itself must not)."""
    held = hold_lock(tmp / "held")
    holders.append(held)
    killed = hold_lock(tmp / "killed")
    killed.send_signal(signal.SIGKILL)  # no handler runs: only the OS can release the lock
    killed.communicate(timeout=60)
    if f"PID {killed.pid} " not in (tmp / "killed" / ".lock").read_text():
        sys.exit("the killed holder's .lock file does not name it")
    return {"HELD": str(tmp / "held"), "HOLDER": f"PID {held.pid} on host {socket.gethostname()}",
            "KILLED": str(tmp / "killed")}


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


BUSY = "is in use by another mocolab process ({HOLDER})"  # the live holder's PID and host

# (name, argv, expected, text): expected "error" (exit 2, one `mocolab: error:` line holding text), "skip" (exit 0,
# a stderr line holding text), "ok" (exit 0, text in the output: another tool's file read as it reads it) or
# "quiet" (stdout closed before anything is read: exit 0 or 141, no traceback, no error). argv may start with
# NAME=VALUE environment settings and end with `| head -n 0` (stdout closed at once), as in a shell.
# To add a case: a line here; a file it needs: make_inputs or make_hostile_inputs, named by a {PLACEHOLDER}
# (in argv and text alike).
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
    ("run files: a sweep folder with a torn sweep.json", ["sweep", "--data", "{DATA}", "--out", "{TORNSWEEP}",
                                                          "--grid", "moco.m=0.9", "--epochs", "1", "--no-linear",
                                                          "--knn-every", "0", "--set", *TINY[2:]],
     "error", "sweep.json"),
    # two processes at once (issue 28): a folder whose run lock another process holds, one whose holder was killed
    ("held run folder: pretrain --resume auto", P("--data", "{DATA}", "--out", "{HELD}", "--resume", "auto", *TINY),
     "error", BUSY),
    ("held run folder: pretrain --overwrite", P("--data", "{DATA}", "--out", "{HELD}", "--overwrite", *TINY),
     "error", BUSY),
    ("held run folder: supervised", ["supervised", "--data", "{DATA}", "--out", "{HELD}", *TINY], "error", BUSY),
    ("held run folder: detect --resume auto", ["detect", "--backbone", "{BB}", "--data", "{VOCINF}", "--out",
                                               "{HELD}", "--resume", "auto", *TINY_DETECT], "error", BUSY),
    ("held run folder: compare --out", ["compare", "{RUN}", "--data", "{DATA}", "--out", "{HELD}"], "error", BUSY),
    ("held run folder: report --out", ["report", "{RUN}", "--data", "{DATA}", "--out", "{HELD}", "--curves-only"],
     "error", BUSY),
    ("held run folder: sweep --out", ["sweep", "--data", "{DATA}", "--out", "{HELD}", "--grid", "moco.m=0.9",
                                      "--epochs", "1", "--no-linear", "--knn-every", "0", "--set", *TINY[2:]],
     "error", BUSY),
    ("run folder whose holder was killed with kill -9", P("--data", "{DATA}", "--out", "{KILLED}", "--resume", "auto",
                                                          *TINY), "ok", "done:"),
    # stdout closed early (`mocolab ... | head`): the reader has what it asked for, the command stops quietly
    ("stdout closed (| head -n 0), lines written at once", ["PYTHONUNBUFFERED=1", "sweep", "--data", "{DATA}",
                                                            "--out", "{NEW}", "--grid", "moco.m=0.9,0.99",
                                                            "--dry-run", "|", "head", "-n", "0"], "quiet", ""),
    ("stdout closed (| head -n 0), written at the exit", ["presets", "|", "head", "-n", "0"], "quiet", ""),
]


def classify(res: subprocess.CompletedProcess, expected: str, text: str) -> str:
    err = res.stderr
    if "Traceback" in err or "Exception ignored" in err:  # the latter: an exception at the exit (a flush)
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
    if expected == "quiet":  # 141: 128 + SIGPIPE, as a shell reports a command that `head` stopped
        quiet = res.returncode in (0, 141) and not errors and "BrokenPipeError" not in err
        return "stopped quietly" if quiet else "other"
    if res.returncode == 0 and any(text in line for line in err.replace("\r", "\n").splitlines()):
        return "documented skip"
    return "silent acceptance" if res.returncode == 0 else "other"


def run_case(cmd: list[str], cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    """`python -m mocolab CMD` -> its outcome; leading NAME=VALUE items set the environment, a trailing
    `| head -n 0` closes its stdout at once (before it writes), as `mocolab ... | head -n 0` does."""
    env = dict(os.environ)
    while cmd and "=" in cmd[0] and cmd[0].split("=")[0].isupper():
        name, value = cmd.pop(0).split("=", 1)
        env[name] = value
    argv = [sys.executable, "-m", "mocolab", *cmd]
    if "|" not in cmd:
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env)
        except subprocess.TimeoutExpired as e:  # an outcome ("other"), not the end of the catalogue
            err = e.stderr.decode("utf-8", "replace") if isinstance(e.stderr, bytes) else e.stderr or ""
            return subprocess.CompletedProcess(argv, -9, "", f"{err}\ntimed out after {timeout} s")
    if cmd[cmd.index("|"):] != ["|", "head", "-n", "0"]:
        raise ValueError(f"only `| head -n 0` is known: {cmd}")
    argv = argv[: argv.index("|")]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd, env=env)
    proc.stdout.close()  # head -n 0: reads nothing, exits
    err = proc.stderr.read()
    return subprocess.CompletedProcess(argv, proc.wait(timeout=timeout), "", err)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cifar10"),
                    help="CIFAR-10 as JPEG folders (train/ test/ with class folders); a few images are copied")
    ap.add_argument("--only", nargs="+", metavar="WORD", help="run the cases whose name contains one of these words")
    ap.add_argument("--json", help="write the outcomes here")
    args = ap.parse_args()
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
               CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    counts = dict.fromkeys(("one-line error", "documented skip", "read correctly", "stopped quietly", "traceback",
                            "silent acceptance", "other"), 0)
    rows = []
    holders: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ.update(env)
        os.environ["MOCOLAB_CACHE"] = str(tmp / "cache")
        try:
            places = make_inputs(Path(args.data), tmp) | make_held_inputs(tmp, holders)
            rows = run_cases(args, tmp, places, counts)
        finally:
            for proc in holders:  # kill -9: the OS releases their locks
                proc.kill()
                proc.communicate(timeout=60)
    good = counts["one-line error"] + counts["documented skip"] + counts["read correctly"] + counts["stopped quietly"]
    bad = len(rows) - good
    print(f"{len(rows)} bad inputs: {counts['one-line error']} one-line errors, {counts['documented skip']} "
          f"documented skips, {counts['read correctly']} read correctly, {counts['stopped quietly']} stopped quietly; "
          f"{counts['traceback']} tracebacks, {counts['silent acceptance']} silent acceptances, "
          f"{counts['other']} other (goal: 0)")
    if args.json:
        Path(args.json).write_text(json.dumps({"counts": counts, "cases": rows}, indent=2))
    return 1 if bad else 0


def run_cases(args, tmp: Path, places: dict[str, str], counts: dict[str, int]) -> list[dict]:
    """Runs the cases (--only: those whose name holds one of the words), printing a line each -> their rows."""
    rows = []
    cases = [c for c in CASES if not args.only or any(word in c[0] for word in args.only)]
    for i, (name, argv, expected, text) in enumerate(cases):
        places["NEW"] = str(tmp / f"new{i}")
        cmd = [a.format(**places) for a in argv]
        text = text.format(**places) if "{" in text else text
        t0 = time.perf_counter()
        res = run_case(cmd, tmp)
        outcome = classify(res, expected, text)
        counts[outcome] += 1
        lines = res.stderr.replace("\r", "\n").splitlines()
        said = [line for line in lines if line.startswith("mocolab: error:") or (text and text in line)]
        shown = said[0] if said else (lines or [f"exit {res.returncode}"])[-1]
        print(f"{outcome:17s} {name:42s} {shown[:110]}  ({time.perf_counter() - t0:.1f}s)", flush=True)
        rows.append({"case": name, "argv": argv, "expected": expected, "outcome": outcome,
                     "exit": res.returncode, "message": shown})
    return rows


if __name__ == "__main__":
    sys.exit(main())
