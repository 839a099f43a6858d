"""A 2-D map of the features (t-SNE, scikit-learn) and the per-class kNN accuracy beside it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..eval.knn import knn_predict


def per_class_knn(train_f: torch.Tensor, train_y: torch.Tensor, test_f: torch.Tensor, test_y: torch.Tensor,
                  classes: list[str], k: int = 200, t: float = 0.1) -> list[dict]:
    """Weighted kNN (train split as the bank) -> [{class, images, top1 %}] per class, and "all"."""
    pred = knn_predict(test_f, train_f, train_y.to(train_f.device), len(classes), k, t).cpu()
    y = test_y.cpu()
    rows = []
    for c, cname in enumerate(classes):
        sel = y == c
        if sel.any():
            acc = 100.0 * float((pred[sel] == c).float().mean())
            rows.append({"class": cname, "images": int(sel.sum()), "top1": acc})
    rows.append({"class": "all", "images": len(y), "top1": 100.0 * float((pred == y).float().mean())})
    return rows


def subsample(n: int, points: int, seed: int = 0) -> torch.Tensor:
    """At most `points` of n indices, seeded, in order."""
    if n <= points:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:points].sort().values


def embed_2d(features: torch.Tensor, seed: int = 0) -> np.ndarray:
    """N x D features -> N x 2 t-SNE coordinates (cosine distance, PCA init, seeded)."""
    from sklearn.manifold import TSNE

    x = features.float().cpu().numpy()
    n = len(x)
    if n < 4:
        return np.zeros((n, 2))
    perplexity = float(min(30.0, (n - 1) / 3))
    return TSNE(2, perplexity=perplexity, metric="cosine", init="pca", random_state=seed).fit_transform(x)


def plot_map(xy: np.ndarray, labels: torch.Tensor, classes: list[str], path: Path, title: str) -> None:
    """A scatter of the 2-D map, coloured by class (grey without labels)."""
    from ..plotting import save, setup

    plt = setup()

    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    y = labels.cpu().numpy()
    if classes and (y >= 0).all():
        cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
        for c, cname in enumerate(classes):
            sel = y == c
            if sel.any():
                ax.scatter(xy[sel, 0], xy[sel, 1], s=7, color=cmap(c % cmap.N), label=cname, alpha=0.8)
        ax.legend(fontsize=8, markerscale=2.5, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    else:
        ax.scatter(xy[:, 0], xy[:, 1], s=7, color="0.4", alpha=0.7)
    ax.set_title(title, fontsize=11)
    ax.set_xlabel("t-SNE 1 (no unit)")
    ax.set_ylabel("t-SNE 2 (no unit)")
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    save(fig, path, dpi=90)
