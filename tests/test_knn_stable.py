"""The weighted kNN vote for any temperature (issue 28): exp(sim / t) overflowed float32 for
t <= ~0.011 and every prediction became class 0; the vote now weighs exp((sim - max) / t), which
is 1-NN as t -> 0. One kNN path (issue 29): the monitor, `mocolab knn` and compare read the
features chunk by chunk from FeatureStores (in memory: one chunk)."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import cifar_subset

from mocolab.cli import main
from mocolab.eval.knn import knn_accuracy, knn_evaluate, knn_predict, knn_predict_store, vote
from mocolab.eval.store import FeatureStore


@pytest.fixture(scope="module")
def real_features(cifar_dir, tmp_path_factory):
    """Features of 4 CIFAR-10 classes (80 train, 40 test images each) from a seeded random-init
    width-8 ResNet-18: (train N x D, labels N, test M x D, labels M), raw (not normalised)."""
    from mocolab.data import decode_to_tensor, scan_folder
    from mocolab.eval.features import extract_features
    from mocolab.models.backbones import build_backbone

    root = cifar_subset(cifar_dir, tmp_path_factory.mktemp("knn_cifar"), 80,
                        classes=("airplane", "cat", "ship", "truck"))
    torch.manual_seed(0)
    net = build_backbone("resnet18", 8, "cifar")[0]
    kw = {"size": 32, "normalize": False, "workers": 0}
    cache = tmp_path_factory.mktemp("knn_cache")
    tr = decode_to_tensor(scan_folder(root / "train"), 32, workers=0, cache_dir=cache)
    te = decode_to_tensor(scan_folder(root / "test"), 32, workers=0, cache_dir=cache)
    mean, std = [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]
    return (*extract_features(net, tr, mean, std, **kw), *extract_features(net, te, mean, std, **kw), net, tr, te)


def _nearest(f_tr, y_tr, f_te):
    """1-NN: the label of the most similar (cosine) train feature."""
    return y_tr[(F.normalize(f_te, dim=1) @ F.normalize(f_tr, dim=1).t()).argmax(1)]


def test_exp_of_sim_over_t_overflows_where_the_vote_does_not():
    sim = torch.tensor([[0.95, 0.9, 0.2]])  # cosine similarities of 3 neighbours, classes 1, 0, 0
    labels = torch.tensor([[1, 0, 0]])
    assert torch.isinf((sim / 0.001).exp()).all()  # the former weights: inf, inf, inf -> argmax 0
    for t in (1e-4, 1e-3, 0.01):
        assert vote(sim, labels, 2, t).item() == 1  # the nearest (class 1) outweighs the two others
    assert vote(sim, labels, 2, 100.0).item() == 0  # a huge t: equal votes, the majority wins


def test_vote_is_the_float64_vote_wherever_that_one_is_finite(real_features):
    """Subtracting the row maximum is a common factor exp(-max / t) of a row's votes: the predictions
    equal the direct exp(sim / t) vote, computed in float64 (finite there), at usual temperatures."""
    f_tr, y_tr, f_te, _ = real_features[:4]
    sim = F.normalize(f_te, dim=1) @ F.normalize(f_tr, dim=1).t()  # M x N
    w, i = sim.topk(50, dim=1)
    for t in (0.5, 0.1, 0.05, 0.02):
        direct = torch.zeros(len(w), 4, dtype=torch.float64).scatter_add_(1, y_tr[i], (w.double() / t).exp())
        assert torch.equal(vote(w, y_tr[i], 4, t), direct.argmax(1)), t


def _pixels(data) -> torch.Tensor:
    """Standardised pixels of real images as features, N x 3072 (similarities spread over [-1, 1])."""
    x = data.images.float().div(255).sub(torch.tensor([0.49, 0.48, 0.45]).view(1, 3, 1, 1))
    return x.div(torch.tensor([0.25, 0.24, 0.26]).view(1, 3, 1, 1)).flatten(1)


def test_small_temperatures_give_one_nn_on_real_features(real_features):
    tr, te = real_features[5:]
    f_tr, y_tr, f_te, y_te = _pixels(tr), tr.labels, _pixels(te), te.labels
    one_nn = _nearest(f_tr, y_tr, f_te)
    assert torch.equal(knn_predict(f_te, f_tr, y_tr, 4, k=200, t=1e-4), one_nn)  # the limit t -> 0
    assert torch.equal(knn_predict(f_te, f_tr, y_tr, 4, k=200, t=1e-3), one_nn)
    assert torch.equal(knn_predict(f_te, f_tr, y_tr, 4, k=1), one_nn)
    assert knn_accuracy(f_tr, y_tr, f_te, y_te, 4, k=200, t=1e-3) > 35.0  # above chance (4 classes)


def test_small_temperatures_on_a_random_nets_features(real_features):
    """A random-init net's features are near one another (cosine ~0.995, the nearest two ~4e-4
    apart): at t = 1e-3 the vote is not 1-NN everywhere, but never collapses; wherever the nearest
    leads the second by more than t ln(k - 1), the others' k - 1 weights exp(-gap / t) sum below the
    nearest's 1, so the vote is 1-NN there (and everywhere at t = 1e-6)."""
    f_tr, y_tr, f_te, _ = real_features[:4]
    one_nn = _nearest(f_tr, y_tr, f_te)
    w = (F.normalize(f_te, dim=1) @ F.normalize(f_tr, dim=1).t()).topk(2, dim=1).values  # M x 2
    for t in (1e-3, 1e-4):
        pred = knn_predict(f_te, f_tr, y_tr, 4, k=200, t=t)
        assert len(pred.unique()) == 4  # not every prediction class 0, as exp(sim / 0.001) = inf made them
        clear = (w[:, 0] - w[:, 1]) > t * math.log(199)
        assert torch.equal(pred[clear], one_nn[clear]), t
    assert clear.sum() > 10  # at t = 1e-4: rows whose nearest leads by more than 5.3e-4
    assert torch.equal(knn_predict(f_te, f_tr, y_tr, 4, k=200, t=1e-6), one_nn)


