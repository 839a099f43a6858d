"""Values and sizes refused before anything is allocated: a temperature too small for float32
and memory a run could not have.

The sizes are lower bounds of what a run must hold at once (float32 = 4 bytes): the negatives'
store and its logits, the memory bank, a batch of views with its first activation, the decoded
image cache. A config over the machine's memory would otherwise fail in the middle of an
allocation (a traceback, or the OOM killer) after minutes of data loading; here it is one line
giving the bytes needed."""

from __future__ import annotations

import math
import os

from .auto import K_MAX, is_auto
from .config import ConfigError

# the smallest temperature accepted (moco.T, run.knn_t, knn/compare --t): logits sim / T of
# |sim| <= 1 stay below 1e4 in magnitude. Below it the kNN vote is 1-NN anyway (eval.knn.vote) and
# InfoNCE's loss scales as 1 / T (moco.T=1e-30 trained to a loss of 9e28 and exited 0).
MIN_T = 1e-4


class LimitError(ConfigError):
    """A value or size a run cannot honour; the message is for the user, as is (one line)."""


def check_temperature(t: float, name: str) -> None:
    """Refuses a temperature below MIN_T (or not a number), naming the setting `name`."""
    if not (isinstance(t, (int, float)) and MIN_T <= t < math.inf):
        raise LimitError(f"{name}={t:g} is below {MIN_T:g} (or not finite): logits similarity / {name} that large "
                         f"overflow or lose float32's precision (and a kNN vote is 1-NN already at {MIN_T:g}); "
                         f"give {name} >= {MIN_T:g}")


def available_memory(device=None) -> int:
    """Bytes a run may use: CUDA's free memory on a CUDA device, else the machine's physical memory."""
    if device is not None and str(device).startswith("cuda"):
        import torch

        return torch.cuda.mem_get_info(torch.device(device))[0]
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def memory_needs(cfg, n_train: int = 0) -> dict[str, int]:
    """{what: bytes} that a pretraining of `cfg` holds at once, at least (lower bounds: float32
    tensors it cannot do without). n_train: the training set's size (0: not known yet; the bank
    and the decoded cache are then left out)."""
    from .data import cache_size_for
    from .registry import METHODS

    method = METHODS.get(cfg.moco.method)  # the registry: no import of the methods layer from here
    B, dim = cfg.optim.batch_size, cfg.model.dim
    K = method.num_negatives(cfg) or n_train  # bank: K = 0 draws every entry
    if is_auto(K):  # moco.queue_size=auto: at most K_MAX
        K = K_MAX
    crop = cfg.data.crop_size or cfg.data.image_size
    views = method.num_views
    needs = {
        # the queue (moco) or the negatives drawn from the bank (bank): K x dim
        "negatives K x dim": K * dim * 4,
        # the step's logits B x (1 + K)
        "logits batch x (1+K)": B * (1 + K) * 4,
        # the batch of views, float32 after augmentation: views x B x 3 x crop x crop
        "views batch x 3 x crop^2": views * B * 3 * crop * crop * 4,
    }
    if cfg.model.arch.startswith("resnet"):  # the stem's output: width channels at crop (CIFAR stem) or crop / 4
        stem = cfg.model.stem if cfg.model.stem != "auto" else ("cifar" if crop < 96 else "imagenet")
        side = crop if stem == "cifar" else crop // 4
        needs["first activation batch x width x side^2"] = views * B * cfg.model.width * side * side * 4
    side = cache_size_for(cfg.data.image_size)  # the side images are decoded to
    needs["one decoded image 3 x side^2"] = 3 * side * side
    if n_train and method.needs_index:  # the memory bank: one entry per training image
        needs["memory bank n x dim"] = n_train * dim * 4
    if n_train and cfg.data.cache:  # the decoded uint8 cache of the training split, in memory
        needs["decoded cache n x 3 x side^2"] = n_train * 3 * side * side
    return needs


def _where(device) -> str:
    return str(device) if device is not None and str(device).startswith("cuda") else "this machine"


def _gb(n: float) -> str:
    return f"{n / 2**30:.1f} GB" if n >= 2**30 / 10 else f"{n / 2**20:.1f} MB"


def check_sizes(cfg, n_train: int = 0, device=None) -> None:
    """Refuses, as one line, a config whose memory_needs exceed the memory available on `device`
    (None or a CPU: the machine's physical memory; CUDA: its free memory)."""
    needs = memory_needs(cfg, n_train)
    total, have = sum(needs.values()), available_memory(device)
    if total > have:
        what, most = max(needs.items(), key=lambda kv: kv[1])
        raise LimitError(f"the config needs at least {_gb(total)} of memory ({_gb(most)} for the {what}: "
                         f"moco.queue_size={cfg.moco.queue_size}, optim.batch_size={cfg.optim.batch_size}, "
                         f"data.image_size={cfg.data.image_size}{f', {n_train} training images' if n_train else ''})"
                         f" and {_where(device)} has {_gb(have)}; make them smaller")


def check_eval_size(image_size: int, batch_size: int = 512, device=None) -> None:
    """Refuses an evaluation image size whose feature-extraction batch (batch x 3 x S x S float32,
    eval.features' default 512 images) and one decoded image do not fit the memory of `device`."""
    from .data import cache_size_for

    side = cache_size_for(image_size)
    need, have = batch_size * 3 * image_size * image_size * 4 + 3 * side * side, available_memory(device)
    if need > have:
        raise LimitError(f"--image-size {image_size} needs at least {_gb(need)} of memory (a batch of {batch_size} "
                         f"images of 3 x {image_size} x {image_size} float32) and {_where(device)} has "
                         f"{_gb(have)}; give a smaller --image-size")


def check_config(cfg, n_train: int = 0, device=None) -> None:
    """The temperatures and the sizes of a pretraining config (called by Config.validate, and by
    pretraining once the training set's size and the device are known)."""
    check_temperature(cfg.moco.T, "moco.T")
    check_temperature(cfg.run.knn_t, "run.knn_t")
    check_sizes(cfg, n_train, device)
