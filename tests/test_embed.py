"""`mocolab embed` and mocolab.embed: features with relative paths and labels, in every format,
streamed or in memory (the same numbers), never over an existing file; one-line errors."""

import csv

import numpy as np
import pytest
import torch
from conftest import cifar_subset
from PIL import Image
from safetensors import safe_open

import mocolab
from mocolab import cli
from mocolab.embeddings import read_embeddings, write_embeddings
from mocolab.errors import UserError


@pytest.fixture(scope="module")
def labeled(tmp_path_factory, cifar_dir):
    return cifar_subset(cifar_dir, tmp_path_factory.mktemp("emb"), 3)  # train/test x airplane/cat x 3


@pytest.fixture(scope="module")
def model():
    return mocolab.load("random:cifar10_cpu", device="cpu")


def test_paths_labels_and_streaming_agree(labeled, model, tmp_path):
    mem = mocolab.embed(model, labeled, stream="off", workers=0, amp="off")  # float32, as model(x) below
    assert mem.features.shape == (12, 128) and len(mem.paths) == 12
    assert mem.paths[0].startswith("train/airplane/") and mem.paths[-1].startswith("test/cat/")
    assert mem.labels.tolist() == [0, 0, 0, 1, 1, 1] * 2 and mem.classes == ["airplane", "cat"]
    assert torch.allclose(mem.features.norm(dim=1), torch.ones(12), atol=1e-5)
    with mocolab.embed(model, labeled, stream="on", workers=0, store_dir=tmp_path, amp="off") as disk:
        assert disk._store.on_disk and disk.paths == mem.paths
        assert torch.equal(disk.features, mem.features)  # the same pixels and network: the same numbers
    # one image by hand, through the model's eval transform: the same feature
    x = model.transform(Image.open(labeled / mem.paths[4])).unsqueeze(0)
    f = torch.nn.functional.normalize(model(x), dim=1)
    assert torch.allclose(f[0], mem.features[4], atol=1e-4)


def test_unreadable_image_drops_its_path(tmp_path, model):
    for i in range(3):
        Image.fromarray(np.full((36, 36, 3), 40 * i, np.uint8)).save(tmp_path / f"a{i}.png")
    (tmp_path / "a1.png").write_bytes(b"not an image")
    with pytest.warns(UserWarning, match="a1.png"):
        emb = mocolab.embed(model, tmp_path, workers=0)
    assert emb.paths == ["a0.png", "a2.png"] and emb.labels is None and emb.features.shape[0] == 2


@pytest.mark.parametrize("suffix", [".safetensors", ".npy"])
def test_formats_round_trip(labeled, model, tmp_path, suffix):
    emb = mocolab.embed(model, labeled, workers=0)
    out = tmp_path / f"e{suffix}"
    written = write_embeddings(emb, out)
    back = read_embeddings(out)
    assert torch.equal(back.features, emb.features) and back.paths == emb.paths
    assert torch.equal(back.labels, emb.labels) and back.classes == emb.classes
    if suffix == ".safetensors":  # the safetensors library reads the streamed layout
        with safe_open(str(out), framework="pt") as f:
            assert set(f.keys()) == {"features", "labels"} and "paths" in f.metadata()
    else:
        assert written[1] == out.with_suffix(".csv")
        rows = list(csv.DictReader(open(written[1])))
        assert rows[0]["class"] == "airplane" and rows[0]["path"] == emb.paths[0]
    with pytest.raises(UserError, match="--overwrite"):
        write_embeddings(emb, out)
    write_embeddings(emb, out, overwrite=True)


def test_parquet_needs_pyarrow_or_writes(labeled, model, tmp_path):
    emb = mocolab.embed(model, labeled, workers=0)
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        with pytest.raises(UserError, match="pip install pyarrow"):
            write_embeddings(emb, tmp_path / "e.parquet")
        return
    write_embeddings(emb, tmp_path / "e.parquet")
    back = read_embeddings(tmp_path / "e.parquet")
    assert torch.equal(back.features, emb.features) and back.paths == emb.paths


def test_cli(labeled, tmp_path, capsys):
    out = tmp_path / "e.safetensors"
    argv = ["embed", "random:cifar10_cpu", "--data", str(labeled / "train"), "--out", str(out), "--quiet",
            "--workers", "0"]
    assert cli.main(argv) == 0
    assert "6 images x 128 features, 2 classes" in capsys.readouterr().out
    before = out.read_bytes()
    assert cli.main(argv) == 2  # never replaced without --overwrite
    err = capsys.readouterr().err.strip()
    assert err.startswith("mocolab: error:") and "--overwrite" in err and "\n" not in err
    assert out.read_bytes() == before
    assert cli.main(argv + ["--overwrite"]) == 0


@pytest.mark.parametrize("what,match", [("source", "not found"), ("empty", "no images found"),
                                        ("suffix", "*.safetensors")])
def test_cli_bad_input(labeled, tmp_path, capsys, what, match):
    (tmp_path / "empty").mkdir()
    src = str(tmp_path / "nope.pth") if what == "source" else "random:cifar10_cpu"
    data = tmp_path / "empty" if what == "empty" else labeled
    out = tmp_path / ("e.txt" if what == "suffix" else "e.safetensors")
    assert cli.main(["embed", src, "--data", str(data), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mocolab: error:") and match in err and "\n" not in err
    assert not out.exists()
