"""`mocolab compare --detect DIR --segment DIR`: transfer columns (mean ± std over seeds), cells
reused when finished, continued when interrupted, started over for other settings; exit 75."""

import json
import math
import shutil
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch
from conftest import shared

from mocolab import cli
from mocolab.eval import compare as C

TINY = ["task.train_sizes=[96,128]", "task.test_size=128", "task.max_size=192", "task.fpn_channels=16",
        "task.representation_size=32", "task.anchor_sizes=[8,16,32,64,128]", "task.rpn_pre_nms_train=50",
        "task.rpn_post_nms_train=20", "task.rpn_pre_nms_test=50", "task.rpn_post_nms_test=20",
        "task.rpn_batch_size=32", "task.roi_batch_size=16", "task.box_detections_per_img=20",
        "task.crop_size=[64,64]", "task.scale_range=[0.25,0.4]", "task.test_scale=0.25",
        "task.workers=0", "task.warmup_iters=1", "task.iters=2", "optim.batch_size=2", "optim.milestones=[]",
        "run.threads=1", "run.log_every=1", "run.amp=off", "run.device=cpu"]




def main(argv) -> int:
    threads = torch.get_num_threads()  # run.threads=1 in a cell must not slow the later tests
    try:
        return cli.main(argv)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def entries(tmp_path_factory) -> list[str]:
    """random:<width-8 ResNet-10, ImageNet stem> and a saved backbone of that shape."""
    from mocolab.models.backbones import build_backbone

    d = tmp_path_factory.mktemp("bb")
    (d / "r10w8.yaml").write_text("model: {arch: resnet10, width: 8, stem: imagenet}\ndata: {image_size: 64}\n")
    torch.manual_seed(5)
    net, _ = build_backbone("resnet10", 8, "imagenet")
    torch.save(net.state_dict(), d / "sup.pth")
    return [f"random:{d / 'r10w8.yaml'}", str(d / "sup.pth")]


def transfer_args(entries, det, seg, out, *extra) -> list[str]:
    return ["compare", *entries, "--protocols", "none", "--detect", str(det), "--segment", str(seg),
            "--out", str(out), "--seeds", "0,1", *extra, "--transfer-set", *TINY]


def test_mean_std_by_hand():
    m, s, n = C.mean_std([10.0, 20.0])
    assert (m, n) == (15.0, 2) and s == pytest.approx(math.sqrt(50.0))  # (25 + 25) / (2 - 1)
    m, s, n = C.mean_std([1.0, None, 2.0, 6.0])  # null (NaN in the run) is skipped
    assert (m, n) == (3.0, 3) and s == pytest.approx(math.sqrt((4 + 1 + 9) / 2))
    assert C.mean_std([42.0]) == (42.0, 0.0, 1) and C.mean_std([]) == (None, None, 0)
    assert C.format_stat({"mean": 15.0, "std": math.sqrt(50.0), "n": 2}) == "15.00 ± 7.07 (2)"
    assert C.format_stat({"mean": None, "std": None, "n": 0}) == "n/a"


def test_paired_differences_by_hand():
    def row(name, method, seeds, values):
        return {"name": name, "method": method, "transfer": {"AP50": {"seeds": seeds, "values": values}}}

    rnd = row("random init", "random init", [0, 1, 2], [20.0, 10.0, 30.0])
    moco = row("moco", "MoCo", [0, 1, 2], [24.0, 15.0, 29.0])  # +4, +5, -1
    part = row("part", "MoCo", [1, 3], [12.0, 50.0])  # seed 3 has no random-init pair
    C.paired_with_random([rnd, moco, part])
    d = moco["transfer"]["AP50"]["vs_random"]
    assert (d["mean"], d["n"], d["ahead"]) == (pytest.approx(8 / 3), 3, 2)
    assert d["std"] == pytest.approx(math.sqrt(((4 - 8 / 3) ** 2 + (5 - 8 / 3) ** 2 + (-1 - 8 / 3) ** 2) / 2))
    assert part["transfer"]["AP50"]["vs_random"] == {"mean": 2.0, "std": 0.0, "n": 1, "ahead": 1}
    assert "vs_random" not in rnd["transfer"]["AP50"]
    alone = row("moco", "MoCo", [0], [1.0])
    C.paired_with_random([alone])  # no random-init row: nothing to pair with
    assert "vs_random" not in alone["transfer"]["AP50"]


# -- the cells, with a stand-in for the `mocolab detect | segment` process -------------------------

