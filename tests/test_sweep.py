import argparse
import csv
import json
from pathlib import Path

import pytest
from conftest import cifar_subset

from mocolab import sweep as sw
from mocolab.config import ConfigError

GRID = ["method=moco,bank,e2e", "moco.queue_size=256,1024", "moco.m=0.9,0.99"]


def test_parse_grid_resolves_keys_and_keeps_bracketed_commas():
    grid = sw.parse_grid(["method=moco,e2e", "lr=0.03,1e-1", "data.crop_scale=[0.2,1.0],[0.5,1]",
                          "shuffle_bn=on,off"])
    assert grid == {"moco.method": ["moco", "e2e"], "optim.lr": ["0.03", "0.1"],
                    "data.crop_scale": ["[0.2,1.0]", "[0.5,1.0]"],
                    "moco.shuffle_bn": ["true", "false"]}
    assert sw.split_values("[0.2,1.0],[0.5,1.0]") == ["[0.2,1.0]", "[0.5,1.0]"]


@pytest.mark.parametrize("item, words", [("moco.queue_sise=1,2", "unknown config key"),
                                         ("nope=1", "unknown config key"),
                                         ("moco.m=0.9,high", "not a valid float"),
                                         ("moco.m", "must look like key=v1,v2"),
                                         ("bogus.m=1", "unknown config group")])
def test_parse_grid_errors_are_one_line(item, words):
    with pytest.raises(ConfigError) as e:
        sw.parse_grid([item])
    assert words in str(e.value) and "\n" not in str(e.value)


def test_expand_drops_axes_a_method_ignores():
    cells = sw.plan("cifar10_cpu", GRID, [])
    methods = [c.cfg.moco.method for c in cells]
    assert (methods.count("moco"), methods.count("bank"), methods.count("e2e")) == (4, 2, 1)
    assert [c.name for c in cells if c.cfg.moco.method != "moco"] == [
        "method=bank__queue_size=256", "method=bank__queue_size=1024", "method=e2e"]
    seeded = sw.plan("cifar10_cpu", GRID, [], seeds="0,1")
    names = [c.name for c in seeded]
    assert len(names) == 14 and len(set(names)) == 14
    assert "method=moco__queue_size=256__m=0.9__seed=1" in names
    # deterministic: the same names whatever the grid's order or spelling
    again = sw.plan("cifar10_cpu", list(reversed(GRID[1:])) + ["moco.method=moco,bank,e2e"], [],
                    seeds="0,1")
    assert sorted(c.name for c in again) == sorted(names)
    assert [c.cfg.run.seed for c in seeded[:2]] == [0, 1]


def test_an_invalid_cell_fails_before_anything_runs(tmp_path):
    ran = []
    with pytest.raises(ConfigError, match=r"cell method=moco__queue_size=64: moco.queue_size"):
        sw.sweep("cifar10_cpu", "d", tmp_path, ["method=moco,bank", "moco.queue_size=1024,64"],
                 epochs=1, linear=False, runner=ran.append)
    assert not ran and not (tmp_path / "sweep.json").exists()
    with pytest.raises(ConfigError, match="not both"):
        sw.plan("cifar10_cpu", ["seed=0,1"], [], seeds="0")


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def fake_runner(calls, codes=None):
    """A stand-in for `mocolab pretrain`: writes what a finished run leaves, or returns codes[i]."""

    def run(cmd):
        calls.append(cmd)
        code = (codes or {}).get(len(calls), 0)
        if code:
            return code
        out = Path(cmd[cmd.index("--out") + 1])
        over = dict(a.split("=", 1) for a in cmd if "=" in a and not a.startswith("-"))
        knn = 30 + float(over.get("moco.queue_size", 2)) / 100 + int(over.get("run.seed", 0))
        out.mkdir(parents=True, exist_ok=True)
        recs = [{"epoch": 0, "step": 2, "loss": 5.0, "pretext_acc": 20.0},
                {"epoch": 1, "step": 4, "loss": 9.0},  # replaced by the resumed run's record
                {"epoch": 1, "knn_top1": knn - 5, "step": 4},
                {"epoch": 1, "step": 4, "loss": 4.0, "pretext_acc": 40.0}]
        (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs) + '{"torn')
        (out / "summary.json").write_text(json.dumps(
            {"knn_top1": knn, "images_per_second": 100.0, "wall_seconds": 3.0, "epochs": 2.0,
             "steps": 4}))
        return 0

    return run


