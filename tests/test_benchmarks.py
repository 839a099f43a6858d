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


def _load_benchmark(name: str):
    import importlib.util
    spec = importlib.util.spec_from_file_location(name, ROOT / f"benchmarks/{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


def test_throughput_reports_a_failing_row_and_measures_the_others(cifar_dir, tmp_path, monkeypatch):
    """A row that fails to build, or in its warm-up (a compile mode on some GPU), is named in
    the table and the JSON; the other rows are still measured side by side."""
    tp = _load_benchmark("throughput")
    make_trainer, step_fn, built = tp.make_trainer, tp.step_fn, []

    def failing_build(cfg, *a):
        if cfg.data.backend == "pil":
            raise RuntimeError("no PIL today")
        return make_trainer(cfg, *a)

    def failing_second_row(tr):
        built.append(tr)
        if len(built) == 2:  # the mocolab row's step
            def step(*views):
                raise RuntimeError("replay failed")
            return step
        return step_fn(tr)

    monkeypatch.setattr(tp, "make_trainer", failing_build)
    monkeypatch.setattr(tp, "step_fn", failing_second_row)
    data = cifar_subset(cifar_dir, tmp_path / "c10", 32)
    res = tp.main(["--data", str(data), "--arch", "resnet10", "--width", "8", "--batch-size", "16", "--limit", "64",
                   "--steps", "1", "--rounds", "2", "--rows", "limit,mocolab,pil", "--json", str(tmp_path / "t.json"),
                   "data.workers=0"])
    assert res["limit_img_s"] > 0 and res["mocolab_img_s"] is None and res["pil_img_s"] is None
    written = json.loads((tmp_path / "t.json").read_text())
    assert written["failed_rows"] == {"mocolab": "warm-up: RuntimeError: replay failed",
                                      "pil": "build: RuntimeError: no PIL today"}


def test_augment_library_rows_build_the_same_preset():
    """benchmarks/augment.py's torchvision-v2 row runs the preset it is compared on: with
    preset 'none' it returns the normalised image, and with v1 normalised crops of the size."""
    import torch

    from mocolab.augment import preset
    bench = _load_benchmark("augment")
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    x = torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    expected = (x.float() / 255 - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    torch.testing.assert_close(bench.tv2_transform(preset("none", 16), mean, std)(x), expected)
    torch.manual_seed(0)
    views = torch.stack([bench.tv2_transform(preset("v1", 8), mean, std)(x) for _ in range(8)])
    assert views.shape == (8, 3, 8, 8) and views.dtype == torch.float32 and views.std(0).mean() > 0.05
