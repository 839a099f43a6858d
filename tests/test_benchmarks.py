"""The prepared GPU check runs end to end on the CPU (--dry-run, tiny sizes, real CIFAR JPEGs)
and writes the figures it promises; a GPU session then only has to run it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import cifar_subset

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_dry_run_writes_its_figures(cifar_dir, tmp_path):
    data = cifar_subset(cifar_dir, tmp_path / "c10", 64)
    out = tmp_path / "out"
    res = subprocess.run(["bash", str(ROOT / "benchmarks/gpu_check.sh"), "--dry-run", "--out", str(out), "--data", str(data)],
                         capture_output=True, text=True, timeout=900, env={**os.environ, "PYTHON": sys.executable})
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "torch" in (out / "env.txt").read_text()
    tp = json.loads((out / "throughput.json").read_text())
    assert tp["limit_img_s"] > 0 and tp["mocolab_img_s"] > 0 and tp["pil_img_s"] > 0 and tp["device"] == "cpu"
    s = json.loads((out / "gpu_check.json").read_text())
    assert s["epochs"] > 0 and s["seconds_per_epoch"] > 0 and 0.0 <= s["knn_top1"] <= 100.0
    assert s["wall_seconds_per_epoch"] > s["seconds_per_epoch"]  # start-up and checkpoints on top
