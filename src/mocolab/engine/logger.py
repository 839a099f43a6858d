"""metrics.jsonl and TensorBoard: the training log, written by rank 0 only."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from .. import distributed as du

log = logging.getLogger("mocolab")


class MetricsLogger:
    """Appends one JSON line per record to RUN_DIR/metrics.jsonl (flushed at once: a killed run
    keeps every line it logged) and mirrors the numbers to TensorBoard (RUN_DIR/tb)."""

    def __init__(self, out: Path | None):
        self.file = self.tb = None
        if out is not None and du.is_main():
            self.file = open(out / "metrics.jsonl", "a")
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(str(out / "tb"))
            except ImportError:  # tensorboard is optional at run time
                log.warning("tensorboard is not installed; writing metrics.jsonl only")

    def write(self, record: dict, step: int) -> None:
        if self.file is None:
            return
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("step", "epoch"):
                    self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        """Closes both; a write error here (a full disk) was already reported by the write that
        met it, so it is not raised a second time."""
        for handle in (self.file, self.tb):
            if handle is None:
                continue
            try:
                handle.close()
            except OSError as e:
                log.warning("could not close the metrics log: %s", e)
        self.file = self.tb = None
