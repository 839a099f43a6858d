import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mocolab.data import DataError, decode_to_tensor, load_image, load_splits, scan_folder


def _img(path, mode="RGB", size=(12, 10), fmt=None):
    arr = (np.random.default_rng(0).random((size[1], size[0], 3)) * 255).astype(np.uint8)
    im = Image.fromarray(arr).convert(mode) if mode != "I;16" else Image.fromarray(arr[..., 0].astype(np.uint16) * 257)
    im.save(path, format=fmt)


def test_labeled_and_unlabeled_folders(tmp_path):
    for c in ("cat", "dog"):
        (tmp_path / "lab" / c).mkdir(parents=True)
        for i in range(3):
            _img(tmp_path / "lab" / c / f"{i}.png")
    (tmp_path / "flat").mkdir()
    for i in range(4):
        _img(tmp_path / "flat" / f"{i}.jpg")
    lab, flat = scan_folder(tmp_path / "lab"), scan_folder(tmp_path / "flat")
    assert lab.classes == ["cat", "dog"] and lab.labels == [0, 0, 0, 1, 1, 1]
    assert not flat.labeled and flat.labels == [-1] * 4
    d = decode_to_tensor(flat, 8, workers=0)
    assert d.images.shape == (4, 3, 8, 8) and d.images.dtype == torch.uint8


def test_file_lists_hold_str_and_give_paths_in_path_order(tmp_path):
    """FileList.files holds str (a Path costs ~400 B a file) but hands out Path objects, in the order
    sorted Path objects had; slices and + stay Paths; it pickles (DataLoader workers) as the str list."""
    import pickle

    from mocolab.data import Paths

    names = ["b.jpg", "b-c.jpg", "B.png", "a b.jpg", "a.jpeg", "\u00e9t\u00e9.jpg", "b_1.jpg", "10.jpg", "9.jpg"]
    (tmp_path / "flat").mkdir()
    for n in names:
        _img(tmp_path / "flat" / n)
    (tmp_path / "flat" / ".hidden.jpg").write_bytes(b"x")
    (tmp_path / "flat" / "notes.txt").write_text("x")
    fl = scan_folder(tmp_path / "flat")
    assert isinstance(fl.files, Paths) and isinstance(fl.files._s[0], str)
    assert list(fl.files) == sorted(tmp_path / "flat" / n for n in names)  # Path order, Path objects
    assert isinstance(fl.files[0], Path) and fl.files[0] == sorted(tmp_path / "flat" / n for n in names)[0]
    assert isinstance(fl.files[2:5], Paths) and list(fl.files[2:5]) == list(fl.files)[2:5]
    both = fl.files + [tmp_path / "x.jpg"]
    assert len(both) == len(names) + 1 and both[-1] == tmp_path / "x.jpg" and fl.files == list(fl.files)
    assert pickle.loads(pickle.dumps(fl.files)) == fl.files
    labeled = tmp_path / "lab"
    for c, n in (("a", "x-y.png"), ("a", "x/y.png"), ("b", "z.png")):
        (labeled / c / n).parent.mkdir(parents=True, exist_ok=True)
        _img(labeled / c / n)
    lab = scan_folder(labeled)
    assert list(lab.files) == sorted((labeled / "a").rglob("*.png")) + [labeled / "b/z.png"]
    assert lab.labels == [0, 0, 1]


def test_limit_is_class_balanced(tmp_path):
    for c in ("a", "b", "c"):
        (tmp_path / c).mkdir()
        for i in range(5):
            _img(tmp_path / c / f"{i}.png")
    fl = scan_folder(tmp_path, limit=6)
    assert sorted(fl.labels) == [0, 0, 1, 1, 2, 2]


@pytest.mark.parametrize("mode", ["CMYK", "RGBA", "L", "P", "I;16"])
def test_image_modes_become_rgb(tmp_path, mode):
    path = tmp_path / ("x.tif" if mode == "CMYK" else "x.png")
    _img(path, mode)
    im = load_image(path)
    assert im.mode == "RGB" and im.size == (12, 10)
    if mode == "I;16":
        assert np.asarray(im).max() > 128  # scaled to 8 bits, not clipped to white or black


