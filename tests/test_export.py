import argparse
import json
import pickle
from functools import cache

import numpy as np
import pytest
import timm
import torch
from conftest import tiny_config

from mocolab.checkpoint import CheckpointError
from mocolab.export import add_command, cmd_export, detectron2_name, export, load_safetensors
from mocolab.models.backbones import build_backbone, torchvision_model

CIFAR_MEAN, CIFAR_STD = [0.4914, 0.4822, 0.4465], [0.247, 0.243, 0.261]


@cache
def _net(arch, width, stem="imagenet"):
    """A seeded backbone with random BN affine and statistics (so eval outputs depend on them)."""
    torch.manual_seed(0)
    net, _ = build_backbone(arch, width, stem)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.1)
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.num_batches_tracked.fill_(7)
    return net.eval()


def _sd(net):
    return {k: v.clone() for k, v in net.state_dict().items()}


def _torchvision_file(path, net):
    torch.save(_sd(net), path)
    return path


def _official_moco(path, net):
    """facebookresearch/moco's checkpoint layout: module.encoder_q.*, an MLP fc, encoder_k."""
    sd = {f"module.encoder_q.{k}": v for k, v in _sd(net).items()}
    sd.update({"module.encoder_q.fc.0.weight": torch.randn(16, 16), "module.encoder_q.fc.0.bias":
               torch.randn(16), "module.encoder_q.fc.2.weight": torch.randn(128, 16),
               "module.encoder_k.conv1.weight": torch.randn(1),
               "module.queue": torch.randn(128, 4)})
    torch.save({"epoch": 200, "arch": "resnet50", "state_dict": sd, "optimizer": {}}, path)
    return path


def _training_ckpt(path, net):
    """A mocolab training checkpoint as Trainer.state_dict writes it: the MoCo module's state
    (query backbone under encoder_q.backbone.), the config and the progress (2.5 epochs)."""
    cfg = tiny_config().to_dict()
    cfg["data"]["mean"], cfg["data"]["std"] = CIFAR_MEAN, CIFAR_STD
    model = {f"encoder_q.backbone.{k}": v for k, v in _sd(net).items()}
    model.update({f"encoder_k.backbone.{k}": torch.zeros_like(v) for k, v in _sd(net).items()})
    model.update({"encoder_q.head.0.weight": torch.randn(64, 64),
                  "queue.keys": torch.randn(64, 16)})
    progress = {"epoch": 2, "it": 3, "step": 15, "total_steps": 18, "elapsed": 1.0, "images": 120,
                "train_seconds": 1.0}
    torch.save({"model": model, "config": cfg, "progress": progress, "optimizer": {}}, path)
    return path


def _one_line_error(excinfo):
    msg = str(excinfo.value)
    assert msg and "\n" not in msg
    return msg


@pytest.mark.parametrize("arch,width,stem,source", [
    ("resnet18", 8, "cifar", _training_ckpt), ("resnet10", 16, "imagenet", _torchvision_file),
    ("resnet50", 8, "imagenet", _official_moco)])
def test_torchvision_export_loads_strict(tmp_path, arch, width, stem, source):
    net = _net(arch, width, stem)
    info = export(source(tmp_path / "in.pth", net), "torchvision", tmp_path / "tv.pth")
    assert (info["arch"], info["width"], info["stem"]) == (arch, width, stem)
    sd = torch.load(tmp_path / "tv.pth", weights_only=True)
    model = torchvision_model(arch, width, stem)
    model.load_state_dict(sd, strict=True)
    for k, v in net.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    side = json.loads((tmp_path / "tv.json").read_text())
    assert (side["arch"], side["width"], side["stem"]) == (arch, width, stem)
    if source is _training_ckpt:  # the run's preprocessing, method and progress
        assert (side["mean"], side["std"], side["method"]) == (CIFAR_MEAN, CIFAR_STD, "MoCo")
        assert side["epochs"] == 2.5 and side["image_size"] == 16
    else:
        assert side["mean"] == [0.485, 0.456, 0.406] and "epochs" not in side
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.pth", "tv.json", "tv.pth"]  # no temp


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "resnet10"])
def test_timm_export_loads_strict_and_computes_the_same(tmp_path, arch):
    net = _net(arch, 64)
    info = export(_official_moco(tmp_path / "in.pth", net), "timm", tmp_path / "timm.pth")
    side = json.loads((tmp_path / "timm.json").read_text())
    assert (side["timm_model"], side["create_model_kwargs"]) == (
        info["timm_model"], info["create_model_kwargs"])
    assert info["timm_model"] == ("resnet18" if arch == "resnet10" else arch)
    model = timm.create_model(info["timm_model"], pretrained=False, **info["create_model_kwargs"])
    model.load_state_dict(torch.load(tmp_path / "timm.pth", weights_only=True), strict=True)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), net(x))


