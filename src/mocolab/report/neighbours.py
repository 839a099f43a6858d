"""Nearest neighbours by cosine similarity of the backbone's features, and their picture."""

from __future__ import annotations

from pathlib import Path

import torch


def pick_queries(labels: torch.Tensor, n: int = 12, seed: int = 0) -> torch.Tensor:
    """Indices of n query images, seeded: one per class while there are classes (n random classes
    when there are more than n), the rest drawn from the remaining images; sorted by class.
    labels: N (int64, -1 = unlabeled)."""
    g = torch.Generator().manual_seed(seed)
    n = min(n, len(labels))
    classes = sorted(set(labels.tolist()) - {-1})
    if len(classes) > n:
        classes = [classes[i] for i in sorted(torch.randperm(len(classes), generator=g)[:n].tolist())]
    picked = []
    for c in classes:
        idx = (labels == c).nonzero().flatten()
        picked.append(int(idx[torch.randint(len(idx), (1,), generator=g)]))
    rest = [i for i in torch.randperm(len(labels), generator=g).tolist() if i not in set(picked)]
    picked += rest[:n - len(picked)]
    return torch.tensor(sorted(picked, key=lambda i: (int(labels[i]), i)), dtype=torch.long)


@torch.no_grad()
def top_k(query: torch.Tensor, bank: torch.Tensor, k: int = 8,
          exclude: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """query: M x D, bank: N x D, any scale (normalised here) -> (cosine similarities M x k,
    bank indices M x k), most similar first. exclude: M bank indices (a query's own image when
    the bank holds the queries) that are never returned."""
    q = torch.nn.functional.normalize(query.float(), dim=1)
    b = torch.nn.functional.normalize(bank.float(), dim=1)
    sim = q @ b.t()  # M x N
    if exclude is not None:
        sim[torch.arange(len(q)), exclude.to(sim.device)] = float("-inf")
    k = min(k, b.shape[0] - (exclude is not None))
    return sim.topk(k, dim=1)


def thumb(img: torch.Tensor):
    """3 x H x W uint8 -> H x W x 3 numpy for imshow."""
    return img.permute(1, 2, 0).cpu().numpy()


def plot_neighbours(q_images: torch.Tensor, q_labels: torch.Tensor, n_images: torch.Tensor,
                    n_labels: torch.Tensor, sims: torch.Tensor, classes: list[str], path: Path) -> None:
    """q_images: M x 3 x H x W uint8; n_images: M x k x 3 x H x W; labels -1 = unlabeled;
    sims: M x k. One row per query: the query, then its k neighbours with class and cosine;
    with labels, a green frame marks a neighbour of the query's class and a red one another."""
    from ..plotting import save, setup

    plt = setup()

    M, k = sims.shape
    height = 1.9 * M
    fig, axes = plt.subplots(M, k + 1, figsize=(1.45 * (k + 1), height), squeeze=False)

    def name(label: int) -> str:
        return classes[label] if 0 <= label < len(classes) else ""

    for i in range(M):
        ax = axes[i, 0]
        ax.imshow(thumb(q_images[i]))
        ax.set_title(f"query\n{name(int(q_labels[i]))}", fontsize=9, fontweight="bold")
        for j in range(k):
            ax = axes[i, j + 1]
            ax.imshow(thumb(n_images[i, j]))
            lab, ql = int(n_labels[i, j]), int(q_labels[i])
            ok = lab >= 0 and lab == ql
            mark = "" if ql < 0 or lab < 0 else (" ✓" if ok else " ✗")
            ax.set_title(f"{name(lab)}{mark}\ncos {float(sims[i, j]):.3f}", fontsize=8,
                         color="black" if not mark else ("darkgreen" if ok else "firebrick"))
            if mark:
                for s in ax.spines.values():
                    s.set_edgecolor("limegreen" if ok else "red")
                    s.set_linewidth(3)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.2 / height, top=1 - 0.45 / height, wspace=0.1, hspace=0.55)
    save(fig, path, dpi=80)
