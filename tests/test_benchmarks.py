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
    res = subprocess.run(["bash", str(ROOT / "benchmarks/gpu_check.sh"), "--dry-run", "--out", str(out),
                          "--data", str(data)],
                         capture_output=True, text=True, timeout=900, env={**os.environ, "PYTHON": sys.executable})
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "torch" in (out / "env.txt").read_text()
    tp = json.loads((out / "throughput.json").read_text())
    assert tp["limit_img_s"] > 0 and tp["mocolab_img_s"] > 0 and tp["pil_img_s"] > 0 and tp["device"] == "cpu"
    s = json.loads((out / "gpu_check.json").read_text())
    assert s["epochs"] > 0 and s["seconds_per_epoch"] > 0 and 0.0 <= s["knn_top1"] <= 100.0
    assert s["wall_seconds_per_epoch"] > s["seconds_per_epoch"]  # start-up and checkpoints on top


def test_throughput_reports_a_failing_row_and_measures_the_others(cifar_dir, tmp_path, monkeypatch, capsys):
    """A row that fails to build, in its warm-up or while timed (a compile mode on some GPU) is
    named in the table and the JSON; the other rows are still measured side by side."""
    tp = _load_benchmark("throughput")
    step_fn, built = tp.step_fn, []

    def no_peer(*a):
        raise RuntimeError("no peer today")

    def failing_rows(tr):  # built in --rows order: limit, mocolab, pil
        built.append(tr)
        row, step, calls = len(built), step_fn(tr), []

        def failing(*views):
            calls.append(1)
            if row == 2 or (row == 3 and len(calls) == 5):  # mocolab: at once; pil: in the 2nd round
                raise RuntimeError(f"replay {len(calls)} failed")
            return step(*views)
        return step if row == 1 else failing

    monkeypatch.setattr(tp, "peer_row", no_peer)
    monkeypatch.setattr(tp, "step_fn", failing_rows)
    data = cifar_subset(cifar_dir, tmp_path / "c10", 32)
    res = tp.main(["--data", str(data), "--arch", "resnet10", "--width", "8", "--batch-size", "16", "--limit", "64",
                   "--steps", "1", "--rounds", "2", "--rows", "limit,mocolab,pil,peer",
                   "--json", str(tmp_path / "t.json"), "data.workers=0"])
    assert res["limit_img_s"] > 0 and res["mocolab_img_s"] is None and res["pil_img_s"] is None
    assert res["peer_img_s"] is None and "mocolab_over_limit" not in res
    written = json.loads((tmp_path / "t.json").read_text())
    assert written["failed_rows"] == {"mocolab": "warm-up: RuntimeError: replay 1 failed",
                                      "pil": "timing: RuntimeError: replay 5 failed",
                                      "peer": "build: RuntimeError: no peer today"}
    table = capsys.readouterr().out.split("rounds\n")[-1]
    assert table.startswith("limit ") and "mocolab            failed in its warm-up" in table
    assert "pil                failed in its timing" in table


def test_augment_library_rows_build_the_same_preset():
    """benchmarks/augment.py's torchvision-v2 row runs the preset it is compared on: with
    preset 'none' it returns the normalised image, and with v1 normalised crops of the size."""
    from dataclasses import replace

    import torch

    from mocolab.augment import pil_transform, preset
    bench = _load_benchmark("augment")
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    x = torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    expected = (x.float() / 255 - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    torch.testing.assert_close(bench.tv2_transform(preset("none", 16), mean, std)(x), expected)
    torch.manual_seed(0)
    views = torch.stack([bench.tv2_transform(preset("v1", 8), mean, std)(x) for _ in range(8)])
    assert views.shape == (8, 3, 8, 8) and views.dtype == torch.float32 and views.std(0).mean() > 0.05

    def names(ops):  # RandomApply named with what it applies
        return [type(t).__name__ + "".join(type(u).__name__ for u in getattr(t, "transforms", [])) for t in ops]

    # the same ops in the same order as the PIL reference, for every preset (blur and solarize too)
    for spec in [preset("v1", 32), preset("v2", 64), preset("cifar", 32), replace(preset("v2", 64), p_solarize=0.2)]:
        ref = [n.replace("ToTensor", "ToDtype") for n in names(pil_transform(spec, mean, std).transforms)]
        assert names(bench.tv2_transform(spec, mean, std).transforms) == ref


def test_bad_inputs_catalogue_runs_and_counts(cifar_dir, tmp_path):
    """benchmarks/bad_inputs.py on two of its cases (the whole catalogue takes minutes)."""
    out = tmp_path / "bad.json"
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks/bad_inputs.py"), "--data", str(cifar_dir),
                          "--only", "budget", "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "0 tracebacks, 0 silent acceptances, 0 other" in res.stdout
    counts = json.loads(out.read_text())["counts"]
    assert counts["one-line error"] == 3 and counts["traceback"] == 0