class FakeRunner:
    """Parses the command with mocolab's own parser, writes the result file a finished run would
    (its settings: the transfer config the command line makes) with AP50 = 10 x (seed + 1) +
    offset, AP = AP50 / 2, mIoU = 30 + 4 x seed + offset (offset 0 random init, 1 the file)."""

    def __init__(self, rc=0, fail_at=None):
        self.calls, self.rc, self.fail_at = [], rc, fail_at

    def __call__(self, cmd):
        from mocolab.transfer.cli import command_overrides
        from mocolab.transfer.config import build_transfer_config

        assert cmd[:3] == [sys.executable, "-m", "mocolab"]
        args, extra = cli.parser().parse_known_args(cmd[3:])
        args.overrides = list(args.overrides) + extra
        out = Path(args.out)
        self.calls.append((cmd, sorted(p.name for p in (out / "checkpoints").glob("*"))))
        if self.fail_at is not None and len(self.calls) - 1 == self.fail_at:
            return self.rc
        cfg = build_transfer_config(args.preset, command_overrides(args), args.kind)
        random = args.backbone.startswith("random:")
        off, s = 0.0 if random else 1.0, args.seed
        scores = ({"AP50": 10.0 * (s + 1) + off, "AP": (10.0 * (s + 1) + off) / 2, "metric": "voc"}
                  if args.kind == "detect" else {"mIoU": 30.0 + 4 * s + off})
        source = f"{args.backbone} (seed {s})" if random else args.backbone
        (out / f"{args.kind}.json").write_text(json.dumps(
            {"task": args.kind, **scores, "seed": s, "backbone": {"source": source}, "settings": cfg.to_dict()}))
        return 0


@pytest.fixture
def fake_data(tmp_path) -> tuple[Path, Path]:
    det, seg = tmp_path / "voc", tmp_path / "seg"
    (det / "Annotations").mkdir(parents=True)
    (seg / "train").mkdir(parents=True)
    return det, seg


def result_files(out: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in sorted((out / "transfer").rglob("*.json"))
            if p.name in ("detect.json", "segment.json")}


