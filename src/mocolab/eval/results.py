"""Result files: every evaluation writes one JSON beside the checkpoint it scored, named by the
protocol, the seed and a digest of its other settings (`backbone.pth` ->
`backbone.linear_paper.seed0.3f2a9c1d.json`), so results with other settings (data, epochs, lr,
k, ...) sit beside each other and never replace one another.

Each records the protocol's name as reported, the data, the seed, every setting and the
numbers. `settings` is what must match for a result to be reused by `mocolab compare`.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from .. import distributed as du
from ..errors import PathError
from ..runfiles import read_json, write_json

# The options of the evaluation commands (knn, linear, finetune, compare) that do NOT enter a
# result's settings, each with the reason; every other option changes the result's file name (the
# protocol's key, its seed, the digest of its settings, or the checkpoint it sits beside).
# tests/test_result_names.py walks every option of those commands against this list.
NOT_IN_NAME = {
    "device": "the same computation on another device: float rounding only, as the thread count; the result "
              "records its device",
    "chunk_rows": "rows per chunk read from a feature store: the same sums in another order (float rounding "
                  "only); the result records it",
    "resume": "a rerun with the same settings resumes its loop anyway (--resume auto is accepted for requeues)",
    "force": "compare: recompute instead of reusing a result of the same settings (the same name)",
    "out": "compare: the folder of compare.md/.json/.png; a result sits beside its checkpoint (random init: "
           "named by preset and seed)",
    "seeds": "compare: the transfer fine-tunes' seeds; their cells (OUT/transfer/TASK/ENTRY/seedS/cell.json) "
             "record their own settings",
    "detect": "compare: a transfer column (its cell's settings are in cell.json), not a protocol result",
    "segment": "compare: a transfer column (its cell's settings are in cell.json), not a protocol result",
    "detect_preset": "compare: a transfer cell's setting (cell.json)",
    "segment_preset": "compare: a transfer cell's setting (cell.json)",
    "transfer_budget_minutes": "compare: a transfer cell's setting (cell.json)",
    "transfer_set": "compare: a transfer cell's setting (cell.json)",
}


def settings_digest(settings: dict) -> str:
    """8 hex digits of every setting but the key and seed (in the name already) and the weights'
    identity (a re-trained checkpoint keeps its file names; `load_matching` still refuses to reuse a
    result of the old weights)."""
    st = {k: v for k, v in settings.items() if k not in ("weights", "key", "seed")}
    return hashlib.sha1(json.dumps(st, sort_keys=True, default=str).encode()).hexdigest()[:8]


def result_path(base: Path, key: str, settings: dict) -> Path:
    """base: the checkpoint (or a stand-in path for a random init); key: e.g. linear_cached;
    settings: the protocol's settings (with "seed") -> BASE.KEY.seedS.DIGEST.json."""
    base = Path(base)
    return base.with_name(f"{base.stem}.{key}.seed{settings.get('seed', 0)}.{settings_digest(settings)}.json")


def legacy_path(base: Path, key: str) -> Path:
    """The name results had before their settings were in it: BASE.KEY.json."""
    base = Path(base)
    return base.with_name(f"{base.stem}.{key}.json")


def latest_result(base: Path, key: str) -> dict:
    """The newest readable result of protocol `key` beside `base`, whatever its settings ({} if none)."""
    base, legacy = Path(base), legacy_path(base, key)
    found = [*base.parent.glob(f"{base.stem}.{key}.seed*.json"), *([legacy] if legacy.is_file() else [])]
    for path in sorted(found, key=lambda p: p.stat().st_mtime_ns, reverse=True):
        if obj := read_json(path):
            return obj
    return {}


def file_identity(path: Path) -> dict:
    """Size and mtime of a checkpoint, so a result is not reused for a re-trained file."""
    st = Path(path).stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def write_result(path: Path, result: dict) -> Path | None:
    """Writes `result` to `path` (rank 0); a failed write is an error (PathError), with the
    result's top-1 in its message so that the figure is not lost."""
    if not du.is_main():  # under torchrun every rank holds the result; rank 0 writes it
        return None
    result = {**result, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # atomic: a reader never sees half a result
        return write_json(path, result)
    except OSError as e:
        top1 = f" (its top-1: {result['top1']:.2f}%)" if isinstance(result.get("top1"), float) else ""
        # runfiles.WriteError: its reason alone
        why = getattr(e, "reason", None) or e.strerror or e
        raise PathError(f"could not write the result {path}: {why}{top1}") from None


def find_matching(base: Path, key: str, settings: dict) -> dict | None:
    """A saved result of these settings: at its settings-named path, or at the name results had
    before (BASE.KEY.json), so older results are still reused."""
    for path in (result_path(base, key, settings), legacy_path(base, key)):
        if (old := load_matching(path, settings)) is not None:
            return {**old, "result_file": str(path)}
    return None


def load_matching(path: Path, settings: dict) -> dict | None:
    """The saved result at `path` if its settings equal `settings` (JSON-normalised), else None."""
    saved = read_json(path)  # missing: {}; torn or hand-edited: {} and a warning naming it
    if saved and saved.get("settings") == json.loads(json.dumps(settings)):
        return saved
    return None
