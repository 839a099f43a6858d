"""A seeded fuzz pass over the detection annotation loaders (issue 28): N VOC XML files and N COCO
JSON files, each a well-formed document with 1 to 3 mutations (numbers: inf, NaN, 1e999, huge,
negative, fractional; types: strings, lists, objects, booleans, null; missing and extra fields;
duplicated entries and ids; hostile file names; truncated or undecodable text).

1. Loaders: every file goes through its loader (mocolab.transfer.voc.load_voc on a split that
   lists it alone; mocolab.transfer.coco.load_coco). Outcomes: loaded, loaded with warnings, one-line
   DataError (the whole file unusable), or an exception of any other kind (a traceback through the
   CLI: the goal is 0).
2. `mocolab detect --iters 2`: the N VOC files in one VOC folder (the first half as trainval, the
   second as test), and a seeded sample of --detect-coco COCO files, one `detect` each (the train
   JSON mutated, val a good one). Outcomes: exit 0, one-line error (exit 2, one `mocolab: error:`
   line), or anything else (a traceback, another exit status: the goal is 0). The COCO runs go
   --per-process at a time through mocolab.cli.main in one worker process (the CLI's parsing and
   error handling as `python -m mocolab` runs them, stdout/stderr caught at the file descriptors,
   fresh warning filters each), so the ~3 s start-up (torch's import) is paid once a batch;
   --per-process 0 runs one `python -m mocolab detect` each, as the VOC run always does.

  OMP_NUM_THREADS=1 nice python benchmarks/fuzz_annotations.py --n 500 --detect-coco 500 --seed 0

Exit status 1 when any traceback or other outcome was seen; --keep DIR keeps the files.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

HOSTILE_NUMBERS = ["inf", "-inf", "nan", "NaN", "1e999", "-1e999", "1e308", "-5", "0", "1.5", "2.5e3",
                   "99999999999999999999999", "1_000", " 12 ", "\u0663\u0662", "\uff11\uff12", "0x10", "+7",
                   "1e-320", "-0"]
HOSTILE_TEXT = ["", " ", "abc", "[1, 2]", "{}", "true", "None", "null", "\u00e9\u00e8", "x" * 5000, "&lt;b&gt;"]
JSON_NUMBERS = [float("inf"), float("-inf"), float("nan"), 10**400, -(10**400), 2**63, 2**64, -1, 0, 1.5, -0.0,
                1e308, 5e-324, True, False]
JSON_OTHERS = [None, "1", "abc", "", [], [1], [1, 2, 3, 4, 5], {}, {"a": 1}, "../x.jpg", "/etc/passwd", [[1]],
               "x" * 300, "a/../../b.jpg", "\u0000", "C:\\\\x.jpg", "x" * 5000]
TINY_DETECT = ["task.train_sizes=[64]", "task.test_size=64", "task.max_size=96", "task.fpn_channels=8",
               "task.representation_size=16", "task.box_convs=1", "task.anchor_sizes=[8,16,32,64,128]",
               "task.rpn_pre_nms_train=20", "task.rpn_post_nms_train=10", "task.rpn_pre_nms_test=20",
               "task.rpn_post_nms_test=10", "task.rpn_batch_size=16", "task.roi_batch_size=8",
               "task.box_detections_per_img=10", "task.workers=0", "task.warmup_iters=1", "optim.batch_size=2",
               "optim.milestones=[]", "run.threads=1", "run.log_every=1", "run.amp=off", "run.device=cpu",
               "task.eval_batch=8"]
CLASSES = ["RBC", "WBC", "Platelets"]


# ---- VOC ---------------------------------------------------------------------------------


def voc_document(rng: random.Random) -> ET.Element:
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "JPEGImages"
    ET.SubElement(root, "filename").text = "x.jpg"
    size = ET.SubElement(root, "size")
    for k, v in (("width", 64), ("height", 48), ("depth", 3)):
        ET.SubElement(size, k).text = str(v)
    ET.SubElement(root, "segmented").text = "0"
    for _ in range(rng.randint(1, 4)):
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = rng.choice(CLASSES)
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = "0"
        ET.SubElement(obj, "difficult").text = str(rng.randint(0, 1))
        box = ET.SubElement(obj, "bndbox")
        x1, y1 = rng.randint(1, 40), rng.randint(1, 30)
        for k, v in (("xmin", x1), ("ymin", y1), ("xmax", x1 + rng.randint(1, 30)), ("ymax", y1 + rng.randint(1, 20))):
            ET.SubElement(box, k).text = str(v)
    return root


def _elements(root: ET.Element) -> list[tuple[ET.Element, ET.Element]]:
    """(parent, child) for every element below the root."""
    return [(p, c) for p in root.iter() for c in p]


def mutate_voc(root: ET.Element, rng: random.Random) -> tuple[str, list[str]]:
    """-> (the XML text, the mutations applied)."""
    done = []
    for _ in range(rng.randint(1, 3)):
        kind = rng.choice(["number", "type", "missing", "extra", "duplicate", "nested", "name", "attribute"])
        pairs = _elements(root)
        numeric = [c for _, c in pairs if c.tag in ("width", "height", "depth", "xmin", "ymin", "xmax", "ymax",
                                                      "difficult", "truncated", "segmented")]
        if kind == "number" and numeric:
            rng.choice(numeric).text = rng.choice(HOSTILE_NUMBERS)
        elif kind == "type" and numeric:
            rng.choice(numeric).text = rng.choice(HOSTILE_TEXT)
        elif kind == "missing" and pairs:
            parent, child = rng.choice(pairs)
            parent.remove(child)
        elif kind == "extra":
            parent = rng.choice([root] + [c for _, c in pairs])
            ET.SubElement(parent, rng.choice(["extra", "object", "bndbox", "size", "name", "xmin"])).text = \
                rng.choice(HOSTILE_NUMBERS + HOSTILE_TEXT)
        elif kind == "duplicate" and pairs:
            parent, child = rng.choice(pairs)
            parent.append(copy.deepcopy(child))
        elif kind == "nested" and numeric:
            el = rng.choice(numeric)
            el.text = None
            ET.SubElement(el, "value").text = "3"
        elif kind == "name":
            names = [c for _, c in pairs if c.tag == "name"]
            if names:
                rng.choice(names).text = rng.choice(HOSTILE_TEXT + ["cell", "RBC RBC", "\u2603"])
        elif kind == "attribute" and pairs:
            rng.choice(pairs)[1].set("type", rng.choice(HOSTILE_TEXT[:5]))
        else:
            continue
        done.append(kind)
    text = ET.tostring(root, encoding="unicode")
    if rng.random() < 0.15:  # text-level damage
        how = rng.choice(["truncate", "encoding", "garbage", "empty", "root"])
        done.append(f"text:{how}")
        if how == "truncate":
            text = text[: rng.randint(0, len(text))]
        elif how == "encoding":
            enc = rng.choice(["latin-1", "utf-16", "nonexistent", "ebcdic"])
            text = f'<?xml version="1.0" encoding="{enc}"?>' + text
        elif how == "garbage":
            i = rng.randint(0, len(text))
            text = text[:i] + rng.choice(["\x00", "\x01", "&bogus;", "<", "]]>", "\ud800"]) + text[i:]
        elif how == "empty":
            text = ""
        else:
            text = text.replace("annotation", rng.choice(["root", "annotations", "x"]))
    return text, done


def write_text(path: Path, text: str) -> None:
    path.write_bytes(text.encode("utf-8", errors="surrogatepass"))


def fuzz_voc(root: Path, n: int, rng: random.Random, jpeg: bytes) -> list[tuple[str, list[str]]]:
    """n mutated VOC files in one VOC folder; each alone in split f<i>.txt."""
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True)
    out = []
    for i in range(n):
        name = f"{i:04d}"
        text, done = mutate_voc(voc_document(rng), rng)
        write_text(root / "Annotations" / f"{name}.xml", text)
        (root / "JPEGImages" / f"{name}.jpg").write_bytes(jpeg)
        (root / "ImageSets" / "Main" / f"f{name}.txt").write_text(name + "\n")
        out.append((name, done))
    names = [name for name, _ in out]
    (root / "ImageSets" / "Main" / "trainval.txt").write_text("\n".join(names[: n // 2]) + "\n")
    (root / "ImageSets" / "Main" / "test.txt").write_text("\n".join(names[n // 2:]) + "\n")
    return out


# ---- COCO --------------------------------------------------------------------------------


def coco_document(rng: random.Random, n_images: int = 3) -> dict:
    images = [{"id": i, "file_name": f"{i}.jpg", "width": 64, "height": 48, "license": 1}
              for i in range(1, n_images + 1)]
    anns = []
    for im in images:
        for _ in range(rng.randint(0, 3)):
            x, y = rng.randint(0, 40), rng.randint(0, 30)
            w, h = rng.randint(1, 30), rng.randint(1, 20)
            anns.append({"id": len(anns) + 1, "image_id": im["id"], "category_id": rng.randint(1, 3),
                         "bbox": [x, y, w, h], "area": w * h, "iscrowd": rng.choice([0, 0, 0, 1]), "segmentation": []})
    cats = [{"id": i, "name": c, "supercategory": "cell"} for i, c in enumerate(CLASSES, 1)]
    return {"info": {"year": 2026}, "images": images, "annotations": anns, "categories": cats}


def _slots(d) -> list[tuple[object, object]]:
    """(container, key or index) for every value below d."""
    out = []
    stack = [d]
    while stack:
        c = stack.pop()
        items = c.items() if isinstance(c, dict) else enumerate(c) if isinstance(c, list) else []
        for k, v in items:
            out.append((c, k))
            if isinstance(v, dict | list):
                stack.append(v)
    return out


def _list(d: dict, key: str) -> list:
    return d[key] if isinstance(d.get(key), list) else []


def mutate_coco(d: dict, rng: random.Random) -> tuple[str, list[str]]:
    done = []
    for _ in range(rng.randint(1, 3)):
        kind = rng.choice(["number", "number", "type", "missing", "extra", "duplicate", "path", "iscrowd"])
        slots = _slots(d)
        numeric = [(c, k) for c, k in slots if isinstance(c[k], int | float) and not isinstance(c[k], bool)]
        if kind == "number" and numeric:
            c, k = rng.choice(numeric)
            c[k] = rng.choice(JSON_NUMBERS)
        elif kind == "type" and slots:
            c, k = rng.choice(slots)
            c[k] = copy.deepcopy(rng.choice(JSON_OTHERS + JSON_NUMBERS))  # never a shared list
        elif kind == "missing" and slots:
            c, k = rng.choice(slots)
            del c[k]
        elif kind == "extra":
            dicts = [d] + [c[k] for c, k in slots if isinstance(c[k], dict)]
            rng.choice(dicts)[rng.choice(["extra", "id", "bbox", "image_id", "file_name", "iscrowd"])] = \
                copy.deepcopy(rng.choice(JSON_OTHERS + JSON_NUMBERS))
        elif kind == "duplicate":
            lists = [c[k] for c, k in slots if isinstance(c[k], list) and c[k]]
            if lists:
                lst = rng.choice(lists)
                lst.append(copy.deepcopy(rng.choice(lst)))
        elif kind == "path":
            images = [im for im in _list(d, "images") if isinstance(im, dict)]
            if images:
                rng.choice(images)["file_name"] = rng.choice(["../1.jpg", "/etc/passwd", "a/../../1.jpg", "", ".",
                                                              "1.jpg/", "\u0000.jpg", "x" * 5000, "..\\\\1.jpg",
                                                              "train/../1.jpg", "~/1.jpg"])
        elif kind == "iscrowd":
            anns = [a for a in _list(d, "annotations") if isinstance(a, dict)]
            if anns:
                rng.choice(anns)["iscrowd"] = rng.choice(["no", "yes", 2, -1, 0.5, None, [0], True, "0"])
        else:
            continue
        done.append(kind)
    text = json.dumps(d)  # NaN / Infinity written as JavaScript does, as Python's json reads them
    if rng.random() < 0.1:
        how = rng.choice(["truncate", "deep", "list", "garbage"])
        done.append(f"text:{how}")
        if how == "truncate":
            text = text[: rng.randint(0, len(text))]
        elif how == "deep":
            text = '{"images": ' + "[" * 100_000 + "]" * 100_000 + ', "categories": []}'
        elif how == "list":
            text = f"[{text}]"
        else:
            i = rng.randint(0, len(text))
            text = text[:i] + rng.choice(["\x00", "\ud800", "}", "\\", '"']) + text[i:]
    return text, done


def fuzz_coco(root: Path, n: int, rng: random.Random, jpeg: bytes) -> list[tuple[str, list[str]]]:
    """n mutated instances_<i>.json beside train/{1,2,3}.jpg, and a good val."""
    (root / "train").mkdir(parents=True)
    (root / "val").mkdir()
    for i in (1, 2, 3):
        (root / "train" / f"{i}.jpg").write_bytes(jpeg)
        (root / "val" / f"{i}.jpg").write_bytes(jpeg)
    (root / "x.jpg").write_bytes(jpeg)  # outside the image folders: never to be read
    (root / "good_val.json").write_text(json.dumps(coco_document(random.Random(0))))
    out = []
    for i in range(n):
        text, done = mutate_coco(coco_document(rng), rng)
        write_text(root / f"instances_{i:04d}.json", text)
        out.append((f"instances_{i:04d}.json", done))
    return out


# ---- running -----------------------------------------------------------------------------


def load_outcome(fn, *args) -> tuple[str, str]:
    """-> (outcome, detail): loaded | warned | one-line error | traceback."""
    from mocolab.data import DataError

    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        try:
            fn(*args)
        except DataError as e:
            return ("one-line error", str(e)) if "\n" not in str(e) else ("traceback", f"multi-line: {e!r}")
        except Exception as e:  # noqa: BLE001 - what the fuzz looks for
            return "traceback", "".join(traceback.format_exception_only(type(e), e)).strip()[:300]
    return ("warned", str(rec[0].message)[:200]) if any(issubclass(w.category, UserWarning) for w in rec) \
        else ("loaded", "")


DETECT_ENV = {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}


def detect_argv(backbone: str, out: Path, data_args: list[str]) -> list[str]:
    return ["detect", "--backbone", backbone, *data_args, "--out", str(out), "--iters", "2", *TINY_DETECT]


def classify(rc: int, stderr: str) -> tuple[str, str]:
    """A `detect`'s exit status and stderr -> (outcome, detail): exit 0 | one-line error | traceback | other."""
    errors = [line for line in stderr.splitlines() if line.startswith("mocolab: error:")]
    if "Traceback" in stderr:
        return "traceback", stderr.strip().splitlines()[-1][:300]
    if rc == 0:
        return "exit 0", f"{stderr.count('warning:')} warning lines"
    if rc == 2 and len(errors) == 1:
        return "one-line error", errors[0][:200]
    return "other", f"exit {rc}: {stderr.strip()[-300:]}"