def test_cells_table_reuse_resume_and_stop(entries, fake_data, tmp_path, capsys):
    det, seg = fake_data
    out = tmp_path / "cmp"
    argv = transfer_args(entries, det, seg, out)
    fake = FakeRunner()
    with mock.patch.object(C, "run_process", fake):
        assert main(argv) == 0
    assert len(fake.calls) == 8  # 2 entries x 2 tasks x 2 seeds, seed 0 first
    assert [c[0][3] for c in fake.calls[:4]] == ["detect", "detect", "segment", "segment"]
    cmd = fake.calls[0][0]
    assert cmd[cmd.index("--seed") + 1] == "0" and cmd[cmd.index("--resume") + 1] == "auto"
    assert cmd[cmd.index("--preset") + 1] == "bccd_cpu" and cmd[cmd.index("--backbone") + 1] == entries[0]
    assert cmd[cmd.index("--data") + 1] == str(det) and "run.threads=1" in cmd
    assert fake.calls[1][0][fake.calls[1][0].index("--backbone") + 1] == str(Path(entries[1]).resolve())
    for name in ("random_r10w8", "sup"):
        for task in ("detect", "segment"):
            for s in (0, 1):
                cell = out / "transfer" / task / name / f"seed{s}"
                assert (cell / f"{task}.json").is_file() and (cell / "cell.json").is_file()

    table = json.loads((out / "compare.json").read_text())
    assert table["columns"] == [] and table["data"] is None and table["failed"] == []
    assert table["transfer_columns"] == ["detect AP50", "detect AP", "segment mIoU"]
    assert table["transfer"]["detect"]["preset"] == "bccd_cpu" and table["transfer"]["segment"]["seeds"] == [0, 1]
    assert table["transfer"]["detect"]["schedule"] == "2 iterations"
    rnd, sup = table["rows"]
    ap50 = rnd["transfer"]["detect AP50"]
    assert ap50["seeds"] == [0, 1] and ap50["values"] == [10.0, 20.0] and ap50["n"] == 2
    assert ap50["mean"] == 15.0 and ap50["std"] == pytest.approx(math.sqrt(50.0))
    assert sup["transfer"]["segment mIoU"]["values"] == [31.0, 35.0]
    assert sup["transfer"]["segment mIoU"]["std"] == pytest.approx(math.sqrt(8.0))
    md = (out / "compare.md").read_text()
    assert "| model | method | detect AP50 | detect AP | segment mIoU |" in md
    assert f"| {rnd['name']} | random init | 15.00 ± 7.07 (2) | 7.50 ± 3.54 (2) | 32.00 ± 2.83 (2) |" in md
    assert "| sup | checkpoint | 16.00 ± 7.07 (2) | 8.00 ± 3.54 (2) | 33.00 ± 2.83 (2) |" in md
    assert "preset bccd_cpu, 2 iterations" in md and "over seeds 0, 1" in md
    # paired by seed against random init: sup is 1 point higher at each seed, though the means' spread is ~7
    assert sup["transfer"]["detect AP50"]["vs_random"] == {"mean": 1.0, "std": 0.0, "n": 2, "ahead": 2}
    assert "vs_random" not in rnd["transfer"]["detect AP50"]
    assert "| model | method | Δ detect AP50 | Δ detect AP | Δ segment mIoU |" in md
    assert "| sup | checkpoint | +1.00 ± 0.00 (2; 2/2 ahead) | +0.50 ± 0.00 (2; 2/2 ahead) |" in md
    assert (out / "compare.png").read_bytes()[:4] == b"\x89PNG"

    # again: every cell reused, no process started, no result file touched
    stamps = result_files(out)
    assert len(stamps) == 8
    fake = FakeRunner()
    with mock.patch.object(C, "run_process", fake):
        assert main(argv) == 0
    assert fake.calls == [] and result_files(out) == stamps
    # a runtime-only setting (threads) does not make a cell stale
    with mock.patch.object(C, "run_process", fake):
        assert main(argv + ["run.threads=2"]) == 0
    assert fake.calls == [] and result_files(out) == stamps

    # cells written before a setting existed (the key missing, as at its default) are still reused
    for f in (out / "transfer").rglob("*.json"):
        d = json.loads(f.read_text())
        for cfg in (d.get("spec", {}).get("config"), d.get("settings")):
            if cfg:
                cfg["task"].pop("train_images")
        f.write_text(json.dumps(d))
    stamps = result_files(out)
    with mock.patch.object(C, "run_process", fake):
        assert main(argv) == 0
    assert fake.calls == [] and result_files(out) == stamps
    # ... but not for a fine-tune on fewer images
    with mock.patch.object(C, "run_process", fake):
        assert main(argv + ["task.train_images=3"]) == 0
    assert len(fake.calls) == 8
    fake = FakeRunner()
    with mock.patch.object(C, "run_process", fake):
        assert main(argv) == 0
    assert len(fake.calls) == 8  # and back: the 3-image cells were made for other settings
    stamps = result_files(out)
    fake = FakeRunner()

    # an interrupted cell (checkpoints, no result) is continued in place with --resume auto
    cell = out / "transfer" / "segment" / "sup" / "seed1"
    (cell / "segment.json").unlink()
    (cell / "checkpoints").mkdir()
    (cell / "checkpoints" / "epoch_0001.pth").write_bytes(b"x")
    with mock.patch.object(C, "run_process", fake):
        assert main(argv) == 0
    assert len(fake.calls) == 1
    cmd, ckpts = fake.calls[0]
    assert ckpts == ["epoch_0001.pth"] and cmd[cmd.index("--out") + 1] == str(cell)
    assert cmd[cmd.index("--resume") + 1] == "auto" and cmd[cmd.index("--seed") + 1] == "1"

    # a cell made with other settings is started over (its folder emptied first)
    stale = out / "transfer" / "detect" / "random_r10w8" / "seed0"
    spec = json.loads((stale / "cell.json").read_text())
    spec["spec"]["config"]["optim"]["lr"] = 0.5
    (stale / "cell.json").write_text(json.dumps(spec))
    (stale / "checkpoints").mkdir()
    (stale / "checkpoints" / "final.pth").write_bytes(b"x")
    fake = FakeRunner()
    with mock.patch.object(C, "run_process", fake):
        assert main(argv) == 0
    assert len(fake.calls) == 1 and fake.calls[0][1] == []  # the old checkpoint went with the folder

    # SIGTERM in a cell (exit 75): the table so far is written, the compare exits 75
    out2 = tmp_path / "stopped"
    fake = FakeRunner(rc=75, fail_at=2)
    with mock.patch.object(C, "run_process", fake):
        assert main(transfer_args(entries, det, seg, out2)) == 75
    assert len(fake.calls) == 3 and "run the same command again" in capsys.readouterr().err
    part = json.loads((out2 / "compare.json").read_text())
    assert part["rows"][0]["transfer"]["detect AP50"]["values"] == [10.0]
    assert part["rows"][0]["transfer"]["segment mIoU"]["n"] == 0
    assert "15.00" not in (out2 / "compare.md").read_text() and "n/a" in (out2 / "compare.md").read_text()
    # a failed cell is reported, the others go on; exit 1
    fake = FakeRunner(rc=2, fail_at=0)
    with mock.patch.object(C, "run_process", fake):
        assert main(transfer_args(entries, det, seg, tmp_path / "failed")) == 1
    failed = json.loads((tmp_path / "failed" / "compare.json").read_text())
    assert failed["failed"] == ["detect/random_r10w8/seed0 (exit code 2)"] and len(fake.calls) == 8
    assert failed["rows"][0]["transfer"]["detect AP50"]["values"] == [20.0]  # n = 1: std 0
    assert failed["rows"][0]["transfer"]["detect AP50"]["std"] == 0.0


