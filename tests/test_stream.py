"""Streaming evaluation (issue 18 item 2): the feature store, kNN and the cached linear probe read
chunk by chunk equal their in-memory versions; files streamed through DataLoader workers give the
same accuracies as the decoded in-memory split on real CIFAR-10."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mocolab.eval.knn import knn_predict, knn_predict_store
from mocolab.eval.linear import fit_linear_store, linear_cached, linear_cached_store
from mocolab.eval.store import FeatureStore


def _features(n, d=24, classes=5, seed=0):
    """Clustered raw features (not normalised), n x d, and their labels."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, d, generator=g) * 2
    y = torch.randint(0, classes, (n,), generator=g)
    return centers[y] + 1.5 * torch.randn(n, d, generator=g) + 3.0, y


def _disk_store(f, y, dtype="float32", folder=None, batch=37):
    """f, y written batch by batch into a memory-mapped store (memory limit 0)."""
    st = FeatureStore(len(f) + 5, 0, dtype, folder)  # capacity above N: the tail of skipped files
    for i in range(0, len(f), batch):
        st.append(f[i:i + batch], y[i:i + batch])
    return st.finish()


def test_store_goes_to_disk_over_the_memory_limit_and_is_deleted(tmp_path):
    f, y = _features(100)
    st = _disk_store(f, y, "float16", tmp_path)
    assert st.on_disk and len(st) == 100 and st.dim == 24
    files = list(tmp_path.rglob("features.npy"))
    assert len(files) == 1 and np.load(files[0], mmap_mode="r").dtype == np.float16
    torch.testing.assert_close(st.tensor(), f.half().float())  # float16 rounding only
    assert torch.equal(st.labels, y)
    assert torch.equal(torch.cat([c for _, c in st.chunks(7)]), st.tensor())
    st.close()
    assert not list(tmp_path.rglob("features.npy"))
    small = FeatureStore(100, memory_limit=100 * 24 * 4, folder=tmp_path)  # fits: float32 in memory
    small.append(f, y)
    assert not small.finish().on_disk and torch.equal(small.tensor(), f)
    assert not list(tmp_path.iterdir())


def _mapped_rss_kb(path) -> int:
    """This process's resident kB of the mapping of `path` (/proc/self/smaps)."""
    lines, total = open("/proc/self/smaps").read().splitlines(), 0
    for i, line in enumerate(lines):
        if line.endswith(str(path)):
            total += next(int(x.split()[1]) for x in lines[i + 1:] if x.startswith("Rss:"))
    return total


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="reads Linux's /proc/self/smaps")
def test_disk_store_keeps_one_chunk_resident_and_loses_no_row(tmp_path):
    """Written and read chunk by chunk, the memory-mapped store releases the pages it is done with
    (RSS stays at about a chunk, not N x D: RESULTS.md 'embed memory'), and every row reads back."""
    n, d = 20000, 64  # 5 MB of float32
    f, y = _features(n, d)
    st = FeatureStore(n, 0, "float32", tmp_path)
    for i in range(0, n, 1000):
        st.append(f[i:i + 1000], y[i:i + 1000])
    st.finish()
    path = next(tmp_path.rglob("features.npy"))
    assert _mapped_rss_kb(path) <= 1000 * d * 4 // 1024 + 8  # at most the last append's pages
    got = []
    for _, c in st.chunks(2000):
        assert _mapped_rss_kb(path) <= 2000 * d * 4 // 1024 + 8  # the current chunk only
        got.append(c.clone())
    assert torch.equal(torch.cat(got), f)
    st.rows[:] = 0  # without release the whole mapping stays resident
    assert _mapped_rss_kb(path) >= n * d * 4 // 1024 - 8
    st.close()