def test_the_monitor_is_the_chunked_path(real_features, tmp_path):
    """knn_evaluate (the training monitor) = knn_predict_store over an on-disk store read in small
    chunks (as `mocolab knn --stream on` reads it): one computation."""
    f_tr, y_tr, f_te, y_te, net, tr, te = real_features
    monitor = knn_evaluate(net, tr, te, [0.49, 0.48, 0.45], [0.25, 0.24, 0.26], k=50, t=0.07, size=32, workers=0)
    bank, query = FeatureStore(len(f_tr), 0, folder=tmp_path), FeatureStore(len(f_te), 0, folder=tmp_path)
    bank.append(f_tr, y_tr)
    query.append(f_te, y_te)
    with bank.finish() as bank, query.finish() as query:
        assert bank.on_disk
        pred = knn_predict_store(query, bank, 4, k=50, t=0.07, query_chunk=17, bank_chunk=29)
    assert monitor == pytest.approx(100.0 * (pred == y_te).float().mean().item(), abs=1e-9)


def test_knn_cli_small_t_is_one_nn_and_too_small_t_is_one_line(cifar_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # random:PRESET results are written to the current folder
    root = cifar_subset(cifar_dir, tmp_path / "data", 30, classes=("airplane", "cat", "ship"))
    common = ["knn", "--checkpoint", "random:cifar10_cpu", "--data", str(root), "--amp", "off", "--stream", "off"]
    got = {}
    for extra in (["--t", "0.0001"], ["--k", "1"]):
        assert main([*common, *extra]) == 0
        path = capsys.readouterr().out.split("written: ")[1].strip()
        got[extra[0]] = json.loads(open(path).read())["knn_top1"]
    assert got["--t"] == got["--k"]  # t = 1e-4 votes as the 1-NN
    assert main([*common, "--t", "0.00001"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--t=1e-05 is below 0.0001" in err[0], err
