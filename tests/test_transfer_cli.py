"""`mocolab detect | segment` end to end on a few real BCCD images and CamVid pairs (tiny
backbones and sizes): result files, exact resume on the CPU, one-line errors."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import shared

from mocolab import cli
from mocolab.transfer.config import build_transfer_config, load_preset, preset_names

TINY_DETECT = ["task.train_sizes=[96,128]", "task.test_size=128", "task.max_size=192",
               "task.fpn_channels=16", "task.representation_size=32", "task.box_convs=1",
               "task.anchor_sizes=[8,16,32,64,128]", "task.rpn_pre_nms_train=50",
               "task.rpn_post_nms_train=20", "task.rpn_pre_nms_test=50", "task.rpn_post_nms_test=20",
               "task.rpn_batch_size=32", "task.roi_batch_size=16", "task.box_detections_per_img=20",
               "task.workers=0", "task.warmup_iters=1", "optim.batch_size=2", "optim.milestones=[]",
               "run.threads=1", "run.log_every=1", "run.amp=off", "run.device=cpu"]




def run_cli(argv: list[str]) -> int:
    """mocolab.cli.main, leaving torch's thread count as it was."""
    threads = torch.get_num_threads()  # run.threads=1 below must not slow the later tests
    try:
        return cli.main(argv)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_backbone(tmp_path_factory) -> str:
    """random:PRESET for a width-8 ResNet-10 with the ImageNet stem."""
    path = tmp_path_factory.mktemp("bb") / "r10w8.yaml"
    path.write_text("model: {arch: resnet10, width: 8, stem: imagenet}\ndata: {image_size: 64}\n")
    return f"random:{path}"


@pytest.fixture(scope="module")
def voc(tmp_path_factory) -> Path:
    """6 real BCCD images in a VOC tree: trainval 4, test 2."""
    src = shared("bccd/BCCD")
    dst = tmp_path_factory.mktemp("bccd")
    names = sorted(p.stem for p in (src / "Annotations").glob("*.xml"))[:6]
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (dst / sub).mkdir(parents=True)
    for n in names:
        shutil.copy(src / "Annotations" / f"{n}.xml", dst / "Annotations")
        shutil.copy(src / "JPEGImages" / f"{n}.jpg", dst / "JPEGImages")
    (dst / "ImageSets/Main/trainval.txt").write_text("\n".join(names[:4]) + "\n")
    (dst / "ImageSets/Main/test.txt").write_text("\n".join(names[4:]) + "\n")
    return dst


def detect(backbone, data, out, *extra) -> int:
    return run_cli(["detect", "--backbone", backbone, "--data", str(data), "--out", str(out),
                    *TINY_DETECT, *extra])


def weights(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "final.pth", weights_only=True)


def test_presets_load():
    assert set(preset_names()) >= {"bccd_cpu", "camvid_cpu", "voc_r50_c4"}
    voc = load_preset("voc_r50_c4").validate()
    assert (voc.task.head, voc.task.norm, voc.task.iters, voc.task.warmup_iters) == ("c4", "syncbn", 24000, 100)
    assert voc.task.train_sizes == list(range(480, 801, 32)) and voc.task.test_size == 800
    assert (voc.optim.batch_size, voc.optim.lr) == (16, 0.02)
    assert [round(m * 23900 + 100) for m in voc.optim.milestones] == [18000, 22000]  # after warm-up
    assert load_preset("camvid_cpu").task.ignore_index == 11
    from mocolab.config import ConfigError

    with pytest.raises(ConfigError, match="task.head must be fcn or deeplabv3"):
        build_transfer_config("camvid_cpu", ["task.head=c4"])
    with pytest.raises(ConfigError, match="not `mocolab detect`"):
        build_transfer_config("camvid_cpu", [], kind="detect")