@pytest.mark.parametrize("extra, text", [
    (["--protocols", "none"], "nothing to compare"),
    (["--protocols", "knn", "--detect", "{tmp}"], "--data is needed"),
    (["--protocols", "none", "knn", "--detect", "{tmp}"], "stands alone"),
    (["--protocols", "none", "--detect", "{tmp}/nope"], "data folder not found"),
    (["--protocols", "none", "--detect", "{tmp}"], "neither a VOC folder"),
    (["--protocols", "none", "--segment", "{tmp}", "--seeds", "0,0"], "distinct seeds"),
    (["--protocols", "none", "--segment", "{tmp}", "--seeds", "a"], "--seeds takes"),
    (["--protocols", "none", "--segment", "{tmp}", "--transfer-budget-minutes", "0"], "must be positive"),
    (["--protocols", "none", "--segment", "{tmp}", "--transfer-set", "task.head=c4"], "task.head must be"),
    (["--protocols", "none", "--segment", "{tmp}", "--segment-preset", "bccd_cpu"], "not `mocolab segment`"),
])
def test_bad_transfer_options_are_one_line_errors(extra, text, tmp_path, capsys):
    argv = ["compare", "random:cifar10_cpu", "--out", str(tmp_path / "c"),
            *[a.replace("{tmp}", str(tmp_path)) for a in extra]]
    assert main(argv) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("mocolab: error:")]
    assert len(errors) == 1 and text in errors[0], errors


# -- real tiny fine-tunes -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def real_data(tmp_path_factory) -> tuple[Path, Path]:
    """4 + 2 real BCCD images in a VOC tree; 4 + 2 real CamVid pairs."""
    src, det = shared("bccd/BCCD"), tmp_path_factory.mktemp("bccd")
    names = sorted(p.stem for p in (src / "Annotations").glob("*.xml"))[:6]
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (det / sub).mkdir(parents=True)
    for n in names:
        shutil.copy(src / "Annotations" / f"{n}.xml", det / "Annotations")
        shutil.copy(src / "JPEGImages" / f"{n}.jpg", det / "JPEGImages")
    (det / "ImageSets/Main/trainval.txt").write_text("\n".join(names[:4]) + "\n")
    (det / "ImageSets/Main/test.txt").write_text("\n".join(names[4:]) + "\n")
    src, seg = shared("camvid"), tmp_path_factory.mktemp("camvid")
    for split, n in (("train", 4), ("val", 2)):
        for sub in ("images", "masks"):
            (seg / split / sub).mkdir(parents=True)
        for img in sorted((src / split / "images").glob("*.jpg"))[:n]:
            shutil.copy(img, seg / split / "images")
            shutil.copy(src / split / "masks" / f"{img.stem}.png", seg / split / "masks")
    return det, seg


def in_process(cmd) -> int:
    """The cell's `python -m mocolab ...` in this process (no interpreter start-up per cell)."""
    return main(cmd[3:])


@pytest.mark.slow
def test_real_fine_tunes_then_reused(entries, real_data, tmp_path):
    det, seg = real_data
    out = tmp_path / "cmp"
    argv = transfer_args(entries[:1], det, seg, out)
    with mock.patch.object(C, "run_process", in_process):
        assert main(argv) == 0
    table = json.loads((out / "compare.json").read_text())
    (row,) = table["rows"]
    for col in ("detect AP50", "detect AP", "segment mIoU"):
        st = row["transfer"][col]
        assert st["seeds"] == [0, 1] and st["n"] == 2 and all(0.0 <= v <= 100.0 for v in st["values"])
        assert st["mean"] == pytest.approx(sum(st["values"]) / 2)
        assert st["std"] == pytest.approx(abs(st["values"][0] - st["values"][1]) / math.sqrt(2))
    cell = out / "transfer" / "detect" / "random_r10w8" / "seed1"
    res = json.loads((cell / "detect.json").read_text())
    assert res["seed"] == 1 and res["train"]["steps"] == 2 and res["backbone"]["source"].endswith("(seed 1)")
    assert res["AP50"] == row["transfer"]["detect AP50"]["values"][1]
    assert (cell / "checkpoints" / "final.pth").is_file()
    seg_res = json.loads((out / "transfer/segment/random_r10w8/seed0/segment.json").read_text())
    assert seg_res["mIoU"] == row["transfer"]["segment mIoU"]["values"][0]
    assert " ± " in (out / "compare.md").read_text()
    # again, with the real process runner: every cell reused, nothing trained
    stamps = result_files(out)
    assert len(stamps) == 4
    calls = []
    with mock.patch.object(C, "run_process", lambda cmd: calls.append(cmd) or 1):
        assert main(argv) == 0
    assert calls == [] and result_files(out) == stamps
