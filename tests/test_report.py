"""`mocolab report` (issue 20): the neighbours are the true top-k by cosine; a report of a run
without labels, of a run in progress, of a sweep folder; every image the page names is written."""

import json
import shutil
from html.parser import HTMLParser

import pytest
import torch
from conftest import cifar_subset

from mocolab.cli import main
from mocolab.report.neighbours import pick_queries, top_k
from mocolab.report.page import markdown, table
from mocolab.report.runs import add_seconds, read_metrics

TINY = ["--epochs", "2", "optim.batch_size=8", "model.width=8", "moco.queue_size=32", "model.hidden_dim=32",
        "data.image_size=16", "run.threads=1", "run.amp=off", "run.save_every=1", "run.log_every=2"]
FAST = ["--map-points", "30", "--queries", "4", "--neighbours", "3", "--device", "cpu"]


class Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.srcs = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.srcs.append(dict(attrs)["src"])


def page_of(out):
    text = (out / "index.html").read_text()
    p = Images()
    p.feed(text)
    assert p.srcs and all((out / s).is_file() and (out / s).stat().st_size > 0 for s in p.srcs), p.srcs
    return text, p.srcs


def test_top_k_is_the_brute_force_top_k_by_cosine():
    g = torch.Generator().manual_seed(0)
    bank = torch.randn(60, 16, generator=g) * torch.rand(60, 1, generator=g) * 5  # not normalised
    query = torch.randn(7, 16, generator=g)
    sims, idx = top_k(query, bank, k=8)
    for i in range(7):
        cos = [float(query[i] @ bank[j] / (query[i].norm() * bank[j].norm())) for j in range(60)]
        best = sorted(range(60), key=lambda j: -cos[j])[:8]
        assert idx[i].tolist() == best
        assert sims[i].tolist() == pytest.approx([cos[j] for j in best], abs=1e-5)
    # the bank holds the queries: a query's own image is never its neighbour
    q = torch.tensor([3, 10, 59])
    sims, idx = top_k(bank[q], bank, k=8, exclude=q)
    for row, i in zip(idx.tolist(), q.tolist()):
        cos = [float(bank[i] @ bank[j] / (bank[i].norm() * bank[j].norm())) if j != i else -2 for j in range(60)]
        assert row == sorted(range(60), key=lambda j: -cos[j])[:8] and i not in row


def test_queries_one_per_class_seeded():
    labels = torch.arange(10).repeat_interleave(30)
    q = pick_queries(labels, 12, seed=0)
    assert len(set(q.tolist())) == 12 and set(labels[q].tolist()) == set(range(10))
    assert torch.equal(q, pick_queries(labels, 12, seed=0)) and not torch.equal(q, pick_queries(labels, 12, seed=1))
    many = pick_queries(torch.arange(20).repeat_interleave(2), 12, seed=0)  # more classes than queries
    assert len(set(torch.arange(20).repeat_interleave(2)[many].tolist())) == 12
    assert len(pick_queries(torch.full((5,), -1), 12)) == 5  # unlabeled, fewer images than queries


def test_html_is_escaped():
    assert "<script>" not in table(["<script>"], [["<b>x</b>", 1.5]])
    md = markdown("a <i>note</i>\n\n| a | b |\n| --- | ---: |\n| <x> | 2 |\n- item <y>")
    assert "&lt;x&gt;" in md and "&lt;i&gt;" in md and "<td>---</td>" not in md and "&lt;y&gt;" in md


def test_seconds_from_img_per_s_for_older_runs(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(
        '{"step": 2, "loss": 1, "img_per_s": 4.0, "epoch_float": 0.5}\n'
        '{"epoch": 1, "step": 4, "knn_top1": 30.0}\n'
        '{"step": 4, "loss": 1, "img_per_s": 8.0, "epoch_float": 1.0}\n{"step": 6, "lo')  # torn last line
    records, monitors = read_metrics(tmp_path / "metrics.jsonl")
    assert len(records) == 2 and len(monitors) == 1
    add_seconds(records, monitors, batch_size=8)
    assert [r["seconds"] for r in records] == [4.0, 6.0] and monitors[0]["seconds"] == 6.0
    # killed after step 6, resumed from the checkpoint of step 2: steps 4 and 6 logged again replace the old
    lines = [{"step": s, "loss": s + 0.5 * (i > 2), "img_per_s": 1.0} for i, s in enumerate([2, 4, 6, 4, 6, 8])]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in lines))
    records, _ = read_metrics(tmp_path / "metrics.jsonl")
    assert [(r["step"], r["loss"]) for r in records] == [(2, 2), (4, 4.5), (6, 6.5), (8, 8.5)]


