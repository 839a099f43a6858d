"""Result files: every evaluation writes one JSON beside the checkpoint it scored
(`backbone.pth` -> `backbone.linear_cached.json`, `backbone.finetune_0.01.json`, ...).

Each records the protocol's name as reported, the data, the seed, every setting and the
numbers. `settings` is what must match for a result to be reused by `mocolab compare`.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from .. import distributed as du

log = logging.getLogger("mocolab")


def result_path(base: Path, key: str) -> Path:
    """base: the checkpoint (or a stand-in path for a random init); key: e.g. linear_cached."""
    base = Path(base)
    return base.with_name(f"{base.stem}.{key}.json")


def file_identity(path: Path) -> dict:
    """Size and mtime of a checkpoint, so a result is not reused for a re-trained file."""
    st = Path(path).stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def write_result(path: Path, result: dict) -> Path | None:
    if not du.is_main():  # under torchrun every rank holds the result; rank 0 writes it
        return None
    result = {**result, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2))
        return path
    except OSError as e:
        log.warning("could not write %s: %s", path, e)
        return None


def load_matching(path: Path, settings: dict) -> dict | None:
    """The saved result at `path` if its settings equal `settings` (JSON-normalised), else None."""
    try:
        saved = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    if saved.get("settings") == json.loads(json.dumps(settings)):
        return saved
    return None
