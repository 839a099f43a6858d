"""The run files' writers and readers.

Every file that one command writes and another reads (checkpoints, exports, configs, summaries,
results, cell records, the report's page and figures) is written by `atomic_write`: a temporary
file in the same folder, fsync, then a rename over the target. A crash or a full disk at any
moment leaves the previous file or the new one, never a torn one; a failed write removes its
temporary file and is one line naming the file (WriteError, exit code 2).

The readers are tolerant where a file is optional (read_json, read_yaml, read_metrics: a torn,
empty or hand-edited file is one warning naming it, never a traceback) and strict where the
command cannot go on without it (load_json, load_yaml: RunFileError, one line naming it).
"""

from __future__ import annotations

import errno
import io
import itertools
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO

from .errors import PathError, UserError

log = logging.getLogger("mocolab")

_counter = itertools.count()  # temp names unique within a process (threads)


class WriteError(PathError):
    """A file that could not be written (a full disk, no permission, a missing folder); the
    previous file, if any, is left as it was. `path` and `reason` (e.g. "No space left on
    device") are kept for callers that add to the message."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"could not write {path}: {reason} (any previous {path.name} is unchanged)")
        self.path, self.reason = path, reason


class RunFileError(UserError, ValueError):
    """A run file that is missing, torn, empty or hand-edited beyond use; the message names it."""


def _os_error(e: BaseException) -> OSError | None:
    """The OSError behind a failed write: `e` itself, or the one torch.save's RuntimeError wraps
    ("unexpected pos ..." / "file write failed" while Python's write raised ENOSPC)."""
    if isinstance(e, OSError):
        return e
    if isinstance(e, RuntimeError):
        if isinstance(e.__context__, OSError):
            return e.__context__
        text = str(e)
        if "unexpected pos" in text or "file write failed" in text or "No space left" in text:
            return OSError(errno.EIO, text.splitlines()[0] if text else "write failed")
    return None


def _reason(e: OSError) -> str:
    return e.strerror or str(e) or type(e).__name__


def _fsync_dir(folder: Path) -> None:
    """Makes a rename in `folder` durable (best effort: not every file system allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Calls write(f) on a temporary file beside `path` (.NAME.tmpPID-N), fsyncs it and renames it
    over `path` -> path. Any OSError (ENOSPC too, and the RuntimeError torch.save makes of it):
    the temporary file is removed, `path` is left as it was, and WriteError names `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}-{next(_counter)}")
    created = False
    try:
        # 0o666 & ~umask, as open() does
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        created = True
        try:
            f = os.fdopen(fd, "wb")
        except BaseException:
            os.close(fd)
            raise
        with f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        created = False
    except (OSError, RuntimeError) as e:
        err = _os_error(e)
        if err is None:
            raise
        raise WriteError(path, _reason(err)) from None
    finally:
        if created:
            try:
                tmp.unlink()
            except OSError:
                pass
    _fsync_dir(path.parent)
    return path


def write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def write_text(path: str | Path, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj, indent: int | None = 2) -> Path:
    """obj as JSON (serialised before the file is touched: an object JSON cannot hold is a bug,
    raised as it is, and nothing is written)."""
    return write_text(path, json.dumps(obj, indent=indent) + "\n")


def write_yaml(path: str | Path, obj) -> Path:
    import yaml

    return write_text(path, yaml.safe_dump(obj, sort_keys=False))


def save_torch(obj, path: str | Path) -> Path:
    """torch.save, atomically; ENOSPC is WriteError, not torch's RuntimeError."""
    import torch

    return atomic_write(path, lambda f: torch.save(obj, f))


def save_figure(fig, path: str | Path, **kwargs) -> Path:
    """A matplotlib figure, atomically (no 0-byte PNG on a full disk); the format from the suffix."""
    path = Path(path)
    buf = io.BytesIO()  # drawn first: a drawing error writes nothing
    fig.savefig(buf, format=path.suffix.lstrip(".") or "png", **kwargs)
    return write_bytes(path, buf.getvalue())


# -- readers ----------------------------------------------------------------------------------
def _parse(path: Path, kind: str):
    """-> the parsed file; RunFileError (one line naming it) when missing, unreadable, empty or not
    valid `kind` (json | yaml)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RunFileError(f"{path} not found") from None
    except (OSError, UnicodeDecodeError) as e:
        why = _reason(e) if isinstance(e, OSError) else "not UTF-8 text"
        raise RunFileError(f"cannot read {path}: {why}") from None
    if not text.strip():
        raise RunFileError(f"{path} is empty (a write cut short?)")
    import yaml

    try:
        return json.loads(text) if kind == "json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as e:  # json.JSONDecodeError is a ValueError
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise RunFileError(f"{path} is not valid {kind.upper()} (torn or hand-edited): {first}") from None


def _load(path: str | Path, kind: str) -> dict:
    """A JSON object or YAML mapping -> dict; RunFileError naming the file otherwise."""
    path = Path(path)
    obj = _parse(path, kind)
    if not isinstance(obj, dict):
        what = "an object" if kind == "json" else "a mapping"
        raise RunFileError(f"{path} holds a {kind.upper()} {type(obj).__name__}, not {what} (hand-edited?)")
    return obj


def _read(path: str | Path, kind: str) -> dict:
    """An optional file: {} when missing; {} and one warning naming it when it is torn, empty,
    hand-edited or not a mapping."""
    if not Path(path).exists():
        return {}
    try:
        return _load(path, kind)
    except RunFileError as e:
        log.warning("skipped: %s", e)
        return {}


def load_json(path: str | Path) -> dict:
    """A JSON object the command needs -> dict; RunFileError naming the file otherwise."""
    return _load(path, "json")


def load_yaml(path: str | Path) -> dict:
    """A YAML mapping the command needs -> dict; RunFileError naming the file otherwise."""
    return _load(path, "yaml")


def read_json(path: str | Path) -> dict:
    """An optional JSON object (a run's summary.json, ...) -> dict, {} when missing or unreadable."""
    return _read(path, "json")


def read_yaml(path: str | Path) -> dict:
    """An optional YAML mapping (a run's config.yaml) -> dict, {} when missing or unreadable."""
    return _read(path, "yaml")


def _step(rec: dict) -> int | None:
    s = rec.get("step")
    return s if isinstance(s, int) and not isinstance(s, bool) else None


def read_metrics(path: str | Path) -> tuple[list[dict], list[dict]]:
    """metrics.jsonl -> (step records: those with a loss; monitor records: those with knn_top1),
    each in increasing steps. A resumed run logs again the steps after its checkpoint: the later
    record of a repeated step wins, and the killed run's records after it go too (they belong to
    the run that was replaced). A line that is torn, not a JSON object or without an integer
    `step` is skipped; one warning names the file and how many lines."""
    path = Path(path)
    records: list[dict] = []
    monitors: list[dict] = []
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return records, monitors
    except OSError as e:
        log.warning("skipped: cannot read %s: %s", path, _reason(e))
        return records, monitors
    skipped = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:  # a line torn by a kill, or hand-edited
            rec = None
        if not isinstance(rec, dict) or _step(rec) is None:
            skipped.append(n)
            continue
        kind = monitors if "knn_top1" in rec else records if "loss" in rec else None
        if kind is None:
            continue
        # a resumed run's replayed steps replace the old
        while kind and kind[-1]["step"] >= rec["step"]:
            kind.pop()
        kind.append(rec)
    if skipped:
        shown = ", ".join(map(str, skipped[:5])) + (", ..." if len(skipped) > 5 else "")
        log.warning("%s: skipped %d line(s) that are torn, not a JSON object or without a step (line %s)",
                    path, len(skipped), shown)
    return records, monitors
