"""The command line, end to end, on real CIFAR-10 JPEGs (small subsets); a real `python -m mocolab`
process for a one-line error and for a training run, the other cases in this process."""

import io
import json
import subprocess
import sys

import pytest
import torch
from conftest import cifar_subset
from PIL import Image

from mocolab.cli import main
from mocolab.models.backbones import torchvision_model

FAST = ["model.width=8", "model.hidden_dim=64", "data.limit=320", "optim.batch_size=64", "run.log_every=2",
        "moco.queue_size=256"]


@pytest.mark.slow
def test_pretrain_smoke_then_knn_and_export(cifar_dir, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["pretrain", "--preset", "cifar10_cpu", "--data", str(cifar_dir), "--out", str(out),
               "--epochs", "2", *FAST])
    assert rc == 0
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "backbone.pth", "backbone.json",
                 "checkpoints/final.pth", "checkpoints/epoch_0002.pth"):
        assert (out / name).exists(), name
    assert list((out / "tb").iterdir())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs"] == 2 and summary["steps"] == 10
    assert 10.0 <= summary["knn_top1"] <= 100.0 and summary["knn_features"] == "backbone"
    assert summary["images_per_second"] > 0 and summary["wall_seconds"] > 0
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["step"] == 10 and all("loss" in r for r in lines)
    # the export loads with strict=True into the matching torchvision model
    tv = torchvision_model("resnet10", 8, "cifar")  # the preset's backbone
    tv.load_state_dict(torch.load(out / "backbone.pth", weights_only=True), strict=True)
    # kNN from the checkpoint and from the export agree with the run's own figure
    capsys.readouterr()
    for ck in ("checkpoints/final.pth", "backbone.pth"):
        assert main(["knn", "--checkpoint", str(out / ck), "--data", str(cifar_dir), "--limit", "320"]) == 0
        assert f"kNN top-1 {summary['knn_top1']:.2f}%" in capsys.readouterr().out
    assert main(["knn", "--checkpoint", str(out / "checkpoints/final.pth"), "--data", str(cifar_dir),
                 "--limit", "320", "--features", "head"]) == 0
    assert "head features" in capsys.readouterr().out
    # resume continues the run to 3 epochs
    assert main(["pretrain", "--data", str(cifar_dir), "--out", str(out), "--resume", "auto", "--epochs", "3"]) == 0
    assert json.loads((out / "summary.json").read_text())["steps"] == 15


def _run_cli(*args):
    return subprocess.run([sys.executable, "-m", "mocolab", *args], capture_output=True, text=True, timeout=300)


def _one_line_error(res, text):
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("mocolab: error:")]
    assert len(errors) == 1 and text in errors[0], res.stderr


def test_wrong_path_is_one_clear_line(tmp_path):
    res = _run_cli("pretrain", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o"))
    _one_line_error(res, "data folder not found")


def _in_process_error(capsys, argv, text):
    """The same one-line error through cli.main in this process (no interpreter start-up)."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("mocolab: error:")]
    assert len(errors) == 1 and text in errors[0], err


def test_empty_folder_is_one_clear_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    _in_process_error(capsys, ["pretrain", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "o")],
                      "no images found")


def test_bad_preset_and_key_are_one_clear_line(tmp_path, capsys):
    _in_process_error(capsys, ["pretrain", "--preset", "nope", "--data", ".", "--out", str(tmp_path)],
                      "unknown preset 'nope'")
    _in_process_error(capsys, ["pretrain", "--data", ".", "--out", str(tmp_path), "optim.lrr=2"],
                      "unknown config key")


@pytest.mark.slow
def test_folder_with_a_corrupt_jpeg_warns_and_trains(cifar_dir, tmp_path):
    data = cifar_subset(cifar_dir, tmp_path / "data", 40)
    (data / "train" / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    res = _run_cli("pretrain", "--data", str(data), "--out", str(tmp_path / "o"), "--epochs", "1",
                   "optim.batch_size=16", "model.width=8", "moco.queue_size=64", "model.hidden_dim=32")
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    warn = [line for line in res.stderr.splitlines() if "broken.jpg" in line]
    assert len(warn) == 1 and warn[0].startswith("warning: skipped unreadable image")
    assert "skipped 1 unreadable image(s) out of 81" in res.stderr


def test_unlabeled_folder_pretrains_without_knn(tmp_path, caplog):
    (tmp_path / "flat").mkdir()
    for i in range(20):
        Image.new("RGB", (20, 20), (i * 10, 50, 100)).save(tmp_path / "flat" / f"{i}.png")
    rc = main(["pretrain", "--data", str(tmp_path / "flat"), "--out", str(tmp_path / "o"), "--epochs", "1",
               "optim.batch_size=8", "model.width=8", "moco.queue_size=32", "model.hidden_dim=32"])
    assert rc == 0
    assert "kNN skipped" in caplog.text
    assert "knn_top1" not in json.loads((tmp_path / "o" / "summary.json").read_text())


def test_a_closed_stdout_stops_quietly(monkeypatch, capsys):
    """`mocolab ... | head -1`: the reader closes the pipe; no traceback, exit 141 as in a shell."""

    class ClosedPipe:
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            pass

        def fileno(self):  # as a captured stream's
            raise io.UnsupportedOperation("fileno")

    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert main(["presets"]) == 141
    assert capsys.readouterr().err == ""
