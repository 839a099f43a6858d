"""Errors (issue 18): the user's mistakes are one line (exit code 2); anything else, a bug here or
inside torch, shows its traceback (exit code 1); `--debug` or MOCOLAB_DEBUG=1 shows the traceback
of any error; a result file that cannot be written is an error."""

import errno
import json
from pathlib import Path

import pytest
import torch
from conftest import cifar_subset

from mocolab.cli import main
from mocolab.errors import PathError, UserError, is_user_error
from mocolab.eval.results import write_result

TINY = ["--epochs", "1", "optim.batch_size=8", "model.width=8", "moco.queue_size=32", "model.hidden_dim=32",
        "data.image_size=16", "run.amp=off", "data.workers=0", "run.knn_every=0"]


@pytest.fixture(scope="module")
def small(cifar_dir, tmp_path_factory) -> Path:
    return cifar_subset(cifar_dir, tmp_path_factory.mktemp("errors") / "data", 8)


def test_a_bug_inside_torch_shows_its_traceback(small, tmp_path, monkeypatch, capsys):
    """A ValueError raised inside torch (here: the loss) is not the user's: exit code 1 and the
    traceback down to where it was raised, not a one-line 'mocolab: error:'."""
    def broken(*a, **k):
        raise ValueError("an internal failure inside torch")

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", broken)
    rc = main(["pretrain", "--data", str(small), "--out", str(tmp_path / "run"), *TINY])
    err = capsys.readouterr().err
    assert rc == 1
    assert "Traceback (most recent call last)" in err and "in broken" in err
    assert "ValueError: an internal failure inside torch" in err and "mocolab: error:" not in err
    assert "mocolab: internal error (ValueError)" in err.splitlines()[-1]


def test_a_users_mistake_is_one_line(tmp_path, capsys):
    rc = main(["pretrain", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 2 and err.strip().splitlines() == [f"mocolab: error: data folder not found: {tmp_path / 'missing'}"]


@pytest.mark.parametrize("how", ["--debug first", "--debug last", "MOCOLAB_DEBUG=1"])
def test_debug_shows_the_traceback_of_a_users_mistake(tmp_path, monkeypatch, capsys, how):
    argv = ["pretrain", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "run")]
    if how == "MOCOLAB_DEBUG=1":
        monkeypatch.setenv("MOCOLAB_DEBUG", "1")
    argv = ["--debug", *argv] if how == "--debug first" else [*argv, "--debug"] if how == "--debug last" else argv
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2  # still the user's mistake
    assert "Traceback (most recent call last)" in err and "raise DataError" in err
    assert err.strip().splitlines()[-1] == f"mocolab: error: data folder not found: {tmp_path / 'missing'}"


def test_which_errors_are_the_users():
    from mocolab.checkpoint import CheckpointError
    from mocolab.config import ConfigError
    from mocolab.data import DataError
    from mocolab.runtime import NonFiniteLoss

    for e in (ConfigError("x"), DataError("x"), CheckpointError("x"), NonFiniteLoss("x"), PathError("x"),
              FileNotFoundError(errno.ENOENT, "No such file or directory", "/x"),
              OSError(errno.ENOSPC, "No space left on device", "/x/y.pth")):
        assert is_user_error(e), e
    for e in (ValueError("x"), RuntimeError("x"), KeyError("x"), OSError("a socket closed"), TypeError("x")):
        assert not is_user_error(e), e
    assert isinstance(ConfigError("x"), ValueError) and isinstance(PathError("x"), OSError)  # as before


def test_a_failed_result_write_is_an_error(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(PathError, match=r"could not write the result .*a_file/r\.json.*its top-1: 12\.50%"):
        write_result(blocker / "r.json", {"top1": 12.5})
    ok = write_result(tmp_path / "r.json", {"top1": 12.5})
    assert json.loads(ok.read_text())["top1"] == 12.5


def test_a_protocol_whose_result_cannot_be_written_fails(small, tmp_path, capsys):
    blocker = tmp_path / "a_file"  # --results-dir is a file: the result cannot go there
    blocker.write_text("x")
    rc = main(["linear", "--mode", "cached", "--random-init", "cifar10_cpu", "--data", str(small),
               "--results-dir", str(blocker), "--image-size", "16"])
    err = capsys.readouterr().err
    assert rc == 2 and "mocolab: error: could not write the result" in err and "its top-1" in err
    assert "Traceback" not in err


def test_knn_whose_result_cannot_be_written_fails(small, tmp_path, monkeypatch, capsys):
    """A full disk while the result is written: one line naming the file, no file left behind."""
    import os

    from mocolab import runfiles

    real = runfiles.os.fdopen

    def full_disk(fd, *a, **k):  # the atomic writer's temp file for the kNN result
        if ".knn_" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, *a, **k)

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(runfiles.os, "fdopen", full_disk)
    rc = main(["knn", "--checkpoint", "random:cifar10_cpu", "--data", str(small), "--image-size", "16", "--k", "5"])
    out, err = capsys.readouterr()
    assert rc == 2 and "could not write" in err and ".knn_" in err and "No space left on device" in err
    assert len(err.strip().splitlines()) == 1
    assert not list(tmp_path.glob("*.json")) and not list(tmp_path.glob(".*.tmp*"))


def test_user_errors_share_one_base():
    from mocolab.errors import UsageError
    from mocolab.runtime import check_arguments

    class Args:
        epochs = 0

    with pytest.raises(UsageError, match="--epochs must be positive") as e:
        check_arguments(Args())
    assert isinstance(e.value, UserError) and isinstance(e.value, ValueError)


def test_a_vit_backbone_for_segmentation_is_one_line(tmp_path, capsys):
    from conftest import shared

    rc = main(["segment", "--backbone", "random:cifar10_vit_cpu", "--data", str(shared("camvid")),
               "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "take a ResNet backbone" in err and "Traceback" not in err


def test_a_missing_optional_dependency_names_its_extra(capsys):
    """`pip install mocolab` stays light: a command that needs an extra says which, in one line."""
    from mocolab.cli import report_error

    e = ModuleNotFoundError("No module named 'pycocotools'", name="pycocotools.coco")
    assert report_error(e) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["mocolab: error: pycocotools.coco is not installed; pip install 'mocolab[transfer]'"]
    assert report_error(ModuleNotFoundError("x", name="not_an_extra")) == 1  # a bug, not a missing extra
