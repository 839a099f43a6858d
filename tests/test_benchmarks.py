"""The prepared GPU check runs end to end on the CPU (--dry-run, tiny sizes, real CIFAR JPEGs)
and writes the figures it promises; a GPU session then only has to run it."""

import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import cifar_subset, load_benchmark, shared

ROOT = Path(__file__).resolve().parents[1]




GPU_CHECK_ROWS = ["r18:limit", "r18:compiled", "r18:compiled_cudagraphs", "r18:mocolab", "r18:mocolab_compiled",
                  "r18:official", "r18:peer", "r18:limit_e2e", "r18:e2e", "r18:limit_bank", "r18:bank",
                  "v3_vit_s16_224", "pretrain_r18", "linear_paper", "knn_stream", "detect_fpn", "detect_c4",
                  "segment_deeplabv3",
                  "torchrun", "ckpt_to_cpu"]


def tiny_devdata(cifar_dir: Path, dest: Path) -> Path:
    """The three packs gpu_check.sh reads, tiny: 24 CIFAR images a class and split (2 classes), 4 + 2
    BCCD images, 4 + 2 CamVid pairs (real files, through pack_data's own functions)."""
    pd = load_benchmark("pack_data")
    src = cifar_subset(cifar_dir, dest / "c10", 24)
    pd.write_pack(pd.image_folder(src), dest / "cifar10.pack")
    pd.write_pack(pd.voc_subset(shared("bccd/BCCD"), 4, 2), dest / "bccd.pack")
    pd.write_pack(pd.seg_subset(shared("camvid"), 4, 2), dest / "camvid.pack")
    return dest


@pytest.mark.slow
def test_gpu_check_dry_run_passes_every_row(cifar_dir, tmp_path):
    """The GPU check's rows, every command, on tiny data on the CPU (about a minute): each passes
    (lightly's row may be skipped where it is not installed) with a figure, and the table is written."""
    devdata = tiny_devdata(cifar_dir, tmp_path / "devdata")
    out = tmp_path / "out"
    res = subprocess.run(["bash", str(ROOT / "benchmarks/gpu_check.sh"), "--dry-run", "--device", "cpu",
                          "--out", str(out), "--devdata", str(devdata)],
                         capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHON": sys.executable})
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-3000:]
    assert "torch" in (out / "env.txt").read_text()
    report = json.loads((out / "gpu_check.json").read_text())
    rows = {r["row"]: r for r in report["rows"]}
    assert list(rows) == GPU_CHECK_ROWS and report["dry_run"] and not report["failed"]
    for name, r in rows.items():
        if name == "r18:peer" and r["status"] == "SKIP":
            assert "lightly" in r["note"]
            continue
        assert r["status"] == "PASS" and r["img_s"] > 0 and r["peak_mb"] > 0, r
    assert "gloo" in rows["torchrun"]["note"] and "on the CPU" in rows["ckpt_to_cpu"]["note"]
    table = (out / "gpu_check.md").read_text()
    assert "| detect_c4 | PASS |" in table and table.rstrip().endswith("all rows passed")


def test_gpu_check_reports_a_failing_row_and_goes_on(tmp_path, capsys):
    """A row that raises or runs past its time is FAIL, named with its error; the next row runs;
    the exit status is 1."""
    import time

    gc = load_benchmark("gpu_check")
    check = gc.Check(gc.argparse.Namespace(dry_run=True, device="cpu", out=str(tmp_path), devdata="", data_dir=None))

    def broken():
        raise ValueError("no such thing")

    check.row("a", broken)
    check.row("b", lambda: time.sleep(5), timeout=1)
    check.row("c", lambda: {"img_s": 12.5, "note": "fine"})
    check.work.rmdir()
    assert check.report(3.0) == 1
    rows = {r["row"]: r for r in json.loads((tmp_path / "gpu_check.json").read_text())["rows"]}
    assert rows["a"]["status"] == "FAIL" and "ValueError: no such thing" in rows["a"]["note"]
    assert rows["b"]["status"] == "FAIL" and "stopped after 1 s" in rows["b"]["note"] and rows["b"]["seconds"] < 4
    assert rows["c"]["status"] == "PASS" and rows["c"]["img_s"] == 12.5
    assert "FAILED: a, b" in capsys.readouterr().out