@pytest.mark.parametrize("k,bank_chunk,query_chunk", [(10, 64, 50), (200, 64, 33), (7, 1000, 1000)])
def test_chunked_knn_predicts_as_the_in_memory_knn(k, bank_chunk, query_chunk, tmp_path):
    """k larger than a bank chunk (200 > 64) too: the running top-k merges across chunks."""
    f_tr, y_tr = _features(700, seed=1)
    f_te, y_te = _features(150, seed=2)
    want = knn_predict(F.normalize(f_te, dim=1), F.normalize(f_tr, dim=1), y_tr, 5, k=k, t=0.1)
    bank, query = _disk_store(f_tr, y_tr, folder=tmp_path), _disk_store(f_te, y_te, folder=tmp_path)
    got = knn_predict_store(query, bank, 5, k=k, t=0.1, bank_chunk=bank_chunk, query_chunk=query_chunk)
    assert torch.equal(got, want)
    mem = knn_predict_store(FeatureStore.from_tensor(f_te, y_te), FeatureStore.from_tensor(f_tr, y_tr), 5, k=k,
                            t=0.1, bank_chunk=bank_chunk, query_chunk=query_chunk)
    assert torch.equal(mem, want)


def test_chunked_cached_linear_fits_as_the_in_memory_probe(tmp_path):
    f_tr, y_tr = _features(900, seed=3)
    f_te, y_te = _features(300, seed=4)
    probe, info = fit_linear_store(FeatureStore.from_tensor(f_tr, y_tr), 5, max_iter=100, chunk=len(f_tr))  # one chunk
    st = _disk_store(f_tr, y_tr, folder=tmp_path)
    probe_s, info_s = fit_linear_store(st, 5, max_iter=100, chunk=128)
    torch.testing.assert_close(probe_s.mean, probe.mean)
    torch.testing.assert_close(probe_s.std, probe.std)
    assert info_s["weight_decay"] == info["weight_decay"]
    assert info_s["val_top1"] == pytest.approx(info["val_top1"], abs=1e-4)  # the same held-out rows
    torch.testing.assert_close(probe_s.weight, probe.weight, atol=2e-3, rtol=1e-2)
    want = linear_cached(f_tr, y_tr, f_te, y_te, 5, max_iter=100)
    got = linear_cached_store(st, _disk_store(f_te, y_te, folder=tmp_path), 5, max_iter=100, chunk=128)
    for key in ("top1", "top5", "train_top1", "weight_decay"):
        assert got[key] == pytest.approx(want[key], abs=0.01), key


def _tiny_net(seed=0):
    from mocolab.models.backbones import build_backbone

    torch.manual_seed(seed)
    return build_backbone("resnet18", 8, "cifar")[0]


