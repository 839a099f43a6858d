"""Result names (issue 28): every option of an evaluation command (knn, linear, finetune, compare)
either changes the name of the result file it writes, or is declared irrelevant, with its reason,
in the one list mocolab.eval.results.NOT_IN_NAME; an option added later fails here until it is
one or the other. The walk runs each command through the CLI (mocolab.cli.main) with the heavy
parts replaced (the names are settled before them); the amp/store test runs `knn` for real."""

import json
import shlex

import pytest
import torch
from conftest import cifar_subset

from mocolab.cli import main, parser
from mocolab.eval import protocols
from mocolab.eval.results import NOT_IN_NAME
from mocolab.eval.store import FeatureStore

COMMANDS = ("knn", "linear", "finetune", "compare")

# command -> option dest -> (context: arguments given to both runs, change: arguments of the second run).
# An argument "--x" set to None is removed. {A}, {B}: two checkpoints; {D}, {D2}: two data folders; {R}: a folder.
COMMON = {
    "data": ({}, {"--data": "{D2}"}),
    "limit": ({}, {"--limit": "3"}),
    "amp": ({}, {"--amp": "bf16"}),
    "stream": ({}, {"--stream": "on"}),
    "store_dtype": ({"--stream": "on"}, {"--store-dtype": "float16"}),
    "memory_limit_gb": ({"--stream": "on", "--store-dtype": "float16"}, {"--memory-limit-gb": "0.001"}),
}
TARGET = {
    "checkpoint": ({}, {"--checkpoint": "{B}"}),
    "random_init": ({}, {"--checkpoint": None, "--random-init": "cifar10_cpu"}),
    "image_size": ({}, {"--image-size": "16"}),
    "results_dir": ({}, {"--results-dir": "{R}"}),
    "seed": ({}, {"--seed": "1"}),
}
PAPER = {"--mode": "paper"}
VARIANTS = {
    "knn": {**COMMON, "checkpoint": ({}, {"--checkpoint": "{B}"}), "image_size": ({}, {"--image-size": "16"}),
            "k": ({}, {"--k": "5"}), "t": ({}, {"--t": "0.05"}), "features": ({}, {"--features": "head"})},
    "linear": {**COMMON, **TARGET, "mode": ({}, PAPER), "weight_decay": ({}, {"--weight-decay": "0.001"}),
               "epochs": (PAPER, {"--epochs": "3"}), "lr": (PAPER, {"--lr": "1"}),
               "batch_size": (PAPER, {"--batch-size": "4"}), "momentum": (PAPER, {"--momentum": "0.5"}),
               "schedule": (PAPER, {"--schedule": "cosine"}), "milestones": (PAPER, {"--milestones": "50 70"}),
               "warmup_epochs": (PAPER, {"--warmup-epochs": "1"}), "budget_minutes": (PAPER, {"--budget-minutes": "1"}),
               "crop_scale": (PAPER, {"--crop-scale": "0.2 1"})},
    "finetune": {**COMMON, **TARGET, "label_fraction": ({}, {"--label-fraction": "0.25"}),
                 "epochs": ({}, {"--epochs": "3"}), "batch_size": ({}, {"--batch-size": "4"}),
                 "lr": ({}, {"--lr": "1"}), "weight_decay": ({}, {"--weight-decay": "0.01"}),
                 "backbone_lr_scale": ({}, {"--backbone-lr-scale": "0.1"}),
                 "budget_minutes": ({}, {"--budget-minutes": "1"}), "crop_scale": ({}, {"--crop-scale": "0.5 1"})},
    "compare": {**COMMON, "seed": ({}, {"--seed": "1"}), "entries": ({}, {"ENTRY": "{B}"}),
                "protocols": ({}, {"--protocols": "knn"}), "fractions": ({}, {"--fractions": "0.25"}),
                "budget_minutes_finetune": ({}, {"--budget-minutes-finetune": "1"}),
                "epochs_finetune": ({}, {"--epochs-finetune": "2"}), "paper_epochs": ({}, {"--paper-epochs": "3"}),
                "paper_budget_minutes": ({}, {"--paper-budget-minutes": "1"}),
                "k": ({}, {"--k": "5"}), "t": ({}, {"--t": "0.05"})},
}
BASE = {
    "knn": {"--checkpoint": "{A}"},
    "linear": {"--checkpoint": "{A}"},
    "finetune": {"--checkpoint": "{A}", "--label-fraction": "0.5"},
    "compare": {"ENTRY": "{A}", "--out": "{R}/cmp", "--protocols": "knn linear_cached linear_paper finetune",
                "--fractions": "0.5", "--seeds": "0"},
}


def _options(command: str) -> set[str]:
    sub = next(a for a in parser()._actions if a.dest == "command").choices[command]
    return {a.dest for a in sub._actions if a.dest != "help"}


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_is_in_the_name_or_declared_irrelevant(command):
    options = _options(command)
    unclassified = options - set(VARIANTS[command]) - set(NOT_IN_NAME)
    assert not unclassified, f"{command}: options neither in the result's name nor in results.NOT_IN_NAME"
    assert not set(VARIANTS[command]) - options  # no stale variant
    assert not set(VARIANTS[command]) & set(NOT_IN_NAME)  # one or the other
    assert all(isinstance(why, str) and len(why) > 20 for why in NOT_IN_NAME.values())


