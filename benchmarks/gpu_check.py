"""Every mocolab command on one device, one row each, in one table (benchmarks/gpu_check.sh runs this).

Rows (GPU sizes; --dry-run runs the same rows with tiny data and sizes on the CPU):
  r18:<row>        benchmarks/throughput.py on cifar10_r18 (full-width R18, batch 512): limit (eager
                   step), compiled, compiled_cudagraphs (run.compile_mode=reduce-overhead), mocolab
                   (end to end), mocolab_compiled, official (the official CIFAR demo's code), peer
                   (lightly's pipeline; SKIP where lightly is not installed), limit_e2e, e2e,
                   limit_bank, bank (the other dictionaries, a few steps)
  v3_vit_s16_224   one MoCo v3 step of ViT-S/16 at 224 px in bf16 (throughput.py's limit row)
  pretrain_r18     `mocolab pretrain --preset cifar10_r18 --epochs 1` (s/epoch, kNN)
  linear_paper     `mocolab linear --mode paper --epochs 1` on that run
  knn_stream       `mocolab knn --stream on` on that run
  detect_fpn, detect_c4, segment_deeplabv3   `mocolab detect|segment --iters 20` on BCCD / CamVid
  torchrun         `torchrun --nproc_per_node=1 -m mocolab pretrain` (NCCL on CUDA, gloo on the CPU)
  ckpt_to_cpu      a pretraining checkpoint written on the device, resumed in a process that sees no GPU

Each row reports img/s, peak memory (GPU: torch's peak allocation in this process; CPU: peak RSS)
and PASS / FAIL / SKIP; a failing row is named with its error and the next row runs. Prints the
table, writes OUT/gpu_check.json, and exits 1 if any row failed.

  python benchmarks/gpu_check.py --devdata .devdata --out runs/gpu_check
  python benchmarks/gpu_check.py --dry-run --device cpu --devdata DIR --out DIR
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import pack_data  # noqa: E402
import throughput  # noqa: E402
import torch  # noqa: E402

from mocolab.cli import main as mocolab  # noqa: E402
from mocolab.runtime import release_run_dirs  # noqa: E402

R18_ROWS = ["limit", "compiled", "compiled_cudagraphs", "mocolab", "mocolab_compiled", "official", "peer",
            "limit_e2e", "e2e", "limit_bank", "bank"]


class RowTimeout(Exception):
    pass


class Skip(Exception):
    pass


def sizes(dry: bool) -> dict:
    """Per-row arguments: GPU (within ~8 minutes on one H100/H200, compiles included) or tiny (dry run)."""
    if not dry:
        return {
            "tp": ["--width", "64", "--batch-size", "512", "--limit", "10000", "--steps", "10", "--rounds", "3",
                   "data.workers=12"],
            "vit": ["--batch-size", "128", "--limit", "512", "--steps", "3", "--rounds", "1", "data.workers=12"],
            "pretrain": ["data.workers=12"],
            "limit": [],
            "linear": [],
            "bb": "random:mocov2_r50_imagenet",
            "detect": [],
            "segment": [],
            "ckpt": ["model.width=16", "data.limit=2048", "data.workers=4"],
            "dist": ["data.limit=4096", "data.workers=4"],
            "timeout": {"r18": 330, "v3_vit_s16_224": 90, "pretrain_r18": 90, "linear_paper": 60, "knn_stream": 60,
                        "detect_fpn": 60, "detect_c4": 60, "segment_deeplabv3": 60, "torchrun": 90, "ckpt_to_cpu": 90},
        }
    tiny_pt = ["model.width=8", "optim.batch_size=16", "data.limit=48", "moco.queue_size=32", "data.workers=0"]
    return {
        "tp": ["--width", "8", "--batch-size", "16", "--limit", "64", "--steps", "1", "--rounds", "1",
               "data.image_size=16", "data.workers=0"],  # 16 px: the official row's R18 is full width
        "vit": ["--batch-size", "4", "--limit", "8", "--steps", "1", "--rounds", "1", "data.image_size=32",
                "data.workers=0"],
        "pretrain": tiny_pt,
        "limit": ["--limit", "32"],
        "linear": ["--batch-size", "16"],
        "bb": None,  # a width-8 ResNet-10, written into the work folder
        "detect": ["task.train_sizes=[96,128]", "task.test_size=128", "task.max_size=192", "task.fpn_channels=16",
                   "task.representation_size=32", "task.box_convs=1", "task.anchor_sizes=[8,16,32,64,128]",
                   "task.rpn_pre_nms_train=50", "task.rpn_post_nms_train=20", "task.rpn_pre_nms_test=50",
                   "task.rpn_post_nms_test=20", "task.rpn_batch_size=32", "task.roi_batch_size=16",
                   "task.box_detections_per_img=20", "task.workers=0", "optim.batch_size=2", "task.eval_batch=2"],
        "segment": ["task.crop_size=[64,64]", "task.scale_range=[0.25,0.4]", "task.test_scale=0.25", "task.workers=0",
                    "optim.batch_size=2", "task.eval_batch=2"],
        "ckpt": tiny_pt,
        "dist": tiny_pt,
        "timeout": {},
    }


def peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_child(cmd: list[str], log: Path, timeout: float | None, env: dict | None = None) -> float:
    """Runs cmd (output to log), raises on a non-zero exit or a timeout; returns the child's peak RSS (MB)."""
    with open(log, "w") as f:
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                             start_new_session=True)
        deadline = time.monotonic() + (timeout or 1e9)
        while True:
            pid, status, usage = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                os.killpg(p.pid, signal.SIGKILL)
                os.wait4(p.pid, 0)
                raise RowTimeout(f"stopped after {timeout:.0f} s (log: {log})")
            time.sleep(0.2)
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        tail = log.read_text()[-600:].strip().splitlines()
        raise RuntimeError(f"exit status {p.returncode}: {tail[-1] if tail else ''} (log: {log})")
    return usage.ru_maxrss / 1024


