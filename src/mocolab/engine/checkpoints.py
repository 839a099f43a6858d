"""The run's checkpoint folder: atomic saves, the newest N periodic ones kept, the latest valid
one found again (--resume auto)."""

from __future__ import annotations

from pathlib import Path

from .. import distributed as du
from ..checkpoint import atomic_save, latest_checkpoint


class CheckpointManager:
    """RUN_DIR/checkpoints/: final.pth, epoch_NNNN.pth (epoch ends) and step_NNNNNNNN.pth (mid-
    epoch and preemption saves). Only rank 0 writes."""

    def __init__(self, out: Path | None, keep: int, steps_per_epoch: int):
        self.folder = out / "checkpoints" if out is not None else None
        self.keep = keep  # periodic checkpoints kept (the newest by step)
        self.steps_per_epoch = steps_per_epoch

    def save(self, state: dict, name: str) -> Path | None:
        """Writes `state` as `name` (temp file, fsync, rename) and prunes the oldest periodic
        checkpoints; None where this process does not write."""
        if self.folder is None or not du.is_main():
            return None
        self.folder.mkdir(exist_ok=True)
        path = self.folder / name
        atomic_save(state, path)
        self.prune()
        return path

    def _step_of(self, path: Path) -> int:
        kind, number = path.stem.split("_")
        return int(number) * (self.steps_per_epoch if kind == "epoch" else 1)

    def prune(self) -> None:
        """Keeps the newest `keep` periodic checkpoints (epoch ends and step saves, by step)."""
        periodic = sorted([*self.folder.glob("epoch_*.pth"), *self.folder.glob("step_*.pth")], key=self._step_of)
        for old in periodic[:-self.keep]:
            old.unlink(missing_ok=True)

    def latest(self) -> Path | None:
        """The newest checkpoint that loads."""
        return latest_checkpoint(self.folder.parent) if self.folder is not None else None
