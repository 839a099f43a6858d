"""mocolab's API: light to import, the same results as the commands, one-line errors for bad input."""

import json
import subprocess
import sys

import pytest
import torch
from conftest import cifar_subset

import mocolab
from mocolab import cli
from mocolab.errors import UserError


def test_import_is_light_and_lists_the_api():
    code = "import sys, mocolab; print('torch' in sys.modules); print(mocolab.__doc__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.startswith("False") and all(f"``{n}(" in out for n in ("load", "embed", "neighbors", "knn"))
    import mocolab.pretrain  # noqa: F401  the submodule never shadows the function
    assert callable(mocolab.pretrain) and mocolab.pretrain.__module__ == "mocolab.api"


def test_load_random_and_transform():
    model = mocolab.load("random:cifar10_cpu", device="cpu")
    a = mocolab.load("random:cifar10_cpu", device="cpu")
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model(x), a(x))  # seeded init
    assert model.metadata()["method"] == "random init" and not model.backbone.training


def test_knn_is_the_commands(tmp_path, cifar_dir, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # random:PRESET results are written to the current folder
    data = cifar_subset(cifar_dir, tmp_path / "d", 4)
    r = mocolab.knn("random:cifar10_cpu", data, k=5, write=False)
    assert cli.main(["knn", "--checkpoint", "random:cifar10_cpu", "--data", str(data), "--k", "5"]) == 0
    assert f"kNN top-1 {r['knn_top1']:.2f}%" in capsys.readouterr().out


@pytest.mark.parametrize("call,match", [
    (lambda d, t: mocolab.load(t / "missing.pth"), "not found"),
    (lambda d, t: mocolab.load("random:"), "needs a preset"),
    (lambda d, t: mocolab.embed(mocolab.load("random:cifar10_cpu", "cpu"), t / "empty"), "no images found"),
    (lambda d, t: mocolab.embed("random:cifar10_cpu", d, stream="sometimes"), "stream"),
    (lambda d, t: mocolab.knn("random:cifar10_cpu", t / "empty"), "no images found"),
    (lambda d, t: mocolab.pretrain(d, t / "busy"), "holds"),
])
def test_bad_input_is_one_line(tmp_path, cifar_dir, call, match):
    data = cifar_subset(cifar_dir, tmp_path / "d", 2)
    (tmp_path / "empty").mkdir()
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "summary.json").write_text(json.dumps({"epochs": 1}))
    with pytest.raises(UserError) as e:
        call(data, tmp_path)
    assert match in str(e.value) and "\n" not in str(e.value)
