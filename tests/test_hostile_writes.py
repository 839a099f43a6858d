"""Full disks, torn files and two processes at once (issue 28): a failed write is one line naming
the file and leaves the previous one; a torn, empty or hand-edited run file is one line; compare
moves a cell aside, never deletes it; one process per run folder; the user's names are plain
text in every figure."""

import errno
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import matplotlib
import pytest
import torch
from conftest import cifar_subset

from mocolab import runfiles
from mocolab.checkpoint import atomic_save, safe_load
from mocolab.cli import main
from mocolab.runtime import check_run_path, lock_run_dir, release_run_dirs

TINY = ["optim.batch_size=8", "model.width=8", "moco.queue_size=32", "model.hidden_dim=32", "data.image_size=16",
        "run.threads=1", "run.amp=off"]


def errors_of(capsys) -> list[str]:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return [line for line in err.splitlines() if line.startswith("mocolab: error:")]


class FullDisk:
    """os.fdopen for runfiles whose files take `room` bytes, then fail with ENOSPC, as a full
    disk does; only for targets whose name contains `match`."""

    def __init__(self, match: str, room: int = 1000):
        self.match, self.room, self.real = match, room, os.fdopen

    def __call__(self, fd, *a, **k):
        f = self.real(fd, *a, **k)
        return _Full(f, self.room) if self.match in os.readlink(f"/proc/self/fd/{fd}") else f


class _Full:
    def __init__(self, f, room):
        self.f, self.room = f, room

    def write(self, b):
        if len(b) > self.room:
            self.f.write(bytes(b[:self.room]))
            self.room = 0
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(b)
        return self.f.write(b)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def debris(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob("*") if ".tmp" in p.name]


# -- the writer ---------------------------------------------------------------------------------
@pytest.mark.parametrize("writer", ["torch", "json", "figure"])
def test_a_full_disk_leaves_the_previous_file_and_no_temp_file(tmp_path, monkeypatch, writer):
    from mocolab.plotting import save, setup

    plt = setup()
    path = tmp_path / {"torch": "ck.pth", "json": "r.json", "figure": "f.png"}[writer]

    def write(value):
        if writer == "torch":
            atomic_save({"x": torch.full((5000,), float(value))}, path)
        elif writer == "json":
            runfiles.write_json(path, {"v": value, "pad": "x" * 5000})
        else:
            fig, ax = plt.subplots()
            ax.plot([0, value])
            save(fig, path)

    write(1)
    before = path.read_bytes()
    monkeypatch.setattr(runfiles.os, "fdopen", FullDisk(path.name))
    with pytest.raises(runfiles.WriteError, match=rf"^could not write {path}: No space left on device"):
        write(2)
    monkeypatch.undo()
    assert path.read_bytes() == before and debris(tmp_path) == []
    write(3)  # space freed: the next write goes through
    assert path.read_bytes() != before and debris(tmp_path) == []