def test_corrupt_files_are_skipped_with_a_warning_each_and_a_count(tmp_path):
    (tmp_path / "c").mkdir()
    for i in range(3):
        _img(tmp_path / "c" / f"{i}.jpg", fmt="JPEG")
    good = (tmp_path / "c" / "0.jpg").read_bytes()
    (tmp_path / "c" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (tmp_path / "c" / "empty.jpg").write_bytes(b"")
    (tmp_path / "c" / "text.png").write_text("not an image")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        d = decode_to_tensor(scan_folder(tmp_path), 8, workers=0, cache_dir=tmp_path / "cache")
    msgs = [str(x.message) for x in w]
    assert len(d) == 3
    for name in ("truncated.jpg", "empty.jpg", "text.png"):
        assert sum(name in m for m in msgs) == 1, msgs
    assert any("skipped 3 unreadable image(s) out of 6" in m for m in msgs)


def test_tiny_and_large_images(tmp_path):
    (tmp_path / "a").mkdir()
    _img(tmp_path / "a" / "one.png", size=(1, 1))
    _img(tmp_path / "a" / "big.png", size=(3000, 2000))
    d = decode_to_tensor(scan_folder(tmp_path), 16, workers=0, cache_dir=tmp_path / "cache")
    assert d.images.shape == (2, 3, 16, 16)


def test_bad_paths(tmp_path):
    with pytest.raises(DataError, match="data folder not found"):
        load_splits(str(tmp_path / "nope"), 32)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images found"):
        load_splits(str(tmp_path / "empty"), 32)
    (tmp_path / "classes" / "a").mkdir(parents=True)
    (tmp_path / "classes" / "b").mkdir(parents=True)
    with pytest.raises(DataError, match="no images found"):
        load_splits(str(tmp_path / "classes"), 32)


def test_decoded_cache_is_reused(tmp_path):
    (tmp_path / "d" / "a").mkdir(parents=True)
    for i in range(3):
        _img(tmp_path / "d" / "a" / f"{i}.png")
    fl = scan_folder(tmp_path / "d")
    first = decode_to_tensor(fl, 8, workers=0, cache_dir=tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1
    second = decode_to_tensor(fl, 8, workers=0, cache_dir=tmp_path / "cache")
    assert torch.equal(first.images, second.images)


def test_real_cifar_subset(cifar_dir):
    s = load_splits(str(cifar_dir), 32, limit=100, workers=0)
    assert s.train.images.shape == (100, 3, 32, 32) and s.test.images.shape == (100, 3, 32, 32)
    assert s.train.classes[0] == "airplane" and len(set(s.train.labels.tolist())) == 10


def test_torchvision_cifar_loader_reads_the_python_batches(tmp_path, monkeypatch):
    """The `--data cifar10` path, on a locally written copy of CIFAR-10's pickle format
    (no download here: the integrity check that needs the real md5 sums is stubbed)."""
    import pickle

    from torchvision import datasets

    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    rng = np.random.default_rng(0)
    for name in ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]:
        batch = {"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), "labels": [0, 1, 2, 3]}
        with open(base / name, "wb") as f:
            pickle.dump(batch, f)
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    monkeypatch.setattr(datasets.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(datasets.cifar, "check_integrity", lambda *a, **k: True)
    s = load_splits(f"cifar10:{tmp_path}", 32)
    assert s.train.images.shape == (20, 3, 32, 32) and s.test.images.shape == (4, 3, 32, 32)
    assert s.train.labels.tolist()[:4] == [0, 1, 2, 3] and s.train.classes[0] == "c0"
    # the pixel layout is CIFAR's: 1024 red, then green, then blue values per image
    with open(base / "test_batch", "rb") as f:
        raw = pickle.load(f)["data"][0]
    assert torch.equal(s.test.images[0], torch.from_numpy(raw.reshape(3, 32, 32)))


def test_cifar_without_data_or_internet_is_a_clear_error(tmp_path, monkeypatch):
    from torchvision import datasets

    def no_net(*a, **k):
        raise RuntimeError("no internet")

    monkeypatch.setattr(datasets.CIFAR10, "download", no_net)
    with pytest.raises(DataError, match="cifar10 is not in"):
        load_splits(f"cifar10:{tmp_path}", 32)