def test_detect_end_to_end_and_exact_resume(voc, tiny_backbone, tmp_path, capsys):
    straight = tmp_path / "straight"
    assert detect(tiny_backbone, voc, straight, "--epochs", "2") == 0
    res = json.loads((straight / "detect.json").read_text())
    for k in ("AP", "AP50", "AP75"):
        assert 0.0 <= res[k] <= 100.0 and 0.0 <= res["coco"][k] <= 100.0
    assert res["metric"] == "voc" and res["data"]["classes"] == ["Platelets", "RBC", "WBC"]
    assert res["train"]["steps"] == 4 and res["train"]["images_per_second"] > 0
    assert res["backbone"]["arch"] == "resnet10" and res["backbone"]["width"] == 8
    summary = json.loads((straight / "summary.json").read_text())
    assert summary["steps"] == 4 and "AP50" in summary and "coco_AP" in summary
    assert (straight / "config.yaml").is_file() and (straight / "metrics.jsonl").is_file()
    assert "AP50" in capsys.readouterr().out

    # 1 epoch, then --resume auto to 2 epochs (a constant lr after warm-up: the same schedule)
    half = tmp_path / "half"
    assert detect(tiny_backbone, voc, half, "--epochs", "1") == 0
    assert run_cli(["detect", "--backbone", tiny_backbone, "--data", str(voc), "--out", str(half),
                    "--resume", "auto", "--epochs", "2"]) == 0
    steps = [json.loads(line)["step"] for line in (half / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]  # continued at step 3, not started again
    a, b = weights(straight), weights(half)
    assert a["progress"]["step"] == b["progress"]["step"] == 4
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert json.loads((half / "detect.json").read_text())["AP"] == res["AP"]


def test_segment_end_to_end(tmp_path):
    """From a saved backbone file (a torchvision-style state_dict of a width-8 ResNet-10)."""
    from mocolab.models.backbones import build_backbone

    net, _ = build_backbone("resnet10", 8, "imagenet")
    torch.save(net.state_dict(), tmp_path / "r10w8.pth")
    src = shared("camvid")
    data = tmp_path / "camvid"
    for split, n in (("train", 4), ("val", 2)):
        for sub in ("images", "masks"):
            (data / split / sub).mkdir(parents=True)
        for img in sorted((src / split / "images").glob("*.jpg"))[:n]:
            shutil.copy(img, data / split / "images")
            shutil.copy(src / split / "masks" / f"{img.stem}.png", data / split / "masks")
    out = tmp_path / "seg"
    code = run_cli(["segment", "--backbone", str(tmp_path / "r10w8.pth"), "--data", str(data), "--out", str(out),
                    "--epochs", "1", "task.crop_size=[64,64]", "task.scale_range=[0.25,0.4]",
                    "task.test_scale=0.25", "task.workers=0", "optim.batch_size=2", "run.threads=1",
                    "run.amp=off", "run.device=cpu"])
    assert code == 0
    res = json.loads((out / "segment.json").read_text())
    assert 0.0 <= res["mIoU"] <= 100.0 and 0.0 <= res["pixel_acc"] <= 100.0
    assert len(res["per_class_iou"]) == 11 and res["data"]["ignore_index"] == 11
    assert res["train"]["steps"] == 2 and res["backbone"]["source"].endswith("r10w8.pth")
    assert (out / "checkpoints" / "final.pth").is_file() and (out / "summary.json").is_file()


def one_line_error(argv, capsys, match: str) -> None:
    assert run_cli(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mocolab: error:") and "\n" not in err and match in err, err


def test_bad_input(voc, tiny_backbone, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    one_line_error(["detect", "--backbone", tiny_backbone, "--data", str(tmp_path / "empty"),
                    "--out", str(tmp_path / "o1")], capsys, "neither a VOC folder")
    one_line_error(["detect", "--backbone", str(tmp_path / "missing.pth"), "--data", str(voc),
                    "--out", str(tmp_path / "o2")], capsys, "missing.pth")
    one_line_error(["segment", "--backbone", tiny_backbone, "--data", str(voc), "--out",
                    str(tmp_path / "o3")], capsys, "train/ and test/")
    one_line_error(["detect", "--backbone", tiny_backbone, "--data", str(voc), "--out",
                    str(tmp_path / "o4"), "task.head=fcn"], capsys, "task.head must be fpn or c4")


def test_feeds_augment_by_seed(voc):
    """Flip maps the boxes with the image; a sample's augmentation depends on (seed, epoch,
    index) only; segmentation crops are padded with the ignore index."""
    from mocolab.transfer.feeds import DetectionFeed, SegmentationFeed
    from mocolab.transfer.masks import SegData
    from mocolab.transfer.voc import load_voc

    data = load_voc(voc, "trainval")
    cfg = build_transfer_config("bccd_cpu", ["task.workers=0", "optim.batch_size=2", "task.flip=1.0"])
    (images, targets), index = next(DetectionFeed(data, cfg).batches(torch.arange(4), 0, 0))
    assert index is None and len(images) == 2 and images[0].dtype == torch.float32
    it = data.items[0]
    w = images[0].shape[-1]
    assert torch.equal(targets[0]["boxes"][:, [0, 2]], w - it.boxes[:, [2, 0]])
    assert torch.equal(targets[0]["labels"], it.labels) and images[0].max() <= 1.0
    cfg.task.flip = 0.5
    feed = DetectionFeed(data, cfg)
    first = [b[0][1][0]["boxes"] for b in feed.batches(torch.arange(4), 0, 3)]
    again = [b[0][1][0]["boxes"] for b in feed.batches(torch.arange(4), 1, 3)]  # from batch 1 on
    assert torch.equal(first[1], again[0])

    camvid = shared("camvid")
    img = sorted((camvid / "val" / "images").glob("*.jpg"))[:2]
    seg = SegData(img, [camvid / "val" / "masks" / f"{p.stem}.png" for p in img], 11, 11)
    cfg = build_transfer_config("camvid_cpu", ["task.workers=0", "optim.batch_size=2",
                                               "task.crop_size=[200,300]", "task.scale_range=[0.5,0.5]", "task.flip=0"])
    (x, y), _ = next(SegmentationFeed(seg, cfg).batches(torch.arange(2), 0, 0))
    assert x.shape == (2, 3, 200, 300) and y.shape == (2, 200, 300) and y.dtype == torch.int64
    assert (y[:, 180:] == 11).all() and (y[:, :, 240:] == 11).all()  # 180 x 240 padded with ignore


def test_the_papers_voc_recipe_builds_and_runs_a_few_iterations(voc, tmp_path):
    """voc_r50_c4 (R50-C4, SyncBN, batch 16, 24k iterations on GPUs) on tiny inputs: a width-8
    ResNet-50 with the ImageNet stem, 2 iterations at 64-96 px, evaluated."""
    bb = tmp_path / "r50w8.yaml"
    bb.write_text("model: {arch: resnet50, width: 8, stem: imagenet}\ndata: {image_size: 64}\n")
    tiny = ["task.train_sizes=[64,96]", "task.test_size=96", "task.max_size=128", "task.iters=2",
            "task.warmup_iters=1", "task.rpn_pre_nms_train=50", "task.rpn_post_nms_train=20",
            "task.rpn_pre_nms_test=50", "task.rpn_post_nms_test=20", "task.workers=0", "optim.batch_size=2",
            "run.threads=1", "run.amp=off", "run.device=cpu", "run.checkpoint_every=0"]
    out = tmp_path / "voc"
    assert run_cli(["detect", "--preset", "voc_r50_c4", "--backbone", f"random:{bb}", "--data", str(voc),
                    "--out", str(out), *tiny]) == 0
    res = json.loads((out / "detect.json").read_text())
    assert res["settings"]["task"]["head"] == "c4" and res["settings"]["task"]["norm"] == "syncbn"
    assert all(k in res for k in ("AP", "AP50", "AP75"))


def test_train_images_is_a_seeded_subset_the_same_for_every_backbone(voc):
    """task.train_images=N: N training images drawn with run.seed (few labels), the same draw for
    any backbone at that seed; too many is a one-line data error."""
    from mocolab.data import DataError
    from mocolab.transfer.common import labeled_subset
    from mocolab.transfer.masks import SegData
    from mocolab.transfer.voc import load_voc

    train = load_voc(voc, "trainval")
    assert labeled_subset(train, 0, 0) is train
    a, b = labeled_subset(train, 2, 0), labeled_subset(train, 2, 0)

    def names(d):
        return [it.path.name for it in d.items]

    assert len(a) == 2 and names(a) == names(b) and a.classes == train.classes
    assert set(names(a)) <= set(names(train)) and names(a) == sorted(names(a))  # file order kept
    assert any(names(labeled_subset(train, 2, s)) != names(a) for s in range(1, 6))  # other seeds, other draws
    with pytest.raises(DataError, match="task.train_images=5 but the training split has 4 images"):
        labeled_subset(train, 5, 0)
    seg = SegData([Path(f"{i}.jpg") for i in range(6)], [Path(f"{i}.png") for i in range(6)], num_classes=3)
    sub = labeled_subset(seg, 3, 0)
    assert [p.stem for p in sub.images] == [p.stem for p in sub.masks] and len(sub) == 3 and sub.num_classes == 3


def test_subset_seed_fixes_the_labeled_images_across_seeds():
    """task.subset_seed=-1 (default) draws the labeled images with run.seed; a seed >= 0 draws one
    subset that every run.seed shares."""
    from mocolab.transfer.common import subset_seed
    from mocolab.transfer.config import build_transfer_config

    assert [subset_seed(build_transfer_config("bccd_cpu", [f"run.seed={s}"])) for s in (0, 3)] == [0, 3]
    fixed = [build_transfer_config("bccd_cpu", [f"run.seed={s}", "task.subset_seed=7"]) for s in (0, 3)]
    assert [subset_seed(c) for c in fixed] == [7, 7]
