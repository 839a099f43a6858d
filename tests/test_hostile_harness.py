"""The bad-input and fuzz harnesses (issue 28) judge what they are shown: a traceback, an exception at
the exit, a quiet stop on a closed pipe; the in-process `detect` path of the fuzz catches what a
process would show; the held-lock inputs really are held (and the killed holder's lock is not)."""

import subprocess
import sys
import warnings

import pytest
from conftest import load_benchmark

from mocolab import cli
from mocolab.runtime import RunFolderBusy, lock_run_dir, release_run_dirs

bad_inputs = load_benchmark("bad_inputs")
fuzz = load_benchmark("fuzz_annotations")


def _done(rc: int, stderr: str, stdout: str = "") -> subprocess.CompletedProcess:
    return subprocess.CompletedProcess([], rc, stdout, stderr)


# ---- bad_inputs.classify ------------------------------------------------------------------------
@pytest.mark.parametrize("rc, stderr, expected, outcome", [
    (2, "mocolab: error: x is in use by another mocolab process (PID 5 on host h): wait\n", "error", "one-line error"),
    (2, "mocolab: error: x is in use by another mocolab process (PID 6 on host h): wait\n", "error", "other"),
    (0, "", "error", "silent acceptance"),
    (141, "", "quiet", "stopped quietly"),
    (0, "mocolab: 2 cells\n", "quiet", "stopped quietly"),
    # before a fix: the flush at the exit fails, or the print in the command does
    (120, "Exception ignored in: <_io.TextIOWrapper name='<stdout>'>\nBrokenPipeError: [Errno 32] Broken pipe\n",
     "quiet", "traceback"),
    (1, "Traceback (most recent call last):\nBrokenPipeError: [Errno 32]\nmocolab: internal error\n", "quiet",
     "traceback"),
    (1, "mocolab: error: cannot write: Broken pipe\n", "quiet", "other"),
    (0, "", "ok", "other"),
])
def test_bad_inputs_classify(rc, stderr, expected, outcome):
    text = "(PID 5 on host h)" if expected == "error" else ""
    assert bad_inputs.classify(_done(rc, stderr), expected, "done:" if expected == "ok" else text) == outcome


def test_bad_inputs_held_and_killed_run_folders(tmp_path):
    holders = []
    try:
        places = bad_inputs.make_held_inputs(tmp_path, holders)
        with pytest.raises(RunFolderBusy, match=f"in use by another mocolab process \\({places['HOLDER']}\\)"):
            lock_run_dir(places["HELD"])
        lock_run_dir(places["KILLED"])  # kill -9 left the file, not the lock
        assert "PID " in places["HOLDER"] and holders[0].poll() is None
    finally:
        release_run_dirs()
        for proc in holders:
            proc.kill()
            proc.communicate(timeout=60)


def test_bad_inputs_closed_stdout_case_runs_the_command_with_stdout_closed(tmp_path):
    """`| head -n 0`: the command's stdout has no reader from the start; NAME=VALUE sets its environment."""
    res = bad_inputs.run_case(["PYTHONUNBUFFERED=1", "presets", "|", "head", "-n", "0"], tmp_path)
    assert res.stdout == ""
    assert res.returncode == 141 or "BrokenPipeError" in res.stderr  # 141: cli.main stopped quietly
    with pytest.raises(ValueError, match="only `| head -n 0`"):
        bad_inputs.run_case(["presets", "|", "head", "-3"], tmp_path)


# ---- fuzz_annotations: detect through mocolab.cli.main in-process --------------------------------
def test_fuzz_in_process_run_sees_errors_tracebacks_and_every_warning(monkeypatch):
    streams = sys.stdout, sys.stderr
    rc, err = fuzz.run_in_process(["knn", "--checkpoint", "/nonexistent/x.pth", "--data", "/nonexistent"])
    assert fuzz.classify(rc, err)[0] == "one-line error", err

    def boom(args):
        warnings.warn("skipped x.jpg: broken", UserWarning, stacklevel=1)
        raise RuntimeError("a bug")

    monkeypatch.setattr(cli, "cmd_presets", boom)
    for _ in range(2):  # the same warning, at the same line, is shown by each call
        rc, err = fuzz.run_in_process(["presets"])
        assert rc == 1 and "warning: skipped x.jpg: broken" in err
        assert fuzz.classify(rc, err) == ("traceback", "mocolab: internal error (RuntimeError): the traceback "
                                                       "above says where; please report it with the command line")
    rc, err = fuzz.run_in_process(["presets", "--bogus"])  # argparse's SystemExit
    assert rc == 2 and fuzz.classify(rc, err) == ("one-line error", "mocolab: error: unrecognized arguments: --bogus")
    assert (sys.stdout, sys.stderr) == streams  # put back as they were