def test_a_real_full_tmpfs(tmp_path):
    """The same on a real 256 KiB tmpfs (the machine runs as root): torch.save's RuntimeError and
    Python's OSError are both one WriteError, the old file intact, no 0-byte file."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs needs root; test_a_full_disk_leaves_the_previous_file covers the same paths")
    try:
        atomic_save({"x": torch.ones(1000)}, mnt / "ck.pth")
        runfiles.write_text(mnt / "index.html", "old")
        with pytest.raises(runfiles.WriteError, match="ck.pth: No space left on device"):
            atomic_save({"x": torch.zeros(200_000)}, mnt / "ck.pth")  # 800 KB
        with pytest.raises(runfiles.WriteError, match="index.html: No space left on device"):
            runfiles.write_text(mnt / "index.html", "x" * 400_000)
        assert torch.equal(safe_load(mnt / "ck.pth")["x"], torch.ones(1000))
        assert (mnt / "index.html").read_text() == "old" and sorted(p.name for p in mnt.iterdir()) == [
            "ck.pth", "index.html"]
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_a_full_disk_during_a_checkpoint_is_one_line_and_the_run_resumes(flat, tmp_path, monkeypatch, capsys,
                                                                         caplog):
    out = tmp_path / "run"
    argv = ["pretrain", "--data", str(flat), "--out", str(out), "--epochs", "2", *TINY, "run.save_every=1"]
    monkeypatch.setattr(runfiles.os, "fdopen", FullDisk("epoch_0002.pth"))
    assert main(argv) == 2
    (line,) = errors_of(capsys)
    assert line.startswith(f"mocolab: error: could not write {out / 'checkpoints' / 'epoch_0002.pth'}: "
                           "No space left on device")
    ck = out / "checkpoints"
    assert safe_load(ck / "epoch_0001.pth")["progress"]["epoch"] == 1  # the previous checkpoint intact
    assert not (ck / "epoch_0002.pth").exists() and debris(out) == []
    monkeypatch.undo()  # space freed
    caplog.set_level(logging.INFO, logger="mocolab")
    assert main([*argv, "--resume", "auto"]) == 0
    assert safe_load(ck / "final.pth")["progress"]["epoch"] == 2
    assert f"resuming from {ck / 'epoch_0001.pth'}" in caplog.text


# -- torn and hand-edited files -----------------------------------------------------------------
@pytest.mark.parametrize("text,why", [("", "is empty"), ('{"a": 1', "is not valid JSON"),
                                      ("[1, 2]", "holds a JSON list, not an object")])
def test_torn_json_is_one_line_naming_it(tmp_path, text, why, caplog):
    path = tmp_path / "summary.json"
    path.write_text(text)
    with pytest.raises(runfiles.RunFileError) as e:
        runfiles.load_json(path)
    assert str(e.value).startswith(str(path)) and why in str(e.value) and "\n" not in str(e.value)
    assert runfiles.read_json(path) == {} and f"{path}" in caplog.text  # the tolerant reader: a warning
    assert runfiles.read_json(tmp_path / "missing.json") == {}


def test_metrics_keep_the_later_record_of_a_repeated_step_and_skip_bad_lines(tmp_path, caplog):
    lines = [json.dumps({"epoch": 0, "step": s, "loss": float(i)}) for i, s in enumerate([2, 4, 6])]
    lines += ['{"loss": 9.0}', "[1, 2]", '{"step": "x", "loss": 1}', json.dumps({"epoch": 0, "step": 4, "loss": 40.0}),
              json.dumps({"epoch": 1, "step": 4, "knn_top1": 30.0}), '{"step": 6, "lo']
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines))
    records, monitors = runfiles.read_metrics(tmp_path / "metrics.jsonl")
    assert [(r["step"], r["loss"]) for r in records] == [(2, 0.0), (4, 40.0)]  # resumed at 4: 4 and 6 replaced
    assert monitors == [{"epoch": 1, "step": 4, "knn_top1": 30.0}]
    assert "metrics.jsonl: skipped 4 line(s)" in caplog.text and "line 4, 5, 6, 9" in caplog.text
    # the sweep reads the same file the same way
    from mocolab.sweep import read_metrics

    steps, knn = read_metrics(tmp_path / "metrics.jsonl")
    assert {s: r["loss"] for s, r in steps.items()} == {2: 0.0, 4: 40.0} and knn == {1: 30.0}


@pytest.mark.parametrize("text", ['{"mean": [0.5, 0.5', ""])
def test_a_torn_backbone_json_is_one_line(tmp_path, capsys, text):
    from mocolab.models.backbones import build_backbone

    net, _ = build_backbone("resnet18", 8, "cifar")
    atomic_save(net.state_dict(), tmp_path / "backbone.pth")
    (tmp_path / "backbone.json").write_text(text)
    assert main(["knn", "--checkpoint", str(tmp_path / "backbone.pth"), "--data", str(tmp_path), "--k", "5"]) == 2
    (line,) = errors_of(capsys)
    assert str(tmp_path / "backbone.json") in line


def test_compare_moves_a_torn_or_stale_cell_aside(tmp_path):
    from mocolab.eval import compare as C
    from mocolab.eval.protocols import Target

    (tmp_path / "r10.yaml").write_text("model: {arch: resnet10, width: 8, stem: imagenet}\n")
    spec = C.TransferSpec("segment", str(tmp_path), "camvid_cpu", ["task.iters=2"])
    tg = Target.from_entry(f"random:{tmp_path / 'r10.yaml'}", tmp_path, 0)
    cell = tmp_path / "cmp" / "transfer" / "segment" / "random_r10" / "seed0"
    (cell / "checkpoints").mkdir(parents=True)
    (cell / "checkpoints" / "step_00000001.pth").write_bytes(b"hours of work")
    (cell / "cell.json").write_text('{"spec": {"task": "seg')  # torn
    calls = []
    res, rc = C.transfer_cell(tg, spec, 0, cell, lambda cmd: calls.append(cmd) or 0)
    (aside,) = cell.parent.glob("seed0.replaced-*")
    assert (aside / "checkpoints" / "step_00000001.pth").read_bytes() == b"hours of work"
    assert (aside / "cell.json").read_text() == '{"spec": {"task": "seg'
    assert len(calls) == 1 and not (cell / "checkpoints").exists()
    assert runfiles.load_json(cell / "cell.json")["spec"]["seed"] == 0  # the new record, whole
    # made for other settings: moved aside too (a second one beside the first)
    (cell / "segment.json").write_text("{}")
    C.transfer_cell(tg, C.TransferSpec("segment", str(tmp_path), "camvid_cpu", ["task.iters=3"]), 0, cell,
                    lambda cmd: 0)
    assert len(list(cell.parent.glob("seed0.replaced-*"))) == 2 and not (cell / "segment.json").exists()


# -- --out ----------------------------------------------------------------------------------------
def test_out_must_be_a_folder_of_its_own(flat, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "keep.txt").write_text("the user's file")
    for out, extra, text in (("", [], "--out is empty"), (".", ["--overwrite"], "--out . is the current folder"),
                             ("..", [], "is a parent of the current folder")):
        assert main(["pretrain", "--data", str(flat), "--out", out, *extra, *TINY]) == 2
        (line,) = errors_of(capsys)
        assert text in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flat", "keep.txt"]  # nothing written, nothing moved
    assert check_run_path("runs/a") == Path("runs/a")


# -- one process per run folder -------------------------------------------------------------------
def test_the_lock_is_reentrant_in_a_process_and_follows_a_replaced_folder(tmp_path):
    lock_run_dir(tmp_path / "a")
    lock_run_dir(tmp_path / "a")  # the same process: a no-op
    assert f"PID {os.getpid()} on host" in (tmp_path / "a" / ".lock").read_text()
    (tmp_path / "a").rename(tmp_path / "b")
    lock_run_dir(tmp_path / "a")  # a new folder under the old name: locked anew
    assert (tmp_path / "a" / ".lock").is_file()
    release_run_dirs()


def _pretrain(data, out, *extra):
    return subprocess.Popen([sys.executable, "-m", "mocolab", "pretrain", "--data", str(data), "--out", str(out),
                             *TINY, "data.workers=0", *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.slow
def test_a_second_process_on_a_run_folder_is_refused_and_kill_9_leaves_no_stale_lock(flat, tmp_path):
    out = tmp_path / "run"
    first = _pretrain(flat, out, "--epochs", "100000")
    try:
        deadline = time.time() + 120
        while f"PID {first.pid} " not in ((out / ".lock").read_text() if (out / ".lock").is_file() else ""):
            assert first.poll() is None and time.time() < deadline, first.communicate()
            time.sleep(0.1)
        second = _pretrain(flat, out, "--epochs", "1")
        _, err = second.communicate(timeout=120)
        errors = [line for line in err.splitlines() if line.startswith("mocolab: error:")]
        assert second.returncode == 2 and "Traceback" not in err and len(errors) == 1, err
        assert f"is in use by another mocolab process (PID {first.pid} on host " in errors[0]
        assert first.poll() is None  # the holder runs on, untouched
    finally:
        first.send_signal(signal.SIGKILL)  # kill -9: no handler runs, the OS drops the lock
        first.communicate(timeout=60)
    third = _pretrain(flat, out, "--epochs", "1", "--overwrite")
    _, err = third.communicate(timeout=300)
    assert third.returncode == 0, err
    assert f"PID {third.pid} " in (out / ".lock").read_text() and (out / "summary.json").is_file()


# -- plain text in figures ------------------------------------------------------------------------
@pytest.mark.slow
def test_report_draws_the_users_names_as_plain_text(cifar_dir, tmp_path, monkeypatch):
    names = ("$\\bogus$", "$5-$10")
    data = cifar_subset(cifar_dir, tmp_path / "src", 4, classes=("airplane", "cat"))
    for split in ("train", "test"):
        for old, new in zip(("airplane", "cat"), names):
            (data / split / old).rename(data / split / new)
    run = tmp_path / "$run$"
    assert main(["pretrain", "--data", str(data), "--out", str(run), "--epochs", "1", *TINY]) == 0
    # hand-edited and older run files: read, or one warning naming the file
    (run / "config.yaml").write_text((run / "config.yaml").read_text().replace("optim:\n", "optim: 5\nold_optim:\n"))
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"loss": 1.0, "note": "no step"}\n')

    from mocolab import plotting

    texts, real = [], plotting.save

    def spy(fig, path, **kw):
        for t in fig.findobj(matplotlib.text.Text):
            if t.get_text():
                texts.append((t.get_text(), t.get_parse_math()))
        return real(fig, path, **kw)

    monkeypatch.setattr(plotting, "save", spy)
    out = tmp_path / "report"
    assert main(["report", str(run), "--data", str(data), "--out", str(out), "--map-points", "8", "--queries", "2",
                 "--neighbours", "2", "--device", "cpu"]) == 0
    drawn = [t for t, _ in texts]
    assert any(names[0] in t for t in drawn) and any(names[1] in t for t in drawn) and any("$run$" in t for t in drawn)
    assert all(parse is False for _, parse in texts)  # every text drawn as written, no mathtext
    pngs = list(out.glob("*.png"))
    assert len(pngs) >= 4 and all(p.stat().st_size > 0 for p in pngs) and debris(out) == []