def test_finished_cells_are_skipped_and_others_resumed(tmp_path):
    grid = ["moco.queue_size=256,512,1024"]
    done = tmp_path / "cells" / "queue_size=256"
    fake_runner([])(["--out", str(done)])  # finished before
    (tmp_path / "cells" / "queue_size=512" / "checkpoints").mkdir(parents=True)
    (tmp_path / "cells" / "queue_size=512" / "checkpoints" / "step_00000002.pth").write_bytes(b"")
    calls = []
    rc = sw.sweep("cifar10_cpu", "d", tmp_path, grid, epochs=1, linear=False,
                  runner=fake_runner(calls))
    assert rc == 0
    assert [c[c.index("--out") + 1] for c in calls] == [
        str(tmp_path / "cells" / n) for n in ("queue_size=512", "queue_size=1024")]
    cmd = calls[0]
    assert cmd[1:4] == ["-m", "mocolab", "pretrain"] and cmd[cmd.index("--resume") + 1] == "auto"
    assert {"moco.queue_size=512", "run.epochs=1", "run.knn_every=1"} <= set(cmd)
    rows = read_csv(tmp_path / "results.csv")
    assert [r["status"] for r in rows] == ["done"] * 3 and rows[0]["K"] == "256"
    assert rows[0]["final loss"] == "4.0" and rows[0]["pretext acc"] == "40.0"
    # the same command again runs nothing
    again = []
    assert sw.sweep("cifar10_cpu", "d", tmp_path, grid, epochs=1, linear=False,
                    runner=fake_runner(again)) == 0 and not again


def test_preempted_cell_stops_the_sweep(tmp_path):
    calls = []
    rc = sw.sweep("cifar10_cpu", "d", tmp_path, ["moco.queue_size=256,512,1024"], epochs=1,
                  linear=False, runner=fake_runner(calls, {2: sw.PREEMPTED}))
    assert rc == sw.PREEMPTED and len(calls) == 2  # the third cell is left for the rerun
    rows = read_csv(tmp_path / "results.csv")
    assert [r["status"] for r in rows] == ["done", "not run", "not run"] and rows[0]["kNN"]
    calls = []
    assert sw.sweep("cifar10_cpu", "d", tmp_path, ["moco.queue_size=256,512,1024"], epochs=1,
                    linear=False, runner=fake_runner(calls)) == 0
    assert len(calls) == 2  # goes on with the stopped cell and the one after


def test_failed_cell_is_recorded_and_the_sweep_goes_on(tmp_path):
    calls = []
    rc = sw.sweep("cifar10_cpu", "d", tmp_path, ["moco.queue_size=256,512,1024"], epochs=1,
                  linear=False, runner=fake_runner(calls, {1: 2}))
    assert rc == 1 and len(calls) == 3
    table = json.loads((tmp_path / "results.json").read_text())
    assert [r["status"] for r in table["rows"]] == ["failed (exit 2)", "done", "done"]
    assert table["rows"][0]["exit_code"] == 2
    assert "failed (exit 2)" in (tmp_path / "results.md").read_text()


def test_other_preset_or_data_in_the_same_out_is_refused(tmp_path):
    run = fake_runner([])
    sw.sweep("cifar10_cpu", "d", tmp_path, ["moco.m=0.9"], epochs=1, linear=False, runner=run)
    with pytest.raises(ConfigError, match="use another --out"):
        sw.sweep("cifar10_cpu", "other", tmp_path, ["moco.m=0.9"], epochs=1, linear=False,
                 runner=run)
    with pytest.raises(ConfigError, match="preset"):
        sw.sweep("cifar10_r18", "d", tmp_path, ["moco.m=0.9"], epochs=1, linear=False, runner=run)
    # another grid is fine: the new cells are added
    assert sw.sweep("cifar10_cpu", "d", tmp_path, ["moco.m=0.9,0.99"], epochs=1, linear=False,
                    runner=run) == 0


