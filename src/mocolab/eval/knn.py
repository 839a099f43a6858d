"""Weighted kNN classifier (Wu et al. 2018, InstDisc), the MoCo CIFAR demo's monitor.

One code path: knn_predict_store reads the query and bank features chunk by chunk from
FeatureStores (in memory or memory-mapped on disk) and votes with `vote`; the in-memory calls
(knn_predict, knn_accuracy, knn_evaluate: the training monitor, the report) are that path on
FeatureStore.from_tensor with the whole bank as one chunk."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .features import extract_features
from .store import FeatureStore


def vote(sim_w: torch.Tensor, neighbour_labels: torch.Tensor, num_classes: int, t: float) -> torch.Tensor:
    """sim_w: m x k similarities of the k nearest bank items, neighbour_labels: m x k their classes.
    Each votes for its class with weight exp(sim / t); returns the predicted labels m.

    The weights are computed as exp((sim - max_row sim) / t): the row's common factor exp(max / t)
    does not move the argmax, and every weight lies in (0, 1] for any t > 0 (exp(sim / t) itself
    overflows float32 for t below about 0.011, which made every vote inf and every prediction 0).
    As t -> 0 only the nearest neighbour keeps weight 1: the vote becomes 1-NN."""
    w = ((sim_w - sim_w.amax(dim=1, keepdim=True)) / t).exp()  # m x k, in (0, 1]; 1 for the nearest
    votes = torch.zeros(sim_w.shape[0], num_classes, device=sim_w.device)
    votes.scatter_add_(1, neighbour_labels, w)  # m x C
    return votes.argmax(dim=1)


@torch.no_grad()
def knn_predict_store(query: FeatureStore, bank: FeatureStore, num_classes: int, k: int = 200, t: float = 0.1,
                      query_chunk: int = 1024, bank_chunk: int = 16384,
                      device: torch.device | str = "cpu") -> torch.Tensor:
    """The weighted kNN: each of the k bank items most similar (cosine) to a query votes for its
    class with weight exp(sim / t) (`vote`). query (M x D) and bank (N x D) are FeatureStores of
    raw features (L2-normalised here, chunk by chunk, in float32 on `device`). For each chunk of
    queries the bank is read chunk by chunk and each bank chunk's top-k is merged into the running
    top-k (the k best of the union of both; no library keeps a top-k over a stream, hence this
    loop). In memory at once: query_chunk x (bank_chunk + k) similarities (1024 x 16384 float32:
    64 MB at the defaults). Returns the predictions M (on `device`)."""
    k = min(k, len(bank))
    labels = bank.labels.to(device)  # N
    preds = []
    for _, q in query.chunks(query_chunk, device):
        q = F.normalize(q, dim=1)  # m x D
        best_w = torch.full((q.shape[0], 0), float("-inf"), device=device)  # m x k' running top-k similarities
        best_i = torch.zeros((q.shape[0], 0), dtype=torch.long, device=device)  # m x k' their bank rows
        for lo, b in bank.chunks(bank_chunk, device):
            sim = q @ F.normalize(b, dim=1).t()  # m x n cosine similarities
            w, i = sim.topk(min(k, sim.shape[1]), dim=1)  # m x k
            if best_w.shape[1]:  # merge with the running top-k
                cat_w, cat_i = torch.cat([best_w, w], 1), torch.cat([best_i, i + lo], 1)  # m x (k' + k)
                w, pick = cat_w.topk(min(k, cat_w.shape[1]), dim=1)
                i = cat_i.gather(1, pick)
            else:  # the first chunk: its top-k is the running top-k
                i = i + lo
            best_w, best_i = w, i
        preds.append(vote(best_w, labels[best_i], num_classes, t))
    return torch.cat(preds)


def knn_accuracy_store(train: FeatureStore, test: FeatureStore, num_classes: int, k: int = 200, t: float = 0.1,
                       device: torch.device | str = "cpu", **chunks) -> float:
    """Top-1 accuracy in percent of the weighted kNN (knn_predict_store): train is the bank, test the queries."""
    pred = knn_predict_store(test, train, num_classes, k, t, device=device, **chunks)
    return 100.0 * (pred.cpu() == test.labels).float().mean().item()


def knn_predict(query: torch.Tensor, bank: torch.Tensor, bank_labels: torch.Tensor, num_classes: int,
                k: int = 200, t: float = 0.1, chunk: int = 1024) -> torch.Tensor:
    """query: M x D, bank: N x D features in memory (normalised or not), bank_labels: N -> predicted
    labels M: knn_predict_store on the tensors, the whole bank as one chunk, `chunk` queries at a time."""
    queries = FeatureStore.from_tensor(query, torch.zeros(len(query), dtype=torch.long))
    return knn_predict_store(queries, FeatureStore.from_tensor(bank, bank_labels), num_classes, k, t,
                             query_chunk=chunk, bank_chunk=max(1, len(bank)), device=bank.device)


def knn_accuracy(train_f, train_y, test_f, test_y, num_classes: int, k: int = 200, t: float = 0.1) -> float:
    """Top-1 accuracy in percent of the weighted kNN, features in memory (knn_predict)."""
    pred = knn_predict(test_f, train_f, train_y, num_classes, k, t)
    return 100.0 * (pred.cpu() == test_y.cpu()).float().mean().item()


def knn_evaluate(net, train, test, mean, std, k: int = 200, t: float = 0.1, **extract_kw) -> float:
    """Top-1 (%) of the weighted kNN with `train` as the bank and `test` as the queries, on the
    features of `net` (see eval.features.extract_features for the keyword arguments): the training
    monitor. Raw features, normalised by knn_predict_store as `mocolab knn` does, so that both agree."""
    f_train, y_train = extract_features(net, train, mean, std, normalize=False, **extract_kw)  # N x D
    f_test, y_test = extract_features(net, test, mean, std, normalize=False, **extract_kw)  # M x D
    num_classes = int(max(y_train.max(), y_test.max())) + 1
    return knn_accuracy(f_train, y_train, f_test, y_test, num_classes, k, t)
