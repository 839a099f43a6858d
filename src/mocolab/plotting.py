"""The one matplotlib setup of every figure mocolab draws (report, compare, sweep): a headless
backend, and the user's names (classes, files, runs) drawn as plain text, never as mathtext."""

from __future__ import annotations

from pathlib import Path


def setup():
    """-> matplotlib.pyplot, with the Agg backend and `text.parse_math` off: a class folder named
    `$\\bogus$` or `$5-$10` is drawn as written (mathtext would fail on the first and turn the
    second into maths)."""
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["text.parse_math"] = False
    matplotlib.rcParams["text.usetex"] = False
    import matplotlib.pyplot as plt

    return plt


def legend_below(fig, axes) -> None:
    """One legend under the panels for the labels of every axis in `axes` (each once, in order of
    first appearance, 4 a row), and the panels laid out in the space above it."""
    handles, labels = [], []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0.04 + 0.025 * ((len(labels) - 1) // 4), 1, 1))


def save(fig, path: str | Path, **kwargs) -> Path:
    """Draws `fig` into `path` atomically (no 0-byte or torn PNG on a full disk) and closes it."""
    from .runfiles import save_figure

    try:
        return save_figure(fig, path, **kwargs)
    finally:
        setup().close(fig)