@pytest.fixture(scope="module")
def labeled_run(cifar_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    data = cifar_subset(cifar_dir, tmp / "data", 8, classes=("airplane", "cat", "ship"))
    run = tmp / "run"
    assert main(["pretrain", "--data", str(data), "--out", str(run), *TINY, "run.knn_every=1"]) == 0
    return data, run


@pytest.mark.slow
def test_report_of_a_finished_run_and_its_sweep_folder(labeled_run, tmp_path):
    data, run = labeled_run
    out = tmp_path / "report"
    assert main(["report", str(run), "--data", str(data), "--out", str(out), *FAST]) == 0
    text, srcs = page_of(out)
    assert {"curves_epoch.png", "curves_time.png", "00_run.neighbours.png", "00_run.map.png"} <= set(srcs)
    assert "kNN top-1 (%)" in text and "airplane" in text and "no summary.json" not in text
    assert "<td>finished</td>" in text and "<td>backbone.pth</td>" in text
    assert "against preset cifar10_cpu" in text and 'class="diff"' in text  # the overrides highlighted
    # a sweep folder: its cells' curves on one axis, its table; the data recorded in sweep.json
    sweep = tmp_path / "sweep"
    for cell in ("method=moco__seed=0", "method=moco__seed=1"):
        shutil.copytree(run, sweep / "cells" / cell)
    (sweep / "sweep.json").write_text(json.dumps({"preset": "cifar10_cpu", "data": str(data)}))
    (sweep / "results.md").write_text("Sweep.\n\n| cell | kNN |\n| --- | --- |\n| method=moco__seed=0 | 40.1 |\n")
    out2 = tmp_path / "report2"
    assert main(["report", str(sweep), "--out", str(out2), *FAST]) == 0
    text, srcs = page_of(out2)
    assert "01_method_moco__seed_1.map.png" in srcs and "<td>40.1</td>" in text


@pytest.mark.slow
def test_report_of_a_run_in_progress(labeled_run, tmp_path, capsys):
    data, done = labeled_run
    run = shutil.copytree(done, tmp_path / "run")
    for name in ("summary.json", "backbone.pth", "checkpoints/final.pth", "checkpoints/epoch_0002.pth"):
        (run / name).unlink()
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 1, "step": 9, "lo')  # a record being written
    out = tmp_path / "report"
    assert main(["report", str(run), "--data", str(data), "--out", str(out), *FAST]) == 0
    text, srcs = page_of(out)
    assert "no summary.json" in text and "epoch_0001.pth" in text and "00_run.neighbours.png" in srcs
    assert "<td>in progress or stopped</td>" in text and "<td>checkpoints/epoch_0001.pth</td>" in text
    # no checkpoint yet either: curves only
    shutil.rmtree(run / "checkpoints")
    assert main(["report", str(run), "--data", str(data), "--out", str(out), *FAST]) == 0
    text, srcs = page_of(out)
    assert "curves only" in text and not any("neighbours" in s for s in srcs)
    for argv in ([str(tmp_path / "missing"), "--out", str(out)], [str(run), "--out", str(run)],
                 [str(run), "--out", str(out), "--limit", "-1"]):
        capsys.readouterr()
        assert main(["report", *argv]) == 2
        err = capsys.readouterr().err
        assert err.count("mocolab: error:") == 1 and "Traceback" not in err, err


@pytest.mark.slow
def test_report_of_a_run_without_labels(cifar_dir, tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for src in sorted((cifar_dir / "train" / "dog").glob("*.jpg"))[:24]:
        shutil.copy(src, flat / src.name)
    run = tmp_path / "run"
    assert main(["pretrain", "--data", str(flat), "--out", str(run), *TINY]) == 0
    out = tmp_path / "report"
    assert main(["report", str(run), "--data", str(flat), "--out", str(out), *FAST]) == 0
    text, srcs = page_of(out)
    assert {"curves_epoch.png", "00_run.neighbours.png", "00_run.map.png"} <= set(srcs)
    assert "has no labels" in text and "Weighted kNN top-1" not in text and "✓" not in text
