"""Run folders are never overwritten or mixed (issue 21): pretrain, supervised, detect and segment
refuse a folder that holds another run, unless --resume continues it or --overwrite moves it aside."""

import json
import os
from pathlib import Path

import pytest
from conftest import cifar_subset

from mocolab.cli import main
from mocolab.runtime import prepare_run_dir

TINY = ["--epochs", "1", "optim.batch_size=8", "model.width=8", "moco.queue_size=32", "model.hidden_dim=32",
        "data.image_size=16", "run.threads=1", "run.amp=off"]


def one_line_error(capsys, argv, text) -> None:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("mocolab: error:")]
    assert len(errors) == 1 and text in errors[0], err
    assert "Traceback" not in err


def fake_run(folder, command=None, task=None):
    """A finished run's files, as far as the guard looks at them."""
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "checkpoints" / "final.pth").write_bytes(b"old")
    (folder / "config.yaml").write_text(f"task:\n  kind: {task}\n" if task else "model:\n  arch: resnet18\n")
    (folder / "summary.json").write_text("{}")
    if command:
        (folder / "command.json").write_text(json.dumps({"command": command}))
    return folder


def test_guard_refuses_resumes_same_command_and_moves_aside(tmp_path):
    prepare_run_dir(tmp_path / "new", "pretrain")  # a new folder: fine, the command recorded
    assert json.loads((tmp_path / "new" / "command.json").read_text()) == {"command": "pretrain"}
    (tmp_path / "empty").mkdir()
    prepare_run_dir(tmp_path / "empty", "supervised")
    run = fake_run(tmp_path / "run", "pretrain")
    with pytest.raises(ValueError, match=r"already holds a `mocolab pretrain` run \(config.yaml, summary.json, "
                                         r"checkpoints\): pass --resume auto"):
        prepare_run_dir(run, "pretrain")
    prepare_run_dir(run, "pretrain", resume=True)
    with pytest.raises(ValueError, match="not a `mocolab supervised` run"):
        prepare_run_dir(run, "supervised", resume=True)
    with pytest.raises(ValueError, match="give one of them"):
        prepare_run_dir(run, "pretrain", resume=True, overwrite=True)
    prepare_run_dir(run, "supervised", overwrite=True)
    # nothing of the old run left in OUT; its lock (this process's) moved to the new folder
    assert sorted(p.name for p in run.iterdir()) == [".lock", "command.json"]
    assert f"PID {os.getpid()} on host" in (run / ".lock").read_text()
    (aside,) = tmp_path.glob("run.replaced-*")
    assert not (aside / ".lock").exists()
    assert (aside / "checkpoints" / "final.pth").read_bytes() == b"old"  # moved as a whole
    assert json.loads((aside / "command.json").read_text())["command"] == "pretrain"
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        prepare_run_dir(tmp_path / "file", "pretrain")


def test_kind_of_an_older_run_comes_from_its_config(tmp_path):
    run = fake_run(tmp_path / "seg", task="segment")  # no command.json: a run made before it
    with pytest.raises(ValueError, match="holds a `mocolab segment` run, not a `mocolab detect` run"):
        prepare_run_dir(run, "detect", resume=True)
    prepare_run_dir(run, "segment", resume=True)


def test_pretrain_refuses_a_finished_run_and_overwrite_replaces_it_whole(flat, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["pretrain", "--data", str(flat), "--out", str(out), *TINY, "run.save_every=1"]) == 0
    old = {p.relative_to(out) for p in out.rglob("*")} - {Path(".lock")}  # the lock stays with the process
    assert (out / "checkpoints" / "epoch_0001.pth").is_file()
    before = (out / "summary.json").read_text()
    one_line_error(capsys, ["pretrain", "--data", str(flat), "--out", str(out), *TINY],
                   "already holds a `mocolab pretrain` run")
    assert (out / "summary.json").read_text() == before
    # supervised into the pretraining's folder: refused too, also with --resume auto
    one_line_error(capsys, ["supervised", "--data", str(flat), "--out", str(out), *TINY],
                   "already holds a `mocolab pretrain` run")
    one_line_error(capsys, ["supervised", "--data", str(flat), "--out", str(out), "--resume", "auto", *TINY],
                   "not a `mocolab supervised` run")
    # --resume auto continues the same run (here: already finished, 1 epoch -> 2)
    assert main(["pretrain", "--data", str(flat), "--out", str(out), "--resume", "auto", "--epochs", "2"]) == 0
    assert json.loads((out / "summary.json").read_text())["epochs"] == 2
    # --overwrite: a new run with nothing of the old one beside it; the old one kept aside, whole
    assert main(["pretrain", "--data", str(flat), "--out", str(out), *TINY, "run.save_every=0", "--overwrite"]) == 0
    (aside,) = tmp_path.glob("run.replaced-*")
    assert old <= {p.relative_to(aside) for p in aside.rglob("*")}
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["final.pth"]
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [2]  # this run's 2 steps only (the old one logged up to step 4)