def test_streaming_equals_in_memory_knn_and_cached_linear_on_real_cifar(cifar_dir, tmp_path):
    """Files -> DataLoader workers -> a store on disk -> chunked kNN / linear, against the decoded
    in-memory split: the same accuracies to 0.01 % with the float32 store (the
    default), 3000 train / 1000 test images. The float16 store is measured: it rounds features at
    ~5e-4 relative, which flips near-ties of this random-init net (measured on a 2-core EPYC: kNN
    22.70 % in memory vs 22.60 % from float16, i.e. 1 of 1000 predictions; the linear probe 23.50 %
    both, though its L-BFGS may stop elsewhere on rounded features)."""
    from mocolab.data import decode_to_tensor, scan_folder
    from mocolab.eval.features import extract_features, extract_to_store
    from mocolab.eval.knn import knn_accuracy, knn_accuracy_store

    net, mean, std = _tiny_net(), [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]
    train_fl, test_fl = scan_folder(cifar_dir / "train", 3000), scan_folder(cifar_dir / "test", 1000)
    kw = {"size": 32, "normalize": False, "workers": 2, "batch_size": 256}
    train_mem = decode_to_tensor(train_fl, 32, cache_dir=tmp_path)
    test_mem = decode_to_tensor(test_fl, 32, cache_dir=tmp_path)
    f_tr, y_tr = extract_features(net, train_mem, mean, std, **kw)  # 3000 x 64
    f_te, y_te = extract_features(net, test_mem, mean, std, **kw)  # 1000 x 64
    knn_mem = knn_accuracy(F.normalize(f_tr, dim=1), y_tr, F.normalize(f_te, dim=1), y_te, 10, k=200)
    # the in-memory probe as `mocolab linear` fits it (protocols.linear_from_stores): the chunked
    # objective over in-memory features; the whole-matrix fit sums in another order, which a weakly
    # regularised L-BFGS follows to a different stop (1 of 1000 predictions, by thread count)
    lin_mem = linear_cached_store(FeatureStore.from_tensor(f_tr, y_tr), FeatureStore.from_tensor(f_te, y_te), 10,
                                  max_iter=100, chunk=700)
    assert 15.0 < knn_mem < 100.0 and 15.0 < lin_mem["top1"] < 100.0  # above chance (10 %): real features

    for store_dtype in ("float32", "float16"):
        store_kw = {**kw, "memory_limit": 0, "store_dtype": store_dtype, "store_dir": tmp_path / "stores"}
        with extract_to_store(net, train_fl, mean, std, **store_kw) as train, \
                extract_to_store(net, test_fl, mean, std, **store_kw) as test:
            assert train.on_disk and test.on_disk and len(train) == 3000 and len(test) == 1000
            assert torch.equal(train.labels, y_tr) and torch.equal(test.labels, y_te)
            # the workers decode the very pixels of the in-memory split: features equal up to the store's type
            tol = 1e-6 if store_dtype == "float32" else 2e-3
            torch.testing.assert_close(train.tensor(), f_tr, atol=tol * f_tr.abs().max().item(), rtol=tol)
            knn_stream = knn_accuracy_store(train, test, 10, k=200, bank_chunk=700, query_chunk=300)
            lin_stream = linear_cached_store(train, test, 10, max_iter=100, chunk=700)
        assert not list((tmp_path / "stores").iterdir())  # the stores deleted
        print(f"{store_dtype}: kNN {knn_mem:.2f} / {knn_stream:.2f}, linear {lin_mem['top1']:.2f} / "
              f"{lin_stream['top1']:.2f}")
        if store_dtype == "float32":
            assert abs(knn_stream - knn_mem) <= 0.01
            assert abs(lin_stream["top1"] - lin_mem["top1"]) <= 0.01
            assert lin_stream["weight_decay"] == lin_mem["weight_decay"]
        else:  # float16: near, not equal (see above)
            assert abs(knn_stream - knn_mem) <= 0.5 and abs(lin_stream["top1"] - lin_mem["top1"]) <= 2.0


def test_paper_linear_and_finetune_from_files_equal_the_in_memory_runs(cifar_dir, tmp_path):
    """linear --mode paper and finetune on files (FileFeed: decoded in workers, the same BatchAugment
    drawing from the same step-seeded generator) train on the very batches of the in-memory split."""
    from mocolab.data import decode_to_tensor, scan_folder
    from mocolab.eval.classify import FitConfig
    from mocolab.eval.finetune import finetune
    from mocolab.eval.linear import linear_paper

    mean, std = [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]
    train_fl, test_fl = scan_folder(cifar_dir / "train", 320), scan_folder(cifar_dir / "test", 100)
    train_mem = decode_to_tensor(train_fl, 32, cache_dir=tmp_path)
    test_mem = decode_to_tensor(test_fl, 32, cache_dir=tmp_path)
    res = {}
    for name, (train, test) in {"memory": (train_mem, test_mem), "files": (train_fl, test_fl)}.items():
        torch.manual_seed(0)
        fc = FitConfig(epochs=2, batch_size=64, lr=1.0, log_every=1)
        lin = linear_paper(_tiny_net(), train, test, mean, std, 32, fc, torch.device("cpu"), workers=2)
        ft = finetune(_tiny_net(), train, test, 0.5, mean, std, 32, FitConfig(epochs=1, batch_size=32, lr=0.05),
                      torch.device("cpu"), seed=0, workers=2)
        res[name] = (lin, ft)
    for a, b in zip(res["memory"], res["files"]):
        assert a["steps"] == b["steps"] > 0
        assert a["final_loss"] == b["final_loss"] and a["top1"] == b["top1"], (a, b)
    assert res["files"][1]["labeled_images"] == 160