def test_table_and_plots(tmp_path):
    grid = GRID + ["moco.shuffle_bn=true,false"]
    cells = sw.plan("cifar10_cpu", grid, [], seeds="0,1")
    assert len(cells) == 2 * (8 + 2 + 2)  # moco K x m x shuffle, bank K, e2e shuffle; 2 seeds
    for c in cells:  # as if they had run
        fake_runner([])(["--out", str(tmp_path / "cells" / c.name)]
                        + [f"{k}={v}" for k, v in c.overrides.items()])
    keys = list(sw.parse_grid(grid)) + ["run.seed"]
    sw.write_results(tmp_path, cells, keys, {}, None, "cifar10_cpu", "d")
    for png in ("knn_vs_K.png", "knn_vs_m.png", "curves_shuffle.png", "curves.png", "knn_by_cell.png"):
        assert (tmp_path / png).stat().st_size > 1000
    table = json.loads((tmp_path / "results.json").read_text())
    e2e = [r for r in table["rows"] if r["method"] == "e2e"]
    assert {r["K"] for r in e2e} == {127} and e2e[0]["m"] is None  # K = batch - 1
    bank = next(r for r in table["rows"] if r["method"] == "bank")
    assert bank["m"] is None and bank["shuffle"] is None
    assert bank["curves"] == {"loss": [[1, 5.0], [2, 4.0]], "pretext_acc": [[1, 20.0], [2, 40.0]],
                              "knn": [[1, bank["knn"] - 5], [2.0, bank["knn"]]]}
    md = (tmp_path / "results.md").read_text()
    assert md.count("| method=") == 24 + 12 and "| kNN | linear (cached) |" in md  # cells, then seed means
    assert len(table["seed_means"]) == 12 and all(m["seeds"] == [0, 1] for m in table["seed_means"])
    # a grid without K or m: those plots are not written, and results.md says so; every sweep
    # draws its cells' curves and kNN
    other = tmp_path / "lr"
    sw.sweep("cifar10_cpu", "d", other, ["lr=0.03,0.06"], epochs=1, linear=False,
             runner=fake_runner([]))
    assert sorted(p.name for p in other.glob("*.png")) == ["curves.png", "knn_by_cell.png"]
    assert "knn_vs_K.png not written: moco.queue_size is not a grid axis" in \
        (other / "results.md").read_text()
    assert "| lr |" in (other / "results.md").read_text()


def test_dry_run_runs_nothing(tmp_path, capsys):
    calls = []
    assert sw.sweep("cifar10_cpu", "d", tmp_path, GRID, dry_run=True, runner=calls.append) == 0
    out = capsys.readouterr().out
    assert not calls and "7 cells" in out and "method=e2e  (not run)" in out
    assert not (tmp_path / "sweep.json").exists()


def _cli(argv):
    p = argparse.ArgumentParser()
    sw.add_command(p.add_subparsers())
    args = p.parse_args(["sweep", *argv])
    return args.fn(args)


@pytest.mark.slow
def test_sweep_end_to_end(cifar_dir, tmp_path):
    data = cifar_subset(cifar_dir, tmp_path / "d", 32)  # 64 train images: 2 steps of 32 a cell
    out = tmp_path / "sweep"
    argv = ["--preset", "cifar10_cpu", "--data", str(data), "--out", str(out), "--epochs", "1",
            "--grid", "moco.queue_size=64,128", "--set", "optim.batch_size=32", "model.bn_splits=2",
            "run.threads=1", "run.amp=off", "run.compile=false", "data.workers=0"]
    assert _cli(argv) == 0
    rows = read_csv(out / "results.csv")
    assert [r["K"] for r in rows] == ["64", "128"]
    assert all(r["status"] == "done" and float(r["kNN"]) > 0 and float(r["linear (cached)"]) > 0
               for r in rows)
    assert (out / "knn_vs_K.png").is_file()
    stamps = [p.stat().st_mtime_ns for p in sorted(out.glob("cells/*/summary.json"))]
    assert len(stamps) == 2
    assert _cli(argv) == 0  # finished cells are skipped
    assert [p.stat().st_mtime_ns for p in sorted(out.glob("cells/*/summary.json"))] == stamps


def test_run_process_returns_the_exit_code():
    import sys

    assert sw.run_process([sys.executable, "-c", "import sys; sys.exit(3)"]) == 3


def test_seed_means_group_cells_that_differ_only_by_seed():
    from mocolab.sweep import means_markdown, seed_means

    def row(axes, knn, status="done", linear=None):
        return {"axes": axes, "seed": int(axes.get("seed", 0)), "status": status, "knn": knn, "linear": linear,
                "pretext_acc": 10.0}

    rows = [row({"method": "moco", "seed": "0"}, 40.0, linear=43.0), row({"method": "moco", "seed": "1"}, 42.0),
            row({"method": "bank", "seed": "0"}, 30.0), row({"method": "bank", "seed": "1"}, 99.0, status="stopped"),
            row({"method": "e2e"}, 50.0)]
    means = seed_means(rows)
    assert [m["cell"] for m in means] == ["method=moco", "method=bank"]  # no seed axis: not a group
    moco, bank = means
    assert moco["seeds"] == [0, 1] and moco["knn"]["mean"] == 41.0 and abs(moco["knn"]["std"] - 2 ** 0.5) < 1e-12
    assert moco["linear"] == {"mean": 43.0, "std": None, "values": [43.0]}
    assert bank["seeds"] == [0] and bank["knn"]["values"] == [30.0]  # the stopped cell is left out
    md = means_markdown(means)
    assert "| method=moco | 2 | 41.00 ± 1.41 (40.00 / 42.00) | 43.00 (43.00) | 10.00 ± 0.00 (10.00 / 10.00) |" in md
    assert seed_means([row({"method": "moco"}, 1.0)]) == []
