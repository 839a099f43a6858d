"""When training compiles (torch.compile) and when compiled encoders run as CUDA graphs."""

from __future__ import annotations

import logging
import os
import shutil

import torch

from .config import Config

log = logging.getLogger("mocolab")


def uses_cudagraphs(cfg: Config, device: torch.device) -> bool:
    """Whether the compiled encoders run as CUDA graphs. Those replay from fixed memory, so
    train_step (and the kNN monitor, per batch) marks where each step begins (cudagraph trees)."""
    return device.type == "cuda" and cfg.run.compile_mode in ("reduce-overhead", "max-autotune")


def compiles(cfg: Config) -> bool:
    """run.compile, for runs long enough to win back a cold compile: with run.compile_min_minutes
    > 0 only a time budget at least that long compiles (epoch runs and short budgets stay eager)."""
    r = cfg.run
    if r.compile and r.compile_min_minutes > 0 and r.budget_minutes < r.compile_min_minutes:
        log.info("run.compile: off for this run (needs --budget-minutes >= run.compile_min_minutes=%g)",
                 r.compile_min_minutes)
        return False
    if r.compile and not any(shutil.which(c) for c in (os.environ.get("CXX", ""), "g++", "c++", "clang++") if c):
        log.warning("run.compile: no C++ compiler found (torch.compile's inductor needs one); training eagerly")
        return False
    return r.compile