def cli(argv: list[str]) -> None:
    threads = torch.get_num_threads()
    try:
        rc = mocolab(argv)
    finally:
        torch.set_num_threads(threads)
        release_run_dirs()  # a run folder stays locked for the rest of its process: here, only for its row
    if rc != 0:
        raise RuntimeError(f"`mocolab {argv[0]}` exited with {rc}")


class Check:
    def __init__(self, args):
        self.args, self.dry = args, args.dry_run
        self.device = torch.device(args.device)
        self.s = sizes(self.dry)
        self.out = Path(args.out)
        self.work = Path(tempfile.mkdtemp(prefix="gpu_check_"))
        self.rows: list[dict] = []
        self.py = sys.executable

    # -- data ---------------------------------------------------------------------------------
    def data(self) -> None:
        """cifar10, bccd, camvid: folders under --data-dir, else unpacked from --devdata's packs."""
        for name in ("cifar10", "bccd", "camvid"):
            folder = Path(self.args.data_dir) / name if self.args.data_dir else None
            if folder is not None and folder.is_dir():
                setattr(self, name, folder)
                continue
            pack = Path(self.args.devdata) / f"{name}.pack"
            if not pack.is_file():
                raise SystemExit(f"gpu_check: neither {folder} nor {pack} exists "
                                 f"(python benchmarks/pack_data.py devdata ../shared/data .devdata)")
            pack_data.unpack(pack, self.work / name)
            setattr(self, name, self.work / name)

    def extras(self) -> None:
        """Installs --devdata's wheels/ (pack_data.py downloads them) whose module this python lacks
        into the work folder, for this process and its children: the device has no network, and
        its system python stays as it was."""
        site = self.work / "site"
        for whl in sorted(Path(self.args.devdata).glob("wheels/*.whl")):
            module = whl.name.split("-")[0]
            if importlib.util.find_spec(module) is not None:
                continue
            r = subprocess.run([self.py, "-m", "pip", "install", "--no-index", "--no-deps", "--quiet", "--target",
                                str(site), str(whl)], capture_output=True, text=True)
            print(f"extras: {whl.name}: {'installed' if r.returncode == 0 else r.stderr.strip()[-300:]}")
        if site.is_dir():
            sys.path.insert(0, str(site))
            importlib.invalidate_caches()

    # -- rows ---------------------------------------------------------------------------------
    def row(self, name: str, fn, timeout: float | None = None) -> None:
        """Runs one row: fn() -> {'img_s': ..., 'note': ...}; its error or timeout makes it FAIL."""
        timeout = timeout or self.s["timeout"].get(name.split(":")[0])
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
        rec = {"row": name, "status": "PASS", "img_s": None, "peak_mb": None, "note": ""}
        t0 = time.perf_counter()

        def alarm(*_):
            raise RowTimeout(f"stopped after {timeout:.0f} s")
        old = signal.signal(signal.SIGALRM, alarm)
        if timeout:
            signal.alarm(int(timeout))
        try:
            res = fn() or {}
            rec.update(res)
            if rec["peak_mb"] is None:
                rec["peak_mb"] = peak_mb(self.device)
        except Skip as e:
            rec.update(status="SKIP", note=str(e))
        except Exception as e:  # noqa: BLE001 -- reported in the table; the next row runs
            rec.update(status="FAIL", note=f"{type(e).__name__}: {e}"[:300])
            traceback.print_exc()
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, old)
        rec["seconds"] = round(time.perf_counter() - t0, 1)
        print(f"== {name}: {rec['status']} ({rec['seconds']} s) {rec['note']}", flush=True)
        self.rows.append(rec)

    def r18_throughput(self) -> None:
        """One throughput.py call, one table row per throughput row (the rows side by side)."""
        argv = ["--data", str(self.cifar10), "--preset", "cifar10_r18", "--device", self.args.device,
                "--rows", ",".join(R18_ROWS), "--json", str(self.out / "throughput.json"), *self.s["tp"]]
        got: dict = {}

        def run():
            got.update(throughput.main(argv))
        self.row("r18", run)
        whole = self.rows.pop()
        for name in R18_ROWS:
            rec = {"row": f"r18:{name}", "status": whole["status"], "img_s": None, "peak_mb": None,
                   "note": whole["note"], "seconds": whole["seconds"]}
            if got:
                rec["img_s"] = got["img_s"].get(name)
                rec["peak_mb"] = got["peak_gpu_mb"].get(name, got["peak_rss_mb"])
                if name in got["failed_rows"]:
                    rec.update(status="FAIL", note=got["failed_rows"][name])
                elif name == "peer" and rec["img_s"] is None:
                    rec.update(status="SKIP", note="lightly is not installed (pip install -e '.[bench]')")
                elif rec["img_s"] is None:
                    rec.update(status="FAIL", note="no figure")
                else:
                    rec["note"] = f"warm-up {got['warmup_s'].get(name, 0):.1f} s"
            self.rows.append(rec)

    def vit_step(self) -> dict:
        res = throughput.main(["--data", str(self.cifar10), "--preset", "mocov3_vit_small_imagenet",
                               "--arch", "vit_small_patch16", "--device", self.args.device, "--amp", "bf16",
                               "--rows", "limit", *self.s["vit"], "data.backend=tensor", "data.cache=true",
                               "model.sync_bn=false"])
        if res["failed_rows"]:
            raise RuntimeError(res["failed_rows"]["limit"])
        return {"img_s": res["img_s"]["limit"], "peak_mb": res["peak_gpu_mb"].get("limit", res["peak_rss_mb"]),
                "note": f"batch {res['batch_size']}, {res['amp']}"}

    def pretrain_r18(self) -> dict:
        out = self.work / "r18"
        cli(["pretrain", "--preset", "cifar10_r18", "--data", str(self.cifar10), "--out", str(out), "--epochs", "1",
             f"run.device={self.args.device}", "run.knn_every=0", *self.s["pretrain"]])
        s = json.loads((out / "summary.json").read_text())
        return {"img_s": s["images_per_second"],
                "note": f"{50000 / s['images_per_second']:.2f} s per 50k-image epoch, kNN {s['knn_top1']:.1f}%"}

    def linear_paper(self) -> dict:
        t0 = time.perf_counter()
        res = self.work / "linear"
        cli(["linear", "--checkpoint", str(self.work / "r18"), "--data", str(self.cifar10), "--mode", "paper",
             "--epochs", "1", "--device", self.args.device, "--results-dir", str(res), *self.s["limit"],
             *self.s["linear"]])
        r = json.loads(next(res.glob("*linear_paper*.json")).read_text())
        n = r.get("train_size") or 0
        top1 = next((r[k] for k in ("top1", "linear_top1", "accuracy") if k in r), float("nan"))
        return {"img_s": n / (time.perf_counter() - t0) if n else None, "note": f"top-1 {top1:.1f}% (wall img/s)"}

    def knn_stream(self) -> dict:
        t0 = time.perf_counter()
        cli(["knn", "--checkpoint", str(self.work / "r18"), "--data", str(self.cifar10), "--stream", "on",
             "--device", self.args.device, *self.s["limit"]])
        r = json.loads(next((self.work / "r18").glob("*.knn_*.json")).read_text())
        n = r["train_size"] + r["test_size"]
        return {"img_s": n / (time.perf_counter() - t0),
                "note": f"kNN {r['knn_top1']:.1f}%, features in {r['features_store']} (wall img/s)"}

    def backbone(self) -> str:
        if self.s["bb"]:
            return self.s["bb"]
        path = self.work / "r10w8.yaml"
        path.write_text("model: {arch: resnet10, width: 8, stem: imagenet}\ndata: {image_size: 64}\n")
        return f"random:{path}"

    def transfer(self, kind: str, head: str) -> dict:
        out = self.work / f"{kind}_{head}"
        data = self.bccd if kind == "detect" else self.camvid
        cli([kind, "--backbone", self.backbone(), "--data", str(data), "--out", str(out), "--iters", "20",
             f"task.head={head}", f"run.device={self.args.device}", *self.s[kind]])
        r = json.loads((out / f"{kind}.json").read_text())
        score = f"AP50 {r['AP50']:.1f}" if kind == "detect" else f"mIoU {r['mIoU']:.1f}"
        return {"img_s": r["train"]["images_per_second"], "note": f"{r['train']['steps']} steps, {score}"}

    def torchrun(self) -> dict:
        out = self.work / "dist"
        rss = run_child([self.py, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "-m",
                         "mocolab", "pretrain", "--preset", "cifar10_r18", "--data", str(self.cifar10), "--out",
                         str(out), "--epochs", "1", f"run.device={self.args.device}", *self.s["dist"]],
                        self.out / "torchrun.log", self.s["timeout"].get("torchrun"), self.child_env())
        s = json.loads((out / "summary.json").read_text())
        backend = "nccl" if self.device.type == "cuda" else "gloo"
        if s.get("processes") != 1:
            raise RuntimeError(f"summary says {s.get('processes')} processes")
        return {"img_s": s["images_per_second"], "peak_mb": None if self.device.type == "cuda" else rss,
                "note": f"1 process, {backend}"}

    def ckpt_to_cpu(self) -> dict:
        out = self.work / "ckpt"
        cli(["pretrain", "--preset", "cifar10_cpu", "--data", str(self.cifar10), "--out", str(out), "--epochs", "1",
             f"run.device={self.args.device}", "run.compile=false", *self.s["ckpt"]])
        steps = json.loads((out / "summary.json").read_text())["steps"]
        # a process that sees no GPU continues the run to 2 epochs
        run_child([self.py, "-m", "mocolab", "pretrain", "--data", str(self.cifar10), "--out", str(out),
                   "--resume", "auto", "--epochs", "2", "run.device=cpu"], self.out / "ckpt_resume.log",
                  self.s["timeout"].get("ckpt_to_cpu"), {**self.child_env(), "CUDA_VISIBLE_DEVICES": ""})
        s = json.loads((out / "summary.json").read_text())
        if s["steps"] != 2 * steps or s["device"] != "cpu":
            raise RuntimeError(f"resumed to step {s['steps']} on {s['device']}, expected {2 * steps} on cpu")
        return {"img_s": s["images_per_second"], "note": f"written on {self.device.type}, step {steps} -> "
                                                          f"{s['steps']} on the CPU"}

    def child_env(self) -> dict:
        paths = [str(ROOT / "src"), *([str(self.work / "site")] if (self.work / "site").is_dir() else []),
                 os.environ.get("PYTHONPATH", "")]
        env = {"PYTHONPATH": os.pathsep.join(paths).rstrip(os.pathsep)}
        if self.dry:
            env["TORCH_COMPILE_DISABLE"] = "1"
        return env

    # -- all ----------------------------------------------------------------------------------
    def run(self) -> int:
        t0 = time.perf_counter()
        self.out.mkdir(parents=True, exist_ok=True)
        try:
            self.data()
            self.extras()
            self.r18_throughput()
            self.row("v3_vit_s16_224", self.vit_step)
            self.row("pretrain_r18", self.pretrain_r18)
            self.row("linear_paper", self.linear_paper)
            self.row("knn_stream", self.knn_stream)
            self.row("detect_fpn", lambda: self.transfer("detect", "fpn"))
            self.row("detect_c4", lambda: self.transfer("detect", "c4"))
            self.row("segment_deeplabv3", lambda: self.transfer("segment", "deeplabv3"))
            self.row("torchrun", self.torchrun)
            self.row("ckpt_to_cpu", self.ckpt_to_cpu)
        finally:
            shutil.rmtree(self.work, ignore_errors=True)
        total = time.perf_counter() - t0
        return self.report(total)

    def report(self, total: float) -> int:
        mem = "peak GPU MB" if self.device.type == "cuda" else "peak RSS MB"
        name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"
        lines = [f"gpu_check on {name}{' (dry run: tiny sizes)' if self.dry else ''}, torch {torch.__version__}, "
                 f"{total:.0f} s", f"| row | status | img/s | {mem} | s | note |",
                 "| --- | --- | ---: | ---: | ---: | --- |"]
        for r in self.rows:
            ips = "-" if r["img_s"] is None else f"{r['img_s']:.0f}"
            pk = "-" if r["peak_mb"] is None else f"{r['peak_mb']:.0f}"
            lines.append(f"| {r['row']} | {r['status']} | {ips} | {pk} | {r['seconds']} | {r['note']} |")
        failed = [r["row"] for r in self.rows if r["status"] == "FAIL"]
        lines.append(f"FAILED: {', '.join(failed)}" if failed else "all rows passed")
        print("\n".join(lines), flush=True)
        (self.out / "gpu_check.md").write_text("\n".join(lines) + "\n")
        (self.out / "gpu_check.json").write_text(json.dumps(
            {"device": name, "dry_run": self.dry, "torch": torch.__version__, "total_seconds": total,
             "rows": self.rows, "failed": failed}, indent=2))
        return 1 if failed else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--devdata", default=str(ROOT / ".devdata"), help="folder of cifar10/bccd/camvid.pack")
    ap.add_argument("--data-dir", help="a folder with cifar10/, bccd/ (VOC tree), camvid/ (instead of the packs)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dry-run", action="store_true", help="the same rows with tiny data and sizes")
    args = ap.parse_args(argv)
    if args.dry_run:
        torch._dynamo.config.disable = True  # the compiled rows' plumbing, not a minute of inductor per row
        os.environ["TORCH_COMPILE_DISABLE"] = "1"
        # one thread: tiny steps gain nothing from two, and on a busy machine OpenMP's spinning threads lose minutes
        torch.set_num_threads(1)
        os.environ["OMP_NUM_THREADS"] = "1"
    return Check(args).run()


if __name__ == "__main__":
    sys.exit(main())