def test_gpu_check_installs_the_carried_wheels_it_lacks(tmp_path, monkeypatch):
    """A wheel in DEVDATA/wheels/ whose module this python lacks is installed into the work folder
    (not the system), importable here and on the children's PYTHONPATH; one it has is left alone."""
    import zipfile

    gc = load_benchmark("gpu_check")
    wheels = tmp_path / "devdata/wheels"
    wheels.mkdir(parents=True)

    def wheel(name: str, body: str) -> None:  # a minimal pure-python wheel, written by hand
        info = f"{name}-1.0.dist-info"
        files = {f"{name}/__init__.py": body,
                 f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n",
                 f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
        files[f"{info}/RECORD"] = "".join(f"{f},,\n" for f in [*files, f"{info}/RECORD"])
        with zipfile.ZipFile(wheels / f"{name}-1.0-py3-none-any.whl", "w") as z:
            for f, text in files.items():
                z.writestr(f, text)
    wheel("mocolab_carried_extra", "VALUE = 42\n")
    wheel("json", "raise ImportError('must not replace an installed module')\n")
    monkeypatch.setattr(gc.sys, "path", list(gc.sys.path))
    check = gc.Check(gc.argparse.Namespace(dry_run=True, device="cpu", out=str(tmp_path / "out"),
                                           devdata=str(tmp_path / "devdata"), data_dir=None))
    try:
        check.extras()
        site = check.work / "site"
        assert (site / "mocolab_carried_extra/__init__.py").is_file() and not (site / "json").exists()
        assert str(site) in check.child_env()["PYTHONPATH"].split(os.pathsep)
        assert importlib.import_module("mocolab_carried_extra").VALUE == 42
    finally:
        sys.modules.pop("mocolab_carried_extra", None)
        shutil.rmtree(check.work, ignore_errors=True)


def test_pack_data_round_trip_and_subsets(tmp_path):
    """Packs unpack byte for byte; the VOC subset lists exactly its images; a path out of the
    destination is refused."""
    pd = load_benchmark("pack_data")
    voc = shared("bccd/BCCD")
    entries = pd.voc_subset(voc, 3, 2)
    pd.write_pack(entries, tmp_path / "bccd.pack")
    pd.unpack(tmp_path / "bccd.pack", tmp_path / "bccd")
    trainval = (tmp_path / "bccd/ImageSets/Main/trainval.txt").read_text().split()
    assert trainval == (voc / "ImageSets/Main/trainval.txt").read_text().split()[:3]
    for name in trainval:
        assert (tmp_path / f"bccd/JPEGImages/{name}.jpg").read_bytes() == (voc / f"JPEGImages/{name}.jpg").read_bytes()
    assert len(list((tmp_path / "bccd/Annotations").glob("*.xml"))) == 5
    seg = pd.seg_subset(shared("camvid"), 2, 1)
    assert [p.split("/")[1] for p, _ in seg] == ["images", "masks"] * 3
    pd.write_pack([("../evil.txt", b"x")], tmp_path / "evil.pack")
    with pytest.raises(SystemExit, match="refusing"):
        pd.unpack(tmp_path / "evil.pack", tmp_path / "dst")
    assert not (tmp_path / "evil.txt").exists()


def test_throughput_reports_a_failing_row_and_measures_the_others(cifar_dir, tmp_path, monkeypatch, capsys):
    """A row that fails to build, in its warm-up or while timed (a compile mode on some GPU) is
    named in the table and the JSON; the other rows are still measured side by side."""
    tp = load_benchmark("throughput")
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
    bench = load_benchmark("augment")
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
