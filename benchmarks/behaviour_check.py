"""Behaviour fingerprint of a source tree: run before and after a refactor, compare the JSONs.

    python benchmarks/behaviour_check.py --data ../shared/data --json after.json [--src DIR]

Fixed-seed, single-thread, float32 runs, so that the arithmetic is deterministic:
- a 1-epoch pretraining of each method (moco, e2e, bank, mocov3) on 512 CIFAR-10 images with a
  width-8 ResNet-10: the SHA-256 of every tensor of final.pth's model state (and the final loss);
- a 20-iteration `detect` (BCCD, 16 labeled images) and `segment` (CamVid, 16 labeled images)
  from random:imagenette_cpu backbones: their metrics.

--src runs another checkout's code (its src/ first on PYTHONPATH): the reference from before
the change is made with `git worktree add ../ref <commit>` and `--src ../ref/src`.
`--compare A.json B.json` tells, per run, the tensors whose hashes differ, the tensors present on
one side only (a buffer added by the change, e.g. the queue's key-age stamps, changes no weight)
and the metrics that differ: the behaviour is unchanged when nothing differs (exit 0); tensors on
one side only are listed but do not fail it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PRETRAIN = ["--preset", "cifar10_cpu", "--epochs", "1", "model.width=8", "data.limit=512", "optim.batch_size=64",
            "moco.queue_size=256", "run.threads=1", "run.amp=off", "run.compile=false", "data.workers=0",
            "run.seed=3", "run.log_every=2"]
TRANSFER = ["--iters", "20", "--backbone", "random:imagenette_cpu", "task.train_images=16", "run.threads=1",
            "run.amp=off", "run.seed=1", "task.workers=0"]


def mocolab(src: Path, args: list[str], env: dict) -> None:
    env = {**env, "PYTHONPATH": str(src)}
    subprocess.run([sys.executable, "-m", "mocolab", *args], check=True, env=env, stdout=subprocess.DEVNULL)


def digest_state(path: Path) -> dict:
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    out = {}
    for k, v in sorted(state["model"].items()):
        out[k] = hashlib.sha256(v.detach().contiguous().view(-1).view(torch.uint8).numpy().tobytes()).hexdigest()[:16]
    return {"model": hashlib.sha256(json.dumps(out, sort_keys=True).encode()).hexdigest(), "tensors": len(out),
            "last_loss": (state.get("logs") or {}).get("last", {}).get("loss"), "hashes": out}


def brief(entry: dict) -> dict:
    """An entry without its per-tensor hashes, for printing."""
    return {k: v for k, v in entry.items() if k != "hashes"}


def compare(x: dict, y: dict) -> tuple[list[str], list[str]]:
    """Two fingerprints -> (differences, one-sided tensors), as printable lines. A run's tensors
    are compared one by one when both sides hold their hashes (the whole-model hash and the tensor
    count then follow from them); a JSON written before the hashes were kept compares its
    whole-model hash."""
    diff, one_sided = [], []
    for run in sorted(set(x) | set(y)):
        a, b = x.get(run), y.get(run)
        if a is None or b is None:
            diff.append(f"{run}: only in {'B' if a is None else 'A'}")
            continue
        if isinstance(a, dict) and isinstance(a.get("hashes"), dict) and isinstance(b.get("hashes"), dict):
            ha, hb = a["hashes"], b["hashes"]
            changed = [k for k in sorted(set(ha) & set(hb)) if ha[k] != hb[k]]
            if changed:
                diff.append(f"{run}: {len(changed)} tensor(s) differ: {', '.join(changed)}")
            for side, keys in (("A", sorted(set(ha) - set(hb))), ("B", sorted(set(hb) - set(ha)))):
                if keys:
                    one_sided.append(f"{run}: {len(keys)} tensor(s) only in {side}: {', '.join(keys)}")
            # the whole-model hash and the count follow from the tensors, compared above
            a = {k: v for k, v in a.items() if k not in ("hashes", "model", "tensors")}
            b = {k: v for k, v in b.items() if k not in ("hashes", "model", "tensors")}
        elif isinstance(a, dict) and isinstance(b, dict):
            a = {k: v for k, v in a.items() if k != "hashes"}
            b = {k: v for k, v in b.items() if k != "hashes"}
        if a != b:
            keys = sorted(set(a) | set(b)) if isinstance(a, dict) and isinstance(b, dict) else []
            what = [k for k in keys if a.get(k) != b.get(k)] or [f"{a!r} != {b!r}"]
            diff.append(f"{run}: {', '.join(map(str, what))} differ")
    return diff, one_sided


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--src", default=str(ROOT / "src"))
    ap.add_argument("--json", required=False)
    ap.add_argument("--compare", nargs=2, metavar="JSON")
    a = ap.parse_args()
    if a.compare:
        x, y = (json.loads(Path(p).read_text()) for p in a.compare)
        diff, one_sided = compare(x, y)
        for line in one_sided + diff:
            print(line)
        n_tensors = sum(len(v.get("hashes") or {}) for v in y.values() if isinstance(v, dict))
        print(f"A = {a.compare[0]}, B = {a.compare[1]}: {len(diff)} difference(s), "
              f"{len(one_sided)} run(s) with tensors on one side only; {n_tensors} tensors in B"
              + ("; identical where both hold them" if not diff else ""))
        sys.exit(1 if diff else 0)
    data, src = Path(a.data), Path(a.src).resolve()
    result = {}
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "MOCOLAB_CACHE": str(Path(tmp) / "cache"), "OMP_NUM_THREADS": "1"}
        for method in ("moco", "e2e", "bank", "mocov3"):
            out = Path(tmp) / method
            mocolab(src, ["pretrain", "--data", str(data / "cifar10"), "--out", str(out), *PRETRAIN,
                          f"moco.method={method}"], env)
            result[f"pretrain.{method}"] = digest_state(out / "checkpoints" / "final.pth")
            print(method, brief(result[f"pretrain.{method}"]), flush=True)
        for kind, folder in (("detect", "bccd/BCCD"), ("segment", "camvid")):
            out = Path(tmp) / kind
            mocolab(src, [kind, "--data", str(data / folder), "--out", str(out), *TRANSFER], env)
            res = json.loads((out / f"{kind}.json").read_text())
            keep = ("AP", "AP50", "AP75") if kind == "detect" else ("mIoU", "pixel_acc")
            result[kind] = {k: res[k] for k in keep}
            result[f"{kind}.final"] = digest_state(out / "checkpoints" / "final.pth")
            print(kind, result[kind], flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2, sort_keys=True))
    print(json.dumps({k: brief(v) for k, v in result.items()}, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