@pytest.mark.parametrize("arch,width,stem,why", [
    ("resnet18", 8, "cifar", "3x3 stride-1 stem"), ("resnet18", 32, "imagenet", "width 32")])
def test_timm_refuses_what_it_cannot_build(tmp_path, arch, width, stem, why):
    with pytest.raises(ValueError) as e:
        src = _torchvision_file(tmp_path / "in.pth", _net(arch, width, stem))
        export(src, "timm", tmp_path / "t.pth")
    assert why in _one_line_error(e)
    assert not (tmp_path / "t.pth").exists()


def _norm(p, c):
    return {f"{p}.norm.{s}": (c,) for s in ("weight", "bias", "running_mean", "running_var")}


def _detectron2_names(depth, w=64):
    """detectron2's build_resnet_backbone (BN/FrozenBN norm): stem.conv1 (7x7), stages res2..res5
    with 2-2-2-2 / 3-4-6-3 blocks; a shortcut where a block's in and out channels differ."""
    names = {"stem.conv1.weight": (w, 3, 7, 7), **_norm("stem.conv1", w)}
    cin = w
    for s, n in enumerate({18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3]}[depth]):
        mid = w * 2 ** s  # bottleneck width (WIDTH_PER_GROUP doubling), or R18/34 channels
        cout = mid * 4 if depth == 50 else mid
        for b in range(n):
            p = f"res{s + 2}.{b}"
            if cin != cout:
                names[f"{p}.shortcut.weight"] = (cout, cin, 1, 1)
                names.update(_norm(f"{p}.shortcut", cout))
            convs = ([(mid, cin, 1, 1), (mid, mid, 3, 3), (cout, mid, 1, 1)] if depth == 50
                     else [(cout, cin, 3, 3), (cout, cout, 3, 3)])
            for i, shape in enumerate(convs, 1):
                names.update({f"{p}.conv{i}.weight": shape, **_norm(f"{p}.conv{i}", shape[0])})
            cin = cout
    return names


def test_detectron2_names_are_r50s_full_list():
    names = _detectron2_names(50)
    assert len(names) == 53 * 5  # 53 convs (1 + 16 x 3 + 4 shortcuts), each with 4 norm entries
    assert names["res2.0.shortcut.weight"] == (256, 64, 1, 1)
    assert names["res2.0.conv2.weight"] == (64, 64, 3, 3)
    assert names["res5.2.conv3.norm.running_var"] == (2048,)
    assert "res3.1.shortcut.weight" not in names


@pytest.mark.parametrize("arch,width", [("resnet50", 64), ("resnet18", 64), ("resnet50", 16)])
def test_detectron2_export(tmp_path, capsys, arch, width):
    net = _net(arch, width)
    src = _official_moco(tmp_path / "moco.pth.tar", net)
    parser = argparse.ArgumentParser()
    add_command(parser.add_subparsers())
    out = tmp_path / "d2.pkl"
    argv = ["export", str(src), "--format", "detectron2", "--out", str(out)]
    assert cmd_export(parser.parse_args(argv)) == 0
    raw = out.read_bytes()
    assert b"numpy._core" not in raw  # loadable by numpy 1.x too
    obj = pickle.loads(raw, encoding="latin1")  # as detectron2's checkpointer reads *.pkl
    assert obj["matching_heuristics"] is True and obj["__author__"] == "mocolab"
    got = {k: v.shape for k, v in obj["model"].items()}
    assert got == _detectron2_names(int(arch[6:]), width)
    assert all(type(v) is np.ndarray and v.flags.writeable for v in obj["model"].values())
    sd = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert all(np.array_equal(obj["model"][detectron2_name(k)], v) for k, v in sd.items())
    for d2, tv in [("res3.0.shortcut.norm.running_var", "layer2.0.downsample.1.running_var"),
                   ("stem.conv1.weight", "conv1.weight"), ("stem.conv1.norm.bias", "bn1.bias"),
                   ("res5.1.conv2.norm.weight", "layer4.1.bn2.weight")]:
        assert np.array_equal(obj["model"][d2], sd[tv])
    text = capsys.readouterr().out
    assert f'WEIGHTS: "{out}"' in text and "PIXEL_MEAN: [123.675, 116.280, 103.530]" in text
    assert "PIXEL_STD: [58.395, 57.120, 57.375]" in text and 'FORMAT: "RGB"' in text
    assert "STRIDE_IN_1X1: False" in text and f"DEPTH: {arch[6:]}" in text and "SyncBN" in text
    if arch == "resnet18":
        assert "RES2_OUT_CHANNELS: 64" in text
    if width != 64:
        assert f"STEM_OUT_CHANNELS: {width}" in text and f"RES2_OUT_CHANNELS: {4 * width}" in text