def test_the_irrelevant_list_names_only_real_options():
    assert set(NOT_IN_NAME) <= set().union(*(_options(c) for c in COMMANDS))


@pytest.fixture(scope="module")
def places(cifar_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("names")
    a, b = root / "a.pth", root / "b.pth"
    a.write_bytes(b"weights a")  # stand-ins: the test's load_for_eval gives a random backbone
    b.write_bytes(b"weights b")
    (root / "cwd").mkdir()
    return {"A": str(a), "B": str(b), "D": str(cifar_subset(cifar_dir, root / "d", 4)),
            "D2": str(cifar_subset(cifar_dir, root / "d2", 5)), "R": str(root / "results"), "C": str(root / "cwd")}


@pytest.fixture
def light(monkeypatch, places):
    """The protocols with their heavy parts replaced; returns the list of result paths written."""
    from mocolab.eval.load import random_backbone

    written = []
    monkeypatch.setattr(protocols, "load_for_eval",
                        lambda path, features, size: random_backbone("cifar10_cpu", 0, size))

    def stores(net, cfg, ctx, device, dtype, streamed):  # 2 classes, 8 x 4 random features each split
        g = torch.Generator().manual_seed(0)
        y = torch.arange(8) % 2
        return (FeatureStore.from_tensor(torch.randn(8, 4, generator=g), y),
                FeatureStore.from_tensor(torch.randn(8, 4, generator=g), y), 2, "memory")

    numbers = {"top1": 50.0, "top5": 100.0, "train_top1": 50.0, "weight_decay": 0.0, "epochs": 1.0,
               "batch_size": 4, "labeled_images": 4}
    monkeypatch.setattr(protocols, "feature_stores", stores)
    monkeypatch.setattr(protocols, "linear_from_stores", lambda *a, **k: dict(numbers))
    monkeypatch.setattr(protocols, "linear_paper", lambda *a, **k: dict(numbers))
    monkeypatch.setattr(protocols, "finetune", lambda *a, **k: dict(numbers))
    monkeypatch.setattr(protocols, "write_result", lambda path, rec: written.append(str(path)))
    monkeypatch.setattr("mocolab.eval.compare.bar_chart", lambda table, path: None)
    monkeypatch.chdir(places["C"])  # random-init results go to the current folder
    return written


def _argv(command: str, args: dict, places: dict) -> list[str]:
    argv = [command]
    for key, value in args.items():
        if value is None:
            continue
        value = value.format(**places)
        argv += shlex.split(value) if key == "ENTRY" else [key, *shlex.split(value)]
    return argv + ["--data", places["D"]] if "--data" not in args else argv


def _names(command: str, args: dict, places: dict, written: list) -> list[str]:
    written.clear()
    full = {"--stream": "off", "--amp": "off", **BASE[command], **args}
    assert main(_argv(command, full, places)) == 0, _argv(command, full, places)
    assert written, f"{command} wrote no result"
    return sorted(written)


_BEFORE: dict = {}  # (command, context) -> names: each context's first run, once


@pytest.mark.parametrize("command,option", [(c, o) for c in COMMANDS for o in VARIANTS[c]])
def test_each_option_changes_the_result_name(command, option, light, places, capsys):
    context, change = VARIANTS[command][option]
    key = (command, tuple(sorted(context.items())))
    if key not in _BEFORE:
        _BEFORE[key] = _names(command, context, places, light)
    before = _BEFORE[key]
    after = _names(command, {**context, **change}, places, light)
    assert after != before, f"{command} --{option.replace('_', '-')} does not change the result's name: {after}"


def test_knn_amp_and_the_float16_store_write_three_files(cifar_dir, tmp_path, capsys, monkeypatch):
    """Through the CLI for real: --amp off, --amp bf16 and --stream on --store-dtype float16 (on disk)
    are three results, each recording its settings."""
    data = cifar_subset(cifar_dir, tmp_path / "data", 6)
    common = ["knn", "--checkpoint", "random:cifar10_cpu", "--data", str(data), "--k", "5"]
    runs = [["--amp", "off", "--stream", "off"], ["--amp", "bf16", "--stream", "off"],
            ["--amp", "off", "--stream", "on", "--store-dtype", "float16", "--memory-limit-gb", "1e-9"]]
    monkeypatch.chdir(tmp_path)  # random-init results go to the current folder
    files = []
    for extra in runs:
        assert main([*common, *extra]) == 0
        files.append(capsys.readouterr().out.split("written: ")[1].strip())
    assert len(set(files)) == 3, files
    recs = [json.loads(open(f).read()) for f in files]
    assert [r["settings"]["amp"] for r in recs] == ["off", "bfloat16", "off"]
    assert recs[2]["settings"]["store_dtype"] == "float16" and recs[2]["features_store"] == "disk float16"
    assert [r["settings"]["stream"] for r in recs] == [False, False, True]
