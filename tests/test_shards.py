"""Tar shards (webdataset): ImageFolder -> shards -> stream, with labels, once per epoch."""

import json
import shutil
import subprocess
import sys
import warnings

import pytest
import torch
from conftest import cifar_subset

from mocolab.data import decode_to_tensor, scan_folder
from mocolab.shards import ShardStream, write_shards


@pytest.fixture
def small_folder(cifar_dir, tmp_path):
    """3 classes x 9 real CIFAR-10 JPEGs."""
    root = tmp_path / "folder"
    for cls in ("airplane", "cat", "ship"):
        (root / cls).mkdir(parents=True)
        for f in sorted((cifar_dir / "train" / cls).glob("*.jpg"))[:9]:
            shutil.copy(f, root / cls / f.name)
    return root


def _stream(pattern, epoch, workers=2):
    loader = torch.utils.data.DataLoader(ShardStream(pattern, 32).dataset(epoch), batch_size=None, num_workers=workers)
    return [(x, int(y)) for x, y in loader]


def _key(x):
    return x.numpy().tobytes()


def test_shards_round_trip_every_image_once_per_epoch_with_labels(small_folder, tmp_path):
    (pattern,) = write_shards(small_folder, tmp_path / "sh" / "cifar", shard_size=5)
    assert pattern.endswith("cifar-{000000..000005}.tar")  # 27 images in shards of 5
    meta = json.loads((tmp_path / "sh" / "cifar.json").read_text())
    assert (meta["count"] == 27 and meta["counts"] == [5, 5, 5, 5, 5, 2]
            and meta["classes"] == ["airplane", "cat", "ship"])
    ref = decode_to_tensor(scan_folder(small_folder), 32, workers=0, cache_dir=tmp_path / "cache")
    expected = sorted((_key(x), int(y)) for x, y in zip(ref.images, ref.labels, strict=True))
    orders = []
    for epoch in (0, 1):
        got = _stream(pattern, epoch)
        assert sorted((_key(x), y) for x, y in got) == expected  # each image once, with its label
        orders.append([_key(x) for x, _ in got])
    assert orders[0] != orders[1]  # reshuffled every epoch
    assert len(ShardStream(pattern, 32)) == 27
    assert len(ShardStream(pattern.replace("000005}", "000001}"), 32)) == 10  # the listed shards only


def test_shards_split_across_ranks(small_folder, tmp_path, monkeypatch):
    (pattern,) = write_shards(small_folder, tmp_path / "sh" / "c", shard_size=4)
    parts = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        parts.append({_key(x) for x, _ in _stream(pattern, 3, workers=0)})
    assert not parts[0] & parts[1] and len(parts[0] | parts[1]) == 27 and parts[0] and parts[1]


def test_corrupt_sample_is_skipped_with_a_warning(small_folder, tmp_path):
    (small_folder / "cat" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (pattern,) = write_shards(small_folder, tmp_path / "sh" / "c", shard_size=10)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        got = _stream(pattern, 0, workers=0)
    assert len(got) == 27
    assert sum("skipped corrupt sample" in str(m.message) for m in w) == 1


def test_missing_shard_is_a_clear_error(tmp_path):
    from mocolab.data import DataError

    with pytest.raises(DataError, match="shard not found"):
        ShardStream(str(tmp_path / "x-{000000..000002}.tar"), 32)


@pytest.mark.slow
def test_pretrain_streams_shards_from_the_cli(cifar_dir, tmp_path):
    data = cifar_subset(cifar_dir, tmp_path / "data", 48)
    res = subprocess.run([sys.executable, "-m", "mocolab", "shards", "--data", str(data), "--out",
                          str(tmp_path / "sh" / "c"), "--shard-size", "20"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "c-train-{000000..000004}.tar" in res.stdout and "c-test-{000000..000004}.tar" in res.stdout
    res = subprocess.run([sys.executable, "-m", "mocolab", "pretrain",
                          "--data", str(tmp_path / "sh" / "c-train-{000000..000004}.tar"),
                          "--out", str(tmp_path / "run"), "--epochs", "2", "model.width=8", "model.hidden_dim=32",
                          "optim.batch_size=16", "moco.queue_size=64", "data.workers=2", f"data.knn_data={data}"],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 2 * (96 // 16) and 0 <= summary["knn_top1"] <= 100
