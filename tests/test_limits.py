"""Limits (issue 28): a queue, an image size or a temperature the run could not honour is one line
(exit 2) before anything is allocated or any data is read."""

import resource
import subprocess
import sys

import pytest

from mocolab.config import ConfigError, build_config
from mocolab.limits import MIN_T, LimitError, available_memory, check_sizes, memory_needs


def _pretrain(tmp_path, *overrides):
    # --data names a folder that does not exist: the refusal must come before the data is looked at
    return subprocess.run([sys.executable, "-m", "mocolab", "pretrain", "--data", str(tmp_path / "no_data"),
                           "--out", str(tmp_path / "run"), *overrides], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("override,text", [
    ("moco.queue_size=1e9", "for the logits batch x (1+K)"),
    ("data.image_size=100000", "data.image_size=100000"),
    ("moco.T=1e-30", "moco.T=1e-30 is below 0.0001"),
])
def test_pretrain_refuses_in_one_line_before_allocating(tmp_path, override, text):
    res = _pretrain(tmp_path, override)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mocolab: error:") and text in lines[0], res.stderr
    assert "Traceback" not in res.stderr
    if "T=" not in override:
        assert "GB" in lines[0] and "this machine has" in lines[0]


def test_sizes_are_refused_before_allocation_in_process():
    """The check itself allocates nothing: peak RSS stays put while it refuses 500 GB."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
    with pytest.raises(LimitError, match="needs at least"):
        build_config("cifar10_cpu", ["moco.queue_size=1e9"])
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200 * 1024


def test_the_needs_are_the_tensors_sizes():
    cfg = build_config("cifar10_cpu")  # K 512, dim 128, batch 128, 32 px, width 16, CIFAR stem
    needs = memory_needs(cfg, n_train=50000)
    assert needs["negatives K x dim"] == 512 * 128 * 4
    assert needs["logits batch x (1+K)"] == 128 * 513 * 4
    assert needs["views batch x 3 x crop^2"] == 2 * 128 * 3 * 32 * 32 * 4
    assert needs["first activation batch x width x side^2"] == 2 * 128 * 16 * 32 * 32 * 4
    assert needs["decoded cache n x 3 x side^2"] == 50000 * 3 * 32 * 32
    assert "memory bank n x dim" not in needs  # moco has no bank
    bank = build_config("cifar10_cpu", ["moco.method=bank", "moco.queue_size=0"])
    assert memory_needs(bank, 1000)["memory bank n x dim"] == 1000 * 128 * 4
    assert memory_needs(bank, 1000)["negatives K x dim"] == 1000 * 128 * 4  # K = 0: every entry
    check_sizes(cfg, 50000)  # CIFAR-10 fits
    n = available_memory() // (3 * 32 * 32) + 1  # a decoded cache one image over the machine's memory
    with pytest.raises(LimitError, match=f"{n} training images"):
        check_sizes(cfg, n)


@pytest.mark.parametrize("key", ["moco.T", "run.knn_t"])
def test_temperatures_below_the_floor_are_refused(key):
    build_config("cifar10_cpu", [f"{key}={MIN_T}"])  # the floor itself is accepted
    with pytest.raises(ConfigError, match=f"{key}=1e-05 is below"):
        build_config("cifar10_cpu", [f"{key}=1e-5"])


def test_knn_refuses_an_image_size_over_memory_in_one_line(tmp_path):
    res = subprocess.run([sys.executable, "-m", "mocolab", "knn", "--checkpoint", "random:cifar10_cpu", "--data",
                          str(tmp_path), "--image-size", "100000"], capture_output=True, text=True, timeout=300)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and "--image-size 100000 needs at least" in lines[0], res.stderr
