"""Model folders: `mocolab export --format folder` (model.safetensors, config.json, README.md
model card), read back by mocolab.load, `mocolab knn` and hubconf.py (torch.hub, source="local")."""

import json
from pathlib import Path

import pytest
import torch
from conftest import cifar_subset

import mocolab
from mocolab import cli
from mocolab.errors import UserError
from mocolab.models.backbones import build_backbone

ROOT = Path(__file__).resolve().parents[1]
CIFAR_MEAN, CIFAR_STD = [0.4914, 0.4822, 0.4465], [0.247, 0.243, 0.261]


@pytest.fixture
def run(tmp_path):
    """A finished run folder: backbone.pth + .json, summary.json with the kNN monitor, a kNN result
    beside the weights and a segment run beside the run that fine-tuned it."""
    torch.manual_seed(0)
    net, _ = build_backbone("resnet10", 8, "cifar")
    run = tmp_path / "runs" / "r1"
    run.mkdir(parents=True)
    torch.save(net.state_dict(), run / "backbone.pth")
    (run / "backbone.json").write_text(json.dumps({"arch": "resnet10", "width": 8, "stem": "cifar", "image_size": 32,
                                                   "mean": CIFAR_MEAN, "std": CIFAR_STD, "method": "MoCo v2"}))
    (run / "summary.json").write_text(json.dumps({"epochs": 12.0, "knn_top1": 61.25, "knn_k": 200}))
    (run / "command.json").write_text(json.dumps({"command": "pretrain", "data": "/data/cifar10"}))
    (run / "backbone.knn.seed0.abcd1234.json").write_text(json.dumps(
        {"protocol": "knn", "top1": 60.5, "data": "/data/cifar10"}))
    seg = tmp_path / "runs" / "seg"
    seg.mkdir()
    (seg / "segment.json").write_text(json.dumps({"task": "segment", "mIoU": 33.3, "head": "fcn", "seed": 0,
                                                  "backbone": {"source": str(run / "backbone.pth")}}))
    return run, net


def test_export_folder_and_load_everywhere(run, tmp_path, capsys, cifar_dir):
    run_dir, net = run
    out = tmp_path / "shared_model"
    assert cli.main(["export", str(run_dir), "--format", "folder", "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["arch"], cfg["width"], cfg["stem"], cfg["method"], cfg["epochs"]) == ("resnet10", 8, "cifar",
                                                                                      "MoCo v2", 12.0)
    assert (cfg["mean"], cfg["std"], cfg["data"], cfg["feature_dim"]) == (CIFAR_MEAN, CIFAR_STD, "/data/cifar10", 64)
    card = (out / "README.md").read_text()
    for text in ("61.25", "60.50", "33.30", "segment", "mocolab pretrain --data /data/cifar10", "mocolab.load"):
        assert text in card, text

    model = mocolab.load(out, device="cpu")  # the folder, with no run beside it
    assert (model.arch, model.width, model.method, model.epochs, model.mean) == ("resnet10", 8, "MoCo v2", 12.0,
                                                                                 CIFAR_MEAN)
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(model(x), net.eval()(x), atol=1e-6)

    hub = torch.hub.load(str(ROOT), "backbone", weights=str(out), source="local")
    assert torch.allclose(hub(x), net(x), atol=1e-6) and hub.mocolab_meta["arch"] == "resnet10"

    data = cifar_subset(cifar_dir, tmp_path / "d", 3)
    r = mocolab.knn(out, data, k=3)  # `mocolab knn --checkpoint FOLDER`: the result beside model.safetensors
    assert r["train_size"] == 6 and Path(r["result_file"]).parent == out


def test_export_folder_refuses_existing_and_replaces_with_overwrite(run, tmp_path, capsys):
    run_dir, _ = run
    out = tmp_path / "m"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    argv = ["export", str(run_dir), "--format", "folder", "--out", str(out)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "--overwrite" in err and "\n" not in err and (out / "mine.txt").read_text() == "keep"
    assert cli.main(argv + ["--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert not list(tmp_path.glob(".m*"))  # no temporary folder left


def test_folder_without_weights_is_one_line(tmp_path, capsys):
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "config.json").write_text("{}")
    with pytest.raises(UserError) as e:
        mocolab.load(tmp_path / "f")
    assert "model.safetensors" in str(e.value) and "\n" not in str(e.value)