def test_supervised_refuses_a_run_folder(cifar_dir, tmp_path, capsys):
    data = cifar_subset(cifar_dir, tmp_path / "data", 8)
    out = tmp_path / "sup"
    args = ["supervised", "--data", str(data), "--out", str(out), *TINY]
    assert main(args) == 0
    one_line_error(capsys, args, "already holds a `mocolab supervised` run")
    one_line_error(capsys, ["pretrain", "--data", str(data), "--out", str(out), "--resume", "auto", *TINY],
                   "not a `mocolab pretrain` run")
    assert main(args + ["--overwrite"]) == 0
    assert len(list(tmp_path.glob("sup.replaced-*"))) == 1


@pytest.mark.parametrize("kind", ["detect", "segment"])
def test_detect_and_segment_refuse_a_run_folder(kind, tmp_path, capsys):
    run = fake_run(tmp_path / "run", "pretrain")
    one_line_error(capsys, [kind, "--backbone", "random:cifar10_cpu", "--data", str(tmp_path), "--out", str(run)],
                   "already holds a `mocolab pretrain` run")
    one_line_error(capsys, [kind, "--backbone", "random:cifar10_cpu", "--data", str(tmp_path), "--out", str(run),
                            "--resume", "auto"], f"not a `mocolab {kind}` run")
    seg = fake_run(tmp_path / "seg", task="segment")
    if kind == "detect":
        one_line_error(capsys, [kind, "--backbone", "random:cifar10_cpu", "--data", str(tmp_path), "--out",
                                str(seg)], "already holds a `mocolab segment` run")


def test_evaluations_never_replace_each_others_results(cifar_dir, tmp_path, capsys):
    """`linear --mode paper`, `finetune` and `linear --mode cached` beside one checkpoint: each setting
    (epochs, fraction, seed) writes a file of its own, named by protocol, seed and settings; a rerun
    with the same settings writes its own file again and touches no other."""
    data = cifar_subset(cifar_dir, tmp_path / "data", 8)
    res = tmp_path / "results"
    base = ["--random-init", "cifar10_cpu", "--data", str(data), "--results-dir", str(res), "--image-size", "16"]
    runs = [["linear", "--mode", "paper", "--epochs", "1", "--batch-size", "8", *base],
            ["linear", "--mode", "paper", "--epochs", "2", "--batch-size", "8", *base],
            ["linear", "--mode", "paper", "--epochs", "1", "--batch-size", "8", *base[:-2], "--image-size", "16",
             "--seed", "1"],
            ["finetune", "--label-fraction", "0.5", "--epochs", "1", "--batch-size", "8", *base],
            ["finetune", "--label-fraction", "1.0", "--epochs", "1", "--batch-size", "8", *base],
            ["linear", "--mode", "cached", *base]]
    files = {}
    for argv in runs:
        before = {p: p.read_bytes() for p in res.glob("*.json")}
        assert main(argv) == 0
        new = {p for p in res.glob("*.json")} - set(before)
        assert len(new) == 1, (argv, new)  # a file of its own
        assert all(p.read_bytes() == b for p, b in before.items())  # no other file touched
        files[tuple(argv)] = new.pop()
    names = sorted(p.name for p in files.values())
    assert sum(n.startswith("random_cifar10_cpu_seed0.linear_paper.seed0.") for n in names) == 2
    assert sum(n.startswith("random_cifar10_cpu_seed1.linear_paper.seed1.") for n in names) == 1
    assert sum(".finetune_0.5.seed0." in n for n in names) == 1 and sum(".finetune_1.seed0." in n for n in names) == 1
    epochs = {json.loads(files[tuple(a)].read_text())["settings"]["fit"]["epochs"] for a in runs[:2]}
    assert epochs == {1, 2}
    # the same command again: its own file is rewritten, nothing else, no new file
    first = files[tuple(runs[0])]
    others = {p: p.read_bytes() for p in res.glob("*.json") if p != first}
    assert main(runs[0]) == 0
    assert set(res.glob("*.json")) == set(others) | {first}
    assert all(p.read_bytes() == b for p, b in others.items())
