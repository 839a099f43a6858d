"""The two runs of docs/health.md: the cifar10_cpu preset (width 8, batch 32) for one epoch of 1,024
CIFAR-10 images (4 classes), healthy, and with a key encoder that sees one constant image (a collapse).

  python benchmarks/health_demo.py runs/health moco
  python benchmarks/health_demo.py runs/health constant_key moco.queue_size=4096
  mocolab report runs/health/moco runs/health/constant_key --out runs/health/report --curves-only

Arguments: OUT_DIR, the method, then config overrides. Prints each log line's figures.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

from mocolab.methods.moco import MoCo  # noqa: E402

CLASSES = ("airplane", "cat", "dog", "ship")
FIGURES = ("step", "loss", "alignment", "uniformity", "feature_std", "effective_rank", "key_age", "warnings")


class ConstantKey(MoCo):
    """MoCo whose key encoder sees one constant image: every key is the same vector, so the
    queries are pulled onto it while the queue still holds random keys (a collapse)."""

    name = "constant_key"
    title = "MoCo, constant key input"

    def encode_key(self, x, generator=None):
        return super().encode_key(torch.zeros_like(x), generator)


def main(argv: list[str]) -> None:
    from conftest import cifar_subset

    from mocolab.cli import main as mocolab
    from mocolab.registry import METHODS

    out, method, overrides = Path(argv[0]), argv[1], argv[2:]
    METHODS.register(ConstantKey)
    data = out / "data"
    if not data.exists():
        cifar_subset(ROOT.parent / "shared/data/cifar10", data, 256, classes=CLASSES)
    run = out / method
    mocolab(["pretrain", "--preset", "cifar10_cpu", "--data", str(data), "--out", str(run), "--epochs", "1",
             "--overwrite", f"moco.method={method}", "model.width=8", "optim.batch_size=32", "moco.queue_size=128",
             "run.compile=false", "run.amp=off", "run.threads=1", "data.workers=0", "run.log_every=2", *overrides])
    for line in (run / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        print({k: round(v, 4) if isinstance(v, float) else v for k, v in rec.items() if k in FIGURES})


if __name__ == "__main__":
    main(sys.argv[1:])
