"""Every numeric argument and config value is range-checked with a one-line error (issue 21),
through the command line (in-process: each error comes before any data is read)."""

import pytest

from mocolab.cli import main


def one_line_error(capsys, argv, text) -> str:
    capsys.readouterr()
    assert main(argv) == 2, argv
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("mocolab: error:")]
    assert len(errors) == 1 and text in errors[0], err
    return errors[0]


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
    ("task.workers=-1", "task.num_classes and task.train_images must be >= 0"),
    ("task.train_images=-2", "task.train_images must be >= 0"),
    ("task.subset_seed=-2", "task.subset_seed must be -1 (run.seed) or a seed >= 0"),
])
def test_transfer_config_values_are_range_checked(override, message, tmp_path, capsys):
    one_line_error(capsys, ["segment", "--backbone", "random:cifar10_cpu", "--data", "/x",
                            "--out", str(tmp_path / "o"), override], message)


def test_budget_zero_in_a_config_means_none():
    from mocolab.config import build_config

    assert build_config("cifar10_cpu", ["run.budget_minutes=0"]).run.budget_minutes == 0


# ---- one checkpoint resolver: every command that takes weights takes the same things ----------

TINY = ["--epochs", "1", "optim.batch_size=8", "model.width=8", "moco.queue_size=32", "model.hidden_dim=32",
        "data.image_size=16", "run.threads=1", "run.amp=off", "run.save_every=0"]


@pytest.fixture(scope="module")
def weights(cifar_dir, tmp_path_factory):
    """A tiny labeled folder and every form of weights: run folder, training checkpoint, export,
    official MoCo checkpoint, torchvision state_dict, random:PRESET."""
    import torch
    from conftest import cifar_subset

    tmp = tmp_path_factory.mktemp("resolver")
    data = cifar_subset(cifar_dir, tmp / "data", 8)
    run = tmp / "run"
    assert main(["pretrain", "--data", str(data), "--out", str(run), *TINY]) == 0
    sd = torch.load(run / "backbone.pth", weights_only=True)
    (tmp / "official").mkdir()
    torch.save({"state_dict": {f"module.encoder_q.{k}": v for k, v in sd.items()}}, tmp / "official" / "moco.pth.tar")
    (tmp / "tv").mkdir()
    torch.save({**sd, "fc.weight": torch.zeros(10, 8 * 8), "fc.bias": torch.zeros(10)}, tmp / "tv" / "resnet.pth")
    (tmp / "text.pth").write_text("not weights")
    return data, {"run folder": str(run), "checkpoint": str(run / "checkpoints" / "final.pth"),
                  "export": str(run / "backbone.pth"), "official MoCo": str(tmp / "official" / "moco.pth.tar"),
                  "torchvision": str(tmp / "tv" / "resnet.pth"), "random": "random:cifar10_cpu"}, tmp


def _commands(data, entry, tmp):
    """Each command that takes weights, run on `entry` (tiny settings)."""
    results = str(tmp / "results")
    return {
        "knn": ["knn", "--checkpoint", entry, "--data", str(data), "--k", "5", "--image-size", "16"],
        "linear": ["linear", "--checkpoint", entry, "--data", str(data), "--image-size", "16",
                   "--weight-decay", "0.001", "--results-dir", results] if not entry.startswith("random:") else
                  ["linear", "--random-init", entry[7:], "--data", str(data), "--image-size", "16",
                   "--weight-decay", "0.001", "--results-dir", results],
        "finetune": ["finetune", "--checkpoint", entry, "--data", str(data), "--image-size", "16",
                     "--label-fraction", "1", "--epochs", "1", "--batch-size", "8", "--results-dir", results]
                    if not entry.startswith("random:") else
                    ["finetune", "--random-init", entry[7:], "--data", str(data), "--image-size", "16",
                     "--label-fraction", "1", "--epochs", "1", "--batch-size", "8", "--results-dir", results],
        "compare": ["compare", entry, "--data", str(data), "--out", str(tmp / "cmp"), "--protocols", "knn",
                    "--k", "5", "--force"],
    }


@pytest.mark.parametrize("form", ["run folder", "checkpoint", "export", "official MoCo", "torchvision", "random"])
def test_every_command_takes_every_form_of_weights(weights, form, capsys, monkeypatch):
    from mocolab.transfer.models import load_backbone

    data, forms, tmp = weights
    monkeypatch.chdir(tmp)  # knn of random:PRESET writes its result in the current folder
    entry = forms[form]
    for name, argv in _commands(data, entry, tmp).items():
        assert main(argv) == 0, (name, capsys.readouterr().err)
    if form != "random":
        out = tmp / f"export_{form.replace(' ', '_')}.safetensors"
        assert main(["export", entry, "--format", "safetensors", "--out", str(out), "--overwrite"]) == 0
    net, meta = load_backbone(entry)  # detect / segment --backbone
    assert meta["arch"] == "resnet10" and meta["width"] == (16 if form == "random" else 8)


@pytest.mark.parametrize("bad,message", [
    ("missing", "checkpoint not found"), ("empty", "folder without backbone.pth"),
    ("text", "is not a PyTorch checkpoint (a file saved with torch.save)")])
def test_every_command_words_a_bad_checkpoint_alike(weights, bad, message, capsys):
    data, _, tmp = weights
    (tmp / "empty_dir").mkdir(exist_ok=True)
    entry = {"missing": str(tmp / "nope.pth"), "empty": str(tmp / "empty_dir"), "text": str(tmp / "text.pth")}[bad]
    argvs = list(_commands(data, entry, tmp).values())[:3]  # compare records a failed cell instead
    argvs.append(["export", entry, "--format", "timm", "--out", str(tmp / "x.pth")])
    argvs.append(["detect", "--backbone", entry, "--data", str(data), "--out", str(tmp / f"det_{bad}")])
    argvs.append(["pretrain", "--data", str(data), "--out", str(tmp / f"pre_{bad}"), "--resume", entry])
    for argv in argvs:
        if argv[0] == "pretrain" and bad == "empty":  # --resume takes a run folder's newest checkpoint
            one_line_error(capsys, argv, "no readable checkpoint in")
        else:
            one_line_error(capsys, argv, message)


def test_knn_and_compare_write_their_own_result_files(weights, capsys):
    """`mocolab knn` names its file by the command and settings; `mocolab compare`'s kNN result is
    never replaced by it, and a kNN on other data gets a file of its own."""
    import json
    import shutil

    data, forms, tmp = weights
    run = tmp / "run"
    assert main(["compare", str(run), "--data", str(data), "--out", str(tmp / "cmp2"), "--protocols", "knn",
                 "--k", "5"]) == 0
    (compare_knn,) = run.glob("backbone.knn.seed0.*.json")
    before = compare_knn.read_bytes()
    assert main(["knn", "--checkpoint", str(run), "--data", str(data), "--k", "3", "--image-size", "16"]) == 0
    assert main(["knn", "--checkpoint", str(run), "--data", str(data), "--k", "4", "--image-size", "16"]) == 0
    other = shutil.copytree(data, tmp / "other_data")
    assert main(["knn", "--checkpoint", str(run), "--data", str(other), "--k", "4", "--image-size", "16"]) == 0
    assert compare_knn.read_bytes() == before
    (k3,) = run.glob("backbone.knn_k3_t0.1_backbone.seed0.*.json")
    assert json.loads(k3.read_text())["k"] == 3
    k4 = sorted(run.glob("backbone.knn_k4_t0.1_backbone.seed0.*.json"))
    assert sorted(json.loads(f.read_text())["data"] for f in k4) == sorted([str(data), str(other)])
