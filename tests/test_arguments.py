"""Every numeric argument and config value is range-checked with a one-line error (issue 21),
through the command line (in-process: each error comes before any data is read)."""

import pytest

from mocolab.cli import main


def one_line_error(capsys, argv, text) -> None:
    capsys.readouterr()
    assert main(argv) == 2, argv
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("mocolab: error:")]
    assert len(errors) == 1 and text in errors[0], err


PRETRAIN = ["pretrain", "--data", "/no/such/data", "--out", "{tmp}/o"]

CLI_CASES = [
    (PRETRAIN + ["--budget-minutes", "-3"], "--budget-minutes must be positive, got -3"),
    (PRETRAIN + ["--budget-minutes", "0"], "--budget-minutes must be positive, got 0"),
    (PRETRAIN + ["--budget-minutes", "nan"], "--budget-minutes must be positive"),
    (PRETRAIN + ["--epochs", "0"], "--epochs must be positive"),
    (PRETRAIN + ["--batch-size", "-8"], "--batch-size must be positive"),
    (["knn", "--checkpoint", "random:cifar10_cpu", "--data", "/x", "--k", "0"], "--k must be positive"),
    (["knn", "--checkpoint", "random:cifar10_cpu", "--data", "/x", "--t", "0"], "--t must be positive"),
    (["knn", "--checkpoint", "random:cifar10_cpu", "--data", "/x", "--image-size", "4"], "--image-size must be >= 8"),
    (["knn", "--checkpoint", "random:cifar10_cpu", "--data", "/x", "--limit", "-1"], "--limit must be >= 0"),
    (["linear", "--random-init", "cifar10_cpu", "--data", "/x", "--seed", "-1"], "--seed must be >= 0"),
    (["linear", "--random-init", "cifar10_cpu", "--data", "/x", "--mode", "paper", "--lr", "-1"],
     "--lr must be positive"),
    (["linear", "--random-init", "cifar10_cpu", "--data", "/x", "--momentum", "1"], "--momentum must lie in [0, 1)"),
    (["linear", "--random-init", "cifar10_cpu", "--data", "/x", "--weight-decay", "-1"],
     "--weight-decay must be >= 0"),
    (["finetune", "--random-init", "cifar10_cpu", "--data", "/x", "--label-fraction", "0"],
     "a label fraction must lie in (0, 1]"),
    (["finetune", "--random-init", "cifar10_cpu", "--data", "/x", "--label-fraction", "1.5"],
     "a label fraction must lie in (0, 1]"),
    (["finetune", "--random-init", "cifar10_cpu", "--data", "/x", "--label-fraction", "0.1", "--budget-minutes",
      "0"], "--budget-minutes must be positive"),
    (["supervised", "--data", "/x", "--out", "{tmp}/s", "--epochs", "-1"], "--epochs must be positive"),
    (["compare", "random:cifar10_cpu", "--data", "/x", "--out", "{tmp}/c", "--k", "0"], "--k must be positive"),
    (["compare", "random:cifar10_cpu", "--data", "/x", "--out", "{tmp}/c", "--fractions", "0.1", "2"],
     "a label fraction must lie in (0, 1]"),
    (["compare", "random:cifar10_cpu", "--data", "/x", "--out", "{tmp}/c", "--seeds", "-1"], "seeds >= 0"),
    (["detect", "--backbone", "random:cifar10_cpu", "--data", "/x", "--out", "{tmp}/d", "--iters", "0"],
     "--iters must be positive"),
    (["segment", "--backbone", "random:cifar10_cpu", "--data", "/x", "--out", "{tmp}/g", "--seed", "-2"],
     "--seed must be >= 0"),
    (["segment", "--backbone", "random:cifar10_cpu", "--data", "/x", "--out", "{tmp}/g", "--budget-minutes", "-1"],
     "--budget-minutes must be positive"),
    (["sweep", "--data", "/x", "--out", "{tmp}/w", "--grid", "moco.m=0.9,0.99", "--budget-minutes", "0"],
     "--budget-minutes must be positive"),
    (["sweep", "--data", "/x", "--out", "{tmp}/w", "--grid", "moco.m=0.9,0.99", "--knn-every", "-1"],
     "--knn-every must be >= 0"),
    (["shards", "--data", "/x", "--out", "{tmp}/sh", "--shard-size", "0"], "--shard-size must be positive"),
    (["shards", "--data", "/x", "--out", "{tmp}/sh", "--seed", "-1"], "--seed must be >= 0"),
]


@pytest.mark.parametrize("argv,message", CLI_CASES, ids=[" ".join(a[:1] + a[-2:]) for a, _ in CLI_CASES])
def test_command_line_numbers_are_range_checked(argv, message, tmp_path, capsys):
    one_line_error(capsys, [a.replace("{tmp}", str(tmp_path)) for a in argv], message)


CONFIG_CASES = [
    ("run.budget_minutes=-3", "run.budget_minutes must be >= 0"),
    ("run.epochs=0", "run.epochs must be >= 1"),
    ("optim.batch_size=1", "optim.batch_size must be >= 2"),
    ("optim.base_batch_size=0", "optim.base_batch_size must be >= 1"),
    ("optim.lr=0", "optim.lr must be positive"),
    ("optim.lr=nan", "optim.lr must be positive"),
    ("optim.momentum=1", "optim.momentum must lie in [0, 1)"),
    ("optim.weight_decay=-1", "optim.weight_decay and optim.warmup_epochs must be >= 0"),
    ("optim.milestones=0.5,1.5", "optim.milestones must be fractions"),
    ("moco.T=0", "moco.T must be positive"),
    ("moco.m=1", "moco.m must lie in [0, 1)"),
    ("moco.m=-0.1", "moco.m must lie in [0, 1)"),
    ("moco.queue_size=0", "moco.queue_size must be >= 1"),
    ("run.knn_k=0", "run.knn_k must be >= 1"),
    ("run.knn_t=0", "run.knn_k must be >= 1, run.knn_t positive"),
    ("data.image_size=4", "data.image_size must be >= 8"),
    ("data.workers=-1", "data.workers and data.limit must be >= 0"),
    ("data.limit=-5", "data.workers and data.limit must be >= 0"),
    ("run.seed=-1", "run.seed must be >= 0"),
    ("run.threads=-1", "run.threads must be >= 0"),
]


@pytest.mark.parametrize("override,message", CONFIG_CASES, ids=[o for o, _ in CONFIG_CASES])
def test_config_values_are_range_checked(override, message, tmp_path, capsys):
    one_line_error(capsys, ["pretrain", "--data", "/x", "--out", str(tmp_path / "o"), override], message)


@pytest.mark.parametrize("override,message", [
    ("run.budget_minutes=-1", "run.budget_minutes must be >= 0"),
    ("optim.momentum=1.5", "optim.momentum must lie in [0, 1)"),
    ("run.seed=-1", "run.seed must be >= 0"),
    ("task.workers=-1", "task.workers and task.num_classes must be >= 0"),
])
def test_transfer_config_values_are_range_checked(override, message, tmp_path, capsys):
    one_line_error(capsys, ["segment", "--backbone", "random:cifar10_cpu", "--data", "/x",
                            "--out", str(tmp_path / "o"), override], message)


def test_budget_zero_in_a_config_means_none():
    from mocolab.config import build_config

    assert build_config("cifar10_cpu", ["run.budget_minutes=0"]).run.budget_minutes == 0