def run_detect(backbone: str, out: Path, data_args: list[str]) -> tuple[str, str]:
    """One `python -m mocolab detect` process."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""), **DETECT_ENV)
    res = subprocess.run([sys.executable, "-m", "mocolab", *detect_argv(backbone, out, data_args)],
                         capture_output=True, text=True, env=env, timeout=1200)
    return classify(res.returncode, res.stderr)


# text streams on file descriptors 1 and 2 themselves, kept for the process (a logging handler made in one
# call keeps writing to them in the next)
_FD_STREAMS = tuple(open(fd, "w", encoding="utf-8", errors="backslashreplace", closefd=False, buffering=1)
                    for fd in (1, 2))


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """What warnings.showwarning does in a plain process (a test's recorder may stand in for it)."""
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def run_in_process(argv: list[str]) -> tuple[int, str]:
    """`mocolab ARGV` through mocolab.cli.main in this process (its argument parsing and error
    handling, as `python -m mocolab` runs them) -> (exit status, stderr). stdout and stderr are
    caught at the file descriptors (logging, warnings and C code alike); each call sees fresh
    warning filters (a warning shown in an earlier call is shown again)."""
    from mocolab import cli

    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2), sys.stdout, sys.stderr
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        sys.stdout, sys.stderr = _FD_STREAMS  # writes to fds 1 and 2 (pytest, for one, replaces sys.stderr)
        try:
            with warnings.catch_warnings():  # entering resets every module's "shown once" registry
                warnings.simplefilter("default")
                warnings.showwarning = _show_warning  # on stderr, as in a process of its own
                try:
                    rc = cli.main(argv)
                except SystemExit as e:  # argparse
                    rc = e.code if isinstance(e.code, int) else 1
                except BaseException:  # noqa: BLE001 - escaped main's handling: what the fuzz looks for
                    traceback.print_exc()
                    rc = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            sys.stdout, sys.stderr = saved[2:]
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
        err.seek(0)
        return rc, err.read().decode("utf-8", "replace")