def test_stream_is_chosen_by_the_memory_limit(cifar_dir, tmp_path):
    from conftest import cifar_subset

    from mocolab.errors import UsageError
    from mocolab.eval.protocols import Context

    data = cifar_subset(cifar_dir, tmp_path / "d", 20)  # 40 + 40 images of 32 x 32: 245,760 bytes decoded
    assert Context(str(data), memory_limit_gb=240_000 / 2**30).streaming(32)
    assert not Context(str(data), memory_limit_gb=250_000 / 2**30).streaming(32)
    assert not Context(str(data), stream="off", memory_limit_gb=1e-9).streaming(32)
    assert Context(str(data), stream="on").streaming(32)
    assert not Context("cifar10", memory_limit_gb=1e-9).streaming(32)  # torchvision's arrays: in memory
    with pytest.raises(UsageError, match="--stream on reads image folders"):
        Context("cifar10", stream="on").streaming(32)


def test_knn_and_linear_commands_stream_to_disk_with_the_same_figures(cifar_dir, tmp_path, monkeypatch, capsys):
    from conftest import cifar_subset

    from mocolab.cli import main

    data = cifar_subset(cifar_dir, tmp_path / "d", 60)
    monkeypatch.chdir(tmp_path)
    out = {}
    for mode in (["--stream", "off"], ["--stream", "on", "--memory-limit-gb", "1e-6", "--chunk-rows", "50"]):
        assert main(["knn", "--checkpoint", "random:cifar10_cpu", "--data", str(data), *mode]) == 0
        assert main(["linear", "--random-init", "cifar10_cpu", "--data", str(data), *mode]) == 0
        out[mode[1]] = capsys.readouterr().out
    assert "features in memory" in out["off"] and "features in disk float32" in out["on"]
    figures = {m: [line.split("(")[0] for line in o.splitlines() if "top-1" in line] for m, o in out.items()}
    assert len(figures["on"]) == 2 and figures["on"] == figures["off"], out
    rec = [json.loads(p.read_text()) for p in tmp_path.glob("*.linear_cached.*.json")]
    # one result per setting (streaming enters the result's name, issue 28), with the same figures
    assert sorted(r["features_store"] for r in rec) == ["disk float32", "memory"]
    assert rec[0]["top1"] == rec[1]["top1"]


@pytest.mark.parametrize("argv,text", [
    (["knn", "--checkpoint", "random:cifar10_cpu", "--data", "/tmp", "--memory-limit-gb", "0"],
     "--memory-limit-gb must be positive"),
    (["linear", "--random-init", "cifar10_cpu", "--data", "/tmp", "--chunk-rows", "-3"], "--chunk-rows must be"),
    (["knn", "--checkpoint", "random:cifar10_cpu", "--data", "cifar10", "--stream", "on"],
     "--stream on reads image folders"),
])
def test_bad_stream_options_are_one_line_errors(argv, text, capsys):
    from mocolab.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("mocolab: error:")]
    assert len(errors) == 1 and text in errors[0], err
    assert "Traceback" not in err


def test_streaming_under_torchrun_is_a_one_line_error(monkeypatch):
    """The store is per process: under torchrun streaming is refused (the in-memory path shards)."""
    from mocolab import distributed as du
    from mocolab.data import FileList
    from mocolab.errors import UsageError
    from mocolab.eval.features import extract_to_store

    monkeypatch.setattr(du, "is_dist", lambda: True)
    with pytest.raises(UsageError, match="not under torchrun"):
        extract_to_store(_tiny_net(), FileList(".", [], [], []), [0.5] * 3, [0.25] * 3, memory_limit=0)
