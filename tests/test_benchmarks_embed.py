"""benchmarks/embed_memory.py: the folders it builds and what it reads of a process (no embedding here:
a child `mocolab embed` is the benchmark's own run, far slower than a test)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("embed_memory", ROOT / "benchmarks" / "embed_memory.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def fake_cifar(root: Path, per_split: int = 3) -> Path:
    """root/{train,test}/{a,b}/<i>.jpg: per_split tiny files per class and split (the bytes name the file)."""
    for split in ("train", "test"):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
            for i in range(per_split):
                (root / split / cls / f"{i:04d}.jpg").write_text(f"{split}/{cls}/{i}")
    return root


def test_build_cycles_through_each_class_under_distinct_names(bench, tmp_path):
    cifar = fake_cifar(tmp_path / "cifar")
    dest = bench.build(cifar, tmp_path / "bench", 20)  # 10 per class, from 6 sources per class
    for cls in ("a", "b"):
        links = sorted((dest / cls).iterdir())
        assert [p.name for p in links] == [f"{i:07d}.jpg" for i in range(10)]
        assert all(p.is_symlink() for p in links)
        targets = [p.resolve() for p in links]
        assert all(t.parent.name == cls for t in targets)  # the label is the source's class
        assert len(set(targets)) == 6 and targets[6:] == targets[:4]  # every source once, then again
    assert not any(p.is_file() and not p.is_symlink() for p in dest.rglob("*.jpg"))  # links, never copies


def test_build_reuses_a_complete_folder_and_redoes_an_incomplete_one(bench, tmp_path):
    cifar = fake_cifar(tmp_path / "cifar")
    dest = bench.build(cifar, tmp_path / "bench", 8)
    (dest / "a" / "0000000.jpg").unlink()
    assert bench.build(cifar, tmp_path / "bench", 8) == dest
    assert not (dest / "a" / "0000000.jpg").exists()  # complete: reused as it is
    (dest / ".complete").unlink()
    bench.build(cifar, tmp_path / "bench", 8)
    assert (dest / "a" / "0000000.jpg").is_symlink()


def test_status_and_slope(bench):
    st = bench._status(os.getpid())
    assert st["RssAnon"] > 1 and st["RssFile"] > 0  # MB of this very process
    assert bench._status(2**22 + 12345) == {}  # no such process
    assert bench.slope([10_000, 50_000, 200_000], [500, 520, 580]) == pytest.approx(40 / 95 * 100 * 1.0, rel=0.05)
    assert bench.slope([10_000], [500]) == 0.0


def test_wrapper_reports_the_peak_at_exit(bench):
    """The wrapper's STATUS line, from a child that exits by SystemExit (as argparse and main do)."""
    code = bench.WRAPPER.replace("from mocolab.cli import main\nsys.exit(main())\n", "sys.exit(3)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 3
    line = next(x for x in r.stderr.splitlines() if x.startswith("STATUS "))
    fields = dict(kv.split(":") for kv in line.split()[1:])
    assert set(fields) == {"VmHWM", "VmRSS", "RssAnon", "RssFile"}
    assert int(fields["VmHWM"].rstrip("kB")) >= int(fields["VmRSS"].rstrip("kB")) > 0
