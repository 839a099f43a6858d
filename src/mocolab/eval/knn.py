"""Weighted kNN classifier (Wu et al. 2018, InstDisc), the MoCo CIFAR demo's monitor."""

from __future__ import annotations

import torch

from .features import extract_features


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
        weights = (sim_w / t).exp()
        votes = torch.zeros(sim.shape[0], num_classes, device=sim.device)
        votes.scatter_add_(1, bank_labels[sim_idx], weights)  # m x C
        preds.append(votes.argmax(dim=1))
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