@pytest.mark.parametrize("arch,width,stem,name,why", [
    ("resnet18", 8, "cifar", "d2.pkl", "no 3x3 stride-1 stem"),
    ("resnet10", 8, "imagenet", "d2.pkl", "not resnet10"),
    ("resnet18", 8, "imagenet", "d2.pkl", "width 8"),
    ("resnet18", 64, "imagenet", "d2.pth", "*.pkl")])
def test_detectron2_refusals(tmp_path, arch, width, stem, name, why):
    src = _torchvision_file(tmp_path / "in.pth", _net(arch, width, stem))
    with pytest.raises(ValueError) as e:
        export(src, "detectron2", tmp_path / name)
    assert why in _one_line_error(e)


def test_safetensors_round_trip(tmp_path):
    from safetensors import safe_open

    net = _net("resnet18", 8, "cifar")
    export(_training_ckpt(tmp_path / "ck.pth", net), "safetensors", tmp_path / "b.safetensors")
    with safe_open(str(tmp_path / "b.safetensors"), framework="pt") as f:
        raw = f.metadata()
    keys = {"arch", "width", "stem", "mean", "std", "method", "epochs", "format_version",
            "load_with"}
    assert keys <= set(raw)
    assert all(isinstance(v, str) for v in raw.values())
    sd, meta = load_safetensors(tmp_path / "b.safetensors")
    spec = (meta["arch"], meta["width"], meta["stem"], meta["method"])
    assert spec == ("resnet18", 8, "cifar", "MoCo")
    assert (meta["mean"], meta["std"], meta["epochs"]) == (CIFAR_MEAN, CIFAR_STD, 2.5)
    ref = net.state_dict()
    assert set(sd) == set(ref) and all(torch.equal(sd[k], ref[k]) for k in ref)
    torchvision_model("resnet18", 8, "cifar").load_state_dict(sd, strict=True)


def test_cli_run_folder_overwrite_and_errors(tmp_path, capsys):
    net = _net("resnet10", 8, "cifar")
    run = tmp_path / "run"
    run.mkdir()
    torch.save(_sd(net), run / "backbone.pth")
    (run / "backbone.json").write_text(json.dumps({
        "arch": "resnet10", "width": 8, "stem": "cifar", "feature_dim": 64, "image_size": 32,
        "mean": CIFAR_MEAN, "std": CIFAR_STD,
        "load_with": "mocolab.models.backbones.torchvision_model"}))
    (run / "summary.json").write_text(json.dumps({"epochs": 12.0, "steps": 100}))
    parser = argparse.ArgumentParser()
    add_command(parser.add_subparsers())
    out = tmp_path / "exp" / "b.safetensors"
    argv = ["export", str(run), "--format", "safetensors", "--out", str(out)]
    args = parser.parse_args(argv)
    assert args.fn is cmd_export and args.fn(args) == 0
    assert f"wrote {out} (safetensors: resnet10, width 8, cifar stem" in capsys.readouterr().out
    _, meta = load_safetensors(out)
    assert (meta["mean"], meta["epochs"], meta["image_size"]) == (CIFAR_MEAN, 12.0, 32)

    before = out.read_bytes()
    with pytest.raises(ValueError) as e:  # never over an existing file silently
        cmd_export(parser.parse_args(argv))
    assert "--overwrite" in _one_line_error(e) and out.read_bytes() == before
    assert cmd_export(parser.parse_args(argv + ["--overwrite"])) == 0
    with pytest.raises(CheckpointError) as e:
        cmd_export(parser.parse_args(["export", str(tmp_path / "nope.pth"), "--format", "timm",
                                      "--out", str(tmp_path / "x.pth")]))
    assert "not found" in _one_line_error(e)
    with pytest.raises(CheckpointError) as e:
        cmd_export(parser.parse_args(["export", str(tmp_path / "exp"), "--format", "torchvision",
                                      "--out", str(tmp_path / "x.pth")]))
    assert "without backbone.pth" in _one_line_error(e)
    with pytest.raises(SystemExit):  # argparse: an unknown format
        parser.parse_args(["export", str(run), "--format", "onnx", "--out", str(out)])


def test_weights_that_do_not_fit_are_refused(tmp_path):
    sd = _sd(_net("resnet18", 8, "cifar"))
    sd["layer1.0.conv1.weight"] = torch.zeros(8, 8, 1, 1)
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError) as e:
        export(tmp_path / "bad.pth", "safetensors", tmp_path / "b.safetensors")
    assert "layer1.0.conv1.weight" in _one_line_error(e)
    assert not (tmp_path / "b.safetensors").exists()
