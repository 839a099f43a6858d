import os
from pathlib import Path

import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CIFAR = Path(os.environ.get("MOCOLAB_TEST_DATA", ROOT.parent / "shared" / "data" / "cifar10"))
SHARED = Path(os.environ.get("MOCOLAB_SHARED_DATA", ROOT.parent / "shared" / "data"))


def load_benchmark(name: str):
    """benchmarks/<name>.py as a module (the scripts are not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def shared(sub: str) -> Path:
    """A folder of ../shared/data (or MOCOLAB_SHARED_DATA). CI must have it: there it fails."""
    p = SHARED / sub
    if not p.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"test data not found at {p} (set MOCOLAB_SHARED_DATA)")
        pytest.skip(f"test data not found at {p} (set MOCOLAB_SHARED_DATA)")
    return p


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Decoded-image caches go to a per-session folder, never the user's ~/.cache."""
    os.environ["MOCOLAB_CACHE"] = str(tmp_path_factory.mktemp("mocolab_cache"))
    torch.set_num_threads(max(1, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _restore_threads():
    """A command run in this process with run.threads=N sets torch's thread count for the whole
    process: each test gets back the count it started with, whatever ran before it."""
    threads = torch.get_num_threads()
    yield
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def cifar_dir() -> Path:
    """The real CIFAR-10 JPEGs (../shared/data/cifar10). CI must have them: there it fails."""
    if not (CIFAR / "train").is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"CIFAR-10 test data not found at {CIFAR} (set MOCOLAB_TEST_DATA)")
        pytest.skip(f"CIFAR-10 test data not found at {CIFAR} (set MOCOLAB_TEST_DATA)")
    return CIFAR


@pytest.fixture(scope="session")
def two_ranks(tmp_path_factory) -> Path:
    """The folder of files that every 2-process gloo check writes (test_distributed, test_mocov3),
    from one spawn for the session: each spawned process spends seconds importing torch."""
    from test_distributed import spawn_two_rank_checks

    return spawn_two_rank_checks(tmp_path_factory.mktemp("two_ranks"))


def tiny_config(**over):
    """A small, fast config for unit tests (width-8 CIFAR ResNet-18)."""
    from mocolab.config import Config, apply_overrides

    cfg = Config()
    base = ["model.width=8", "model.stem=cifar", "model.hidden_dim=64", "model.dim=16", "model.bn_splits=2",
            "moco.queue_size=64", "moco.m=0.9", "moco.T=0.2", "data.image_size=16", "data.augment=cifar",
            "optim.batch_size=8", "optim.lr=0.05", "optim.base_batch_size=8", "run.channels_last=false",
            "run.amp=off", "run.log_every=2"]
    return apply_overrides(cfg, base + [f"{k}={v}" for k, v in over.items()]).validate()


def cifar_subset(cifar_dir: Path, dest: Path, n: int, classes=("airplane", "cat")) -> Path:
    """dest/{train,test}/<class>/: the first n real CIFAR-10 JPEGs of each class and split."""
    for split in ("train", "test"):
        for cls in classes:
            (dest / split / cls).mkdir(parents=True)
            for src in sorted((cifar_dir / split / cls).glob("*.jpg"))[:n]:
                (dest / split / cls / src.name).write_bytes(src.read_bytes())
    return dest


@pytest.fixture
def flat(tmp_path):
    """A flat folder of 16 unlabeled 20 x 20 PNGs (no class sub-folders)."""
    d = tmp_path / "flat"
    d.mkdir()
    for i in range(16):
        Image.new("RGB", (20, 20), (i * 10, 50, 100)).save(d / f"{i}.png")
    return d
