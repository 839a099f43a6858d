"""When training compiles (torch.compile) and when compiled encoders run as CUDA graphs.

A compile pays back only when the steps it speeds up outweigh its own time, which is counted in a
budgeted run. On a 2-core CPU a cold compile takes 1-1.5 minutes and a warm one (the inductor
cache already holds the graphs) seconds (benchmarks/RESULTS.md, 2026-12-04, 'A first run as fast
as a later one'). So a run with run.compile compiles:
- always when run.compile_min_minutes is 0;
- otherwise only under a time budget (epoch runs stay eager):
  - when the inductor cache holds this run's graphs (a compiled run with the same graph key has
    trained there before and called remember(): a marker file beside inductor's own cache) and the
    budget is at least WARM_MIN_MINUTES;
  - from a cold cache when the budget is at least run.compile_min_minutes.
Every other run trains eagerly and says why in one log line.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shutil
from dataclasses import asdict
from pathlib import Path

import torch

from .config import Config

log = logging.getLogger("mocolab")

# a warm compile is ~5 s here (RESULTS.md): under a minute's budget that is a tenth of the run
WARM_MIN_MINUTES = 1.0
# data keys that change no compiled graph (paths, loader settings, subset sizes)
_DATA_KEYS_OFF = ("cache_dir", "workers", "limit", "shuffle_buffer", "knn_data")


def uses_cudagraphs(cfg: Config, device: torch.device) -> bool:
    """Whether the compiled encoders run as CUDA graphs. Those replay from fixed memory, so
    train_step (and the kNN monitor, per batch) marks where each step begins (cudagraph trees)."""
    return device.type == "cuda" and cfg.run.compile_mode in ("reduce-overhead", "max-autotune")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def graph_key(cfg: Config) -> str:
    """What decides the compiled graphs (model, method, augmentation, batch, precision, mode, device,
    torch, CPU): two runs with the same key compile the same graphs. Hex digest."""
    data = {k: v for k, v in asdict(cfg.data).items() if k not in _DATA_KEYS_OFF}
    r = cfg.run
    run = {"amp": r.amp, "channels_last": r.channels_last, "compile_mode": r.compile_mode, "device": r.device}
    parts = {"model": asdict(cfg.model), "moco": asdict(cfg.moco), "data": data, "batch_size": cfg.optim.batch_size,
             "run": run, "torch": torch.__version__, "cpu": _cpu_name()}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def marker_dir() -> Path:
    """mocolab's markers inside inductor's cache folder (TORCHINDUCTOR_CACHE_DIR or its default), so
    that emptying that cache empties them too."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    return Path(os.environ.get("TORCHINDUCTOR_CACHE_DIR") or default_cache_dir()).absolute() / "mocolab_graphs"


def cache_holds(cfg: Config) -> bool:
    """Whether a compiled run with this config's graphs has finished against the current inductor cache."""
    return (marker_dir() / f"{graph_key(cfg)}.json").is_file()


def _info(cfg: Config) -> dict:
    return {"arch": cfg.model.arch, "batch_size": cfg.optim.batch_size, "torch": torch.__version__, "cpu": _cpu_name()}


def _write_marker(key: str, info: dict) -> None:
    d = marker_dir()
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / f"{key}.json.tmp{os.getpid()}"
    tmp.write_text(json.dumps(info))
    tmp.replace(d / f"{key}.json")


def remember(cfg: Config) -> None:
    """Marks this config's graphs as held by the inductor cache: call once a compiled run has trained
    (its graphs are then in inductor's cache; a run stopped while compiling marks nothing)."""
    _write_marker(graph_key(cfg), _info(cfg))


def _compiler_found() -> bool:
    return any(shutil.which(c) for c in (os.environ.get("CXX", ""), "g++", "c++", "clang++") if c)


def compile_decision(cfg: Config, warm: bool) -> tuple[bool, str]:
    """(compile?, why) for run.compile under this run's budget, given whether the inductor cache holds
    its graphs (warm). Pure: the policy the module docstring states."""
    r = cfg.run
    if not r.compile:
        return False, "run.compile=false"
    if r.compile_min_minutes <= 0:
        return True, "run.compile_min_minutes=0: always"
    budget = r.budget_minutes
    if budget <= 0:
        return False, "an epoch run (compiles only under --budget-minutes, or with run.compile_min_minutes=0)"
    if warm:
        if budget >= WARM_MIN_MINUTES:
            return True, "the inductor cache holds this run's graphs (a warm compile: seconds)"
        return False, f"a budget under {WARM_MIN_MINUTES:g} minute(s) (even a warm compile takes seconds)"
    if budget >= r.compile_min_minutes:
        return True, f"a cold compile pays back in a budget of {budget:g} >= run.compile_min_minutes"
    return False, (f"the inductor cache does not hold this run's graphs yet, and a cold compile pays back only "
                   f"under --budget-minutes >= run.compile_min_minutes={r.compile_min_minutes:g} ({budget:g} here)")


def inductor_settings(cfg: Config) -> None:
    """Inductor settings the compiled encoders need. With SplitBatchNorm (bn_splits > 1) inductor's
    mix-order reduction fusion (triton, GPUs only) fails in the backward of its grouped view:
    torch 2.11 on an H200 raised "AssertionError: 512 v.s. 4096" in MixOrderReduction.get_numel_rnumel
    (benchmarks/RESULTS.md, GPU check of 2026-12-04), and compiled with that fusion off."""
    import torch._inductor.config as inductor_config

    if cfg.model.bn_splits > 1 and hasattr(inductor_config.triton, "mix_order_reduction"):
        inductor_config.triton.mix_order_reduction = False


def compiles(cfg: Config) -> bool:
    """Whether this run compiles its encoders (and augmentation): compile_decision on the real cache
    state, and a C++ compiler present. A pretraining that compiled calls remember(cfg) once it has
    trained, so that the next budgeted run with these graphs compiles warm."""
    if not cfg.run.compile:
        return False
    ok, why = compile_decision(cfg, cache_holds(cfg))
    if not ok:
        log.info("run.compile: training eagerly: %s", why)
        return False
    if not _compiler_found():
        log.warning("run.compile: no C++ compiler found (torch.compile's inductor needs one); training eagerly")
        return False
    log.info("run.compile: compiling: %s", why)
    return True