def worker(jobs_file: str, results_file: str) -> int:
    """--worker: runs the `detect` jobs (JSON lines of [backbone, out, data_args]) in this process,
    one after another; a result line each, written as soon as it is known."""
    os.environ.update(DETECT_ENV)
    with open(jobs_file) as f, open(results_file, "a") as res:
        for line in f:
            backbone, out, data_args = json.loads(line)
            rc, err = run_in_process(detect_argv(backbone, Path(out), data_args))
            res.write(json.dumps(classify(rc, err)) + "\n")
            res.flush()
    return 0


def run_detect_batched(jobs: list[tuple[str, Path, list[str]]], per_process: int, scratch: Path):
    """Yields (outcome, detail) for each job, in order: `per_process` jobs per worker process
    (mocolab.cli.main in-process: the import and start-up paid once per batch). A worker that dies
    (a crash, a kill) is the job it was running: "other" with its exit status; the batch goes on in
    a fresh worker."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""), **DETECT_ENV)
    todo, n = list(jobs), 0
    while todo:
        batch, todo = todo[:per_process], todo[per_process:]
        n += 1
        jobs_file, results_file = scratch / f"jobs{n}.jsonl", scratch / f"results{n}.jsonl"
        jobs_file.write_text("".join(json.dumps([b, str(o), a]) + "\n" for b, o, a in batch))
        results_file.write_text("")
        proc = subprocess.Popen([sys.executable, __file__, "--worker", str(jobs_file), str(results_file)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        done = 0
        while True:
            lines = results_file.read_text().splitlines()
            for line in lines[done:]:
                yield tuple(json.loads(line))
            done = len(lines)
            if proc.poll() is not None:
                break
            time.sleep(0.2)
        stderr = proc.stderr.read()
        lines = results_file.read_text().splitlines()
        for line in lines[done:]:
            yield tuple(json.loads(line))
        done = len(lines)
        if done < len(batch):  # the worker died during job `done`
            yield "other", f"worker died (exit {proc.returncode}) during this file: {stderr.strip()[-300:]}"
            todo = batch[done + 1:] + todo


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=500, help="VOC files and COCO files (each)")
    ap.add_argument("--detect-coco", type=int, default=8, help="COCO files fed to `mocolab detect` (a seeded sample)")
    ap.add_argument("--no-detect", action="store_true", help="the loaders only")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", help="write the files here (kept) instead of a temporary folder")
    ap.add_argument("--per-process", type=int, default=25,
                    help="COCO `detect` runs per process, each through mocolab.cli.main in-process (the start-up "
                         "paid once); 0: one `python -m mocolab detect` process each")
    ap.add_argument("--worker", nargs=2, metavar=("JOBS", "RESULTS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(*args.worker)
    import io

    from PIL import Image

    from mocolab.transfer.coco import load_coco
    from mocolab.transfer.voc import load_voc

    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (180, 40, 40)).save(buf, format="JPEG")
    jpeg = buf.getvalue()
    rng = random.Random(args.seed)
    bad = 0
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(args.keep) if args.keep else Path(tmp)
        voc_files = fuzz_voc(base / "voc", args.n, rng, jpeg)
        coco_files = fuzz_coco(base / "coco", args.n, rng, jpeg)
        kinds = Counter(k for _, done in voc_files + coco_files for k in done)
        print(f"{len(voc_files)} VOC XML + {len(coco_files)} COCO JSON files, seed {args.seed}; mutations: "
              + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())))
        t0 = time.perf_counter()
        for what, files, call in [
            ("VOC", voc_files, lambda name: load_outcome(load_voc, base / "voc", f"f{name}")),
            ("COCO", coco_files, lambda name: load_outcome(load_coco, base / "coco" / name, base / "coco" / "train")),
        ]:
            counts, shown = Counter(), []
            for name, done in files:
                outcome, detail = call(name)
                counts[outcome] += 1
                if outcome == "traceback":
                    shown.append(f"  {name} ({', '.join(done)}): {detail}")
            bad += counts["traceback"]
            print(f"loader  {what:4s}: " + ", ".join(f"{counts[k]} {k}" for k in
                                                     ("loaded", "warned", "one-line error", "traceback")))
            print("\n".join(shown[:20]))
        print(f"  ({time.perf_counter() - t0:.1f} s)")
        if not args.no_detect:
            bb = base / "r10w8.yaml"
            bb.write_text("model: {arch: resnet10, width: 8, stem: imagenet}\ndata: {image_size: 64}\n")
            backbone = f"random:{bb}"
            sample = random.Random(args.seed + 1).sample(range(len(coco_files)), min(args.detect_coco, len(coco_files)))
            coco = base / "coco"
            runs = [(f"COCO {coco_files[i][0]} ({', '.join(coco_files[i][1])})",
                     ["--train-json", str(coco / coco_files[i][0]), "--train-images", str(coco / "train"),
                      "--test-json", str(coco / "good_val.json"), "--test-images", str(coco / "val")])
                    for i in sorted(sample)]
            jobs = [(backbone, base / f"run{k + 1}", data_args) for k, (_, data_args) in enumerate(runs)]
            if args.per_process > 0:
                (base / "batches").mkdir(exist_ok=True)
                coco_outcomes = run_detect_batched(jobs, args.per_process, base / "batches")
            else:
                coco_outcomes = (run_detect(*job) for job in jobs)
            runs = [("VOC folder (all files)", ["--data", str(base / "voc")])] + runs
            voc_outcome = (run_detect(backbone, base / "run0", runs[0][1]) for _ in range(1))
            outcomes = itertools.chain(voc_outcome, coco_outcomes)
            counts = Counter()
            t0 = time.perf_counter()
            for (name, _), (outcome, detail) in zip(runs, outcomes, strict=True):
                counts[outcome] += 1
                print(f"detect  {outcome:14s} {name[:70]:70s} {detail[:90]}  ({time.perf_counter() - t0:.0f} s)",
                      flush=True)
                t0 = time.perf_counter()
            bad += counts["traceback"] + counts["other"]
            how = (f"{args.per_process} per process, in-process through mocolab.cli.main" if args.per_process > 0
                   else "one process each")
            print("detect: " + ", ".join(f"{counts[k]} {k}" for k in ("exit 0", "one-line error", "traceback", "other"))
                  + f" ({len(runs)} runs: {len(voc_files)} VOC files in one, {len(sample)} COCO files one each, {how})")
    print(f"tracebacks and other outcomes: {bad} (goal: 0)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
