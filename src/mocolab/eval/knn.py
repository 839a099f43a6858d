"""Weighted kNN classifier (Wu et al. 2018, InstDisc), the MoCo CIFAR demo's monitor."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .features import extract_features
from .store import FeatureStore


def _vote(sim_w: torch.Tensor, neighbour_labels: torch.Tensor, num_classes: int, t: float) -> torch.Tensor:
    """sim_w: m x k similarities of the k nearest bank items, neighbour_labels: m x k their classes.
    Each votes for its class with weight exp(sim / t); returns the predicted labels m."""
    votes = torch.zeros(sim_w.shape[0], num_classes, device=sim_w.device)
    votes.scatter_add_(1, neighbour_labels, (sim_w / t).exp())  # m x C
    return votes.argmax(dim=1)


@torch.no_grad()
def knn_predict(query: torch.Tensor, bank: torch.Tensor, bank_labels: torch.Tensor, num_classes: int,
                k: int = 200, t: float = 0.1, chunk: int = 1024) -> torch.Tensor:
    """query: M x D, bank: N x D (both L2-normalised), bank_labels: N.
    Each of the k most similar bank items votes for its class with weight exp(sim / t).
    Returns predicted labels M."""
    k = min(k, bank.shape[0])
    preds = []
    for i in range(0, query.shape[0], chunk):
        sim = query[i:i + chunk] @ bank.t()  # m x N cosine similarities
        sim_w, sim_idx = sim.topk(k, dim=1)  # m x k
        preds.append(_vote(sim_w, bank_labels[sim_idx], num_classes, t))
    return torch.cat(preds)


def knn_evaluate(net, train, test, mean, std, k: int = 200, t: float = 0.1, **extract_kw) -> float:
    """Top-1 (%) of the weighted kNN with `train` as the bank and `test` as the queries, on the
    features of `net` (see eval.features.extract_features for the keyword arguments)."""
    f_train, y_train = extract_features(net, train, mean, std, **extract_kw)
    f_test, y_test = extract_features(net, test, mean, std, **extract_kw)
    num_classes = int(max(y_train.max(), y_test.max())) + 1
    return knn_accuracy(f_train, y_train, f_test, y_test, num_classes, k, t)


def knn_accuracy(train_f, train_y, test_f, test_y, num_classes: int, k: int = 200, t: float = 0.1) -> float:
    """Top-1 accuracy in percent of the weighted kNN."""
    pred = knn_predict(test_f, train_f, train_y.to(train_f.device), num_classes, k, t)
    return 100.0 * (pred.cpu() == test_y.cpu()).float().mean().item()


@torch.no_grad()
def knn_predict_store(query: FeatureStore, bank: FeatureStore, num_classes: int, k: int = 200, t: float = 0.1,
                      query_chunk: int = 4096, bank_chunk: int = 65536,
                      device: torch.device | str = "cpu") -> torch.Tensor:
    """knn_predict with neither side in memory: query (M x D) and bank (N x D) are FeatureStores of
    raw features (L2-normalised here, chunk by chunk, in float32 on `device`). For each chunk of
    queries the bank is read chunk by chunk and each bank chunk's top-k is merged into the running
    top-k (the k best of the union of both; no library keeps a top-k over a stream, hence this
    loop). In memory at once: query_chunk x (bank_chunk + k) similarities. Returns predictions M."""
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
            cat_w, cat_i = torch.cat([best_w, w], 1), torch.cat([best_i, i + lo], 1)  # m x (k' + k)
            best_w, pick = cat_w.topk(min(k, cat_w.shape[1]), dim=1)
            best_i = cat_i.gather(1, pick)
        preds.append(_vote(best_w, labels[best_i], num_classes, t))
    return torch.cat(preds)


def knn_accuracy_store(train: FeatureStore, test: FeatureStore, num_classes: int, k: int = 200, t: float = 0.1,
                       device: torch.device | str = "cpu", **chunks) -> float:
    """Top-1 accuracy in percent of the weighted kNN, streamed (knn_predict_store)."""
    pred = knn_predict_store(test, train, num_classes, k, t, device=device, **chunks)
    return 100.0 * (pred.cpu() == test.labels).float().mean().item()
