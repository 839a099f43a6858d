"""`mocolab export`: a backbone for torchvision, timm, detectron2 or safetensors, or a shareable
model folder.

Reads anything `mocolab knn` reads (a run folder, a model folder, a training checkpoint, a
backbone.pth export, an official MoCo checkpoint, a torchvision state_dict) and writes one file
(plus a .json sidecar for torchvision and timm), atomically, never over an existing file unless
asked. `--format folder` writes a folder: model.safetensors, config.json (arch, width, stem,
mean/std, method, epochs, data) and README.md, a model card with the run's kNN / linear /
transfer results and the command that made it; `mocolab.load`, `knn`, `--init` and hubconf.py
read it back.
"""

from __future__ import annotations

import io
import json
import os
import pickle
from pathlib import Path

import numpy as np
import torch

from .checkpoint import CheckpointError, extract_backbone, safe_load
from .errors import UsageError
from .models.backbones import infer_arch, torchvision_model
from .models.vit import VITS, infer_vit, timm_vit
from .runfiles import save_torch, write_bytes, write_text

FORMATS = ("torchvision", "timm", "detectron2", "safetensors", "folder")
FORMAT_VERSION = "1"
IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
LOAD_WITH = "mocolab.models.backbones.torchvision_model(arch, width, stem)"


def read_source(src: str | Path) -> tuple[dict, dict]:
    """CKPT -> (backbone state_dict with torchvision names, metadata)."""
    from .eval.load import load_weights, resolve_entry

    if str(src).startswith("random:"):
        raise CheckpointError("export writes trained weights: give a run folder or a checkpoint, not random:PRESET")
    _, path, _ = resolve_entry(str(src))
    # a safetensors export or a model folder: metadata in its header / config.json
    if path.suffix == ".safetensors":
        obj = {}
        sd, ck = load_weights(path)
    else:
        obj = safe_load(path)
        sd, ck = extract_backbone(obj)
    try:
        vit = infer_vit(sd)  # {"arch", "img_size"} of a ViT, None for a ResNet
        meta = {**vit, "width": None, "stem": None} if vit else infer_arch(sd)
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None
    ref = _reference(meta)
    if {k: tuple(v.shape) for k, v in sd.items()} != ref:
        bad = sorted(set(sd) ^ set(ref)) or [k for k in ref if tuple(sd[k].shape) != ref[k]]
        raise CheckpointError(f"the weights in {path} do not fit a {meta['arch']} "
                              f"(width {meta['width']}, {meta['stem']} stem): {', '.join(bad[:3])}")
    meta["mean"], meta["std"] = IMAGENET
    if "config" in ck:  # a training checkpoint
        cfg = ck["config"]
        data = cfg.get("data", {})
        meta.update(mean=data.get("mean", meta["mean"]), std=data.get("std", meta["std"]),
                    image_size=data.get("image_size"),
                    method=_method_name(cfg, obj.get("model", {})))
        meta["epochs"] = _progress_epochs(obj.get("progress"))
    else:
        side = path.with_suffix(".json")
        try:
            extra = ck if obj == {} else json.loads(side.read_text()) if side.is_file() else {}
        except (OSError, ValueError) as e:
            raise CheckpointError(f"unreadable metadata {side}: {e}") from None
        keys = ("mean", "std", "image_size", "method", "epochs", "data")
        meta.update({k: extra[k] for k in keys if k in extra})
        summary = path.parent / "summary.json"
        if "epochs" not in meta and path.name == "backbone.pth" and summary.is_file():
            try:
                meta["epochs"] = json.loads(summary.read_text()).get("epochs")
            except (OSError, ValueError):
                pass  # epochs are optional
    return sd, {k: v for k, v in meta.items() if v is not None}


def _reference(spec: dict) -> dict:
    """Names and shapes of `torchvision_model(arch, width, stem)`, built on the meta device."""
    with torch.device("meta"):
        if spec["arch"] in VITS:
            model = timm_vit(spec["arch"], spec["img_size"])
        else:
            model = torchvision_model(spec["arch"], spec["width"], spec["stem"])
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _progress_epochs(p: dict | None) -> float | None:
    if not p:
        return None
    if not p["it"]:
        return float(p["epoch"])
    if p["epoch"] and p["step"] > p["it"]:  # completed epochs tell the steps per epoch
        return p["epoch"] + p["it"] * p["epoch"] / (p["step"] - p["it"])
    return None


class _Pickler(pickle.Pickler):
    """Arrays as numpy.ndarray(shape, dtype, buffer): numpy 2's own array pickles name
    numpy._core, which numpy < 1.26.1 (common beside detectron2) cannot import."""

    def reducer_override(self, obj):
        if type(obj) is np.ndarray:
            a = np.ascontiguousarray(obj)
            return np.ndarray, (a.shape, a.dtype.str, bytearray(a.tobytes()))
        return NotImplemented


def _numpy(t: torch.Tensor) -> np.ndarray:
    t = t.detach().cpu()
    return (t.float() if t.dtype == torch.bfloat16 else t).numpy()


def _dumps(obj) -> bytes:
    buf = io.BytesIO()
    _Pickler(buf, protocol=4).dump(obj)
    return buf.getvalue()


def detectron2_name(k: str) -> str:
    """torchvision -> detectron2 names, as MoCo's detection/convert-pretrain-to-detectron2.py."""
    if "layer" not in k:
        k = "stem." + k
    for t in (1, 2, 3, 4):
        k = k.replace(f"layer{t}", f"res{t + 1}")
    for t in (1, 2, 3):
        k = k.replace(f"bn{t}", f"conv{t}.norm")
    return k.replace("downsample.0", "shortcut").replace("downsample.1", "shortcut.norm")


def _px(v) -> str:  # 0-1 mean/std -> detectron2's 0-255 pixel values
    return "[" + ", ".join(f"{255 * x:.3f}" for x in v) + "]"


def _detectron2(meta: dict, out: Path) -> str:
    arch, w = meta["arch"], meta["width"]
    if meta["stem"] == "cifar":
        raise UsageError("detectron2 has no 3x3 stride-1 stem (CIFAR stem); "
                         "use --format torchvision or safetensors")
    if arch == "resnet10":
        raise UsageError("detectron2 builds ResNet depths 18/34/50/101/152 only, not resnet10")
    # build_resnet_backbone asserts RES2_OUT_CHANNELS == 64
    if arch != "resnet50" and w != 64:
        raise UsageError(f"detectron2's R18/R34 need 64 channels in res2 "
                         f"(RES2_OUT_CHANNELS); this {arch} has width {w}")
    if out.suffix != ".pkl":
        raise UsageError("detectron2 reads pickled weights only from files named *.pkl")
    lines = ["MODEL:", f'  WEIGHTS: "{out}"', f"  PIXEL_MEAN: {_px(meta['mean'])}",
             f"  PIXEL_STD: {_px(meta['std'])}", "  RESNETS:", f"    DEPTH: {arch[6:]}",
             "    STRIDE_IN_1X1: False",
             '    NORM: "SyncBN"  # as the MoCo paper (FrozenBN or BN on one GPU)']
    if arch == "resnet50":
        if w != 64:  # stem w, bottleneck w, res2 out 4w (build_resnet_backbone's channel options)
            lines += [f"    STEM_OUT_CHANNELS: {w}", f"    WIDTH_PER_GROUP: {w}",
                      f"    RES2_OUT_CHANNELS: {4 * w}"]
    else:
        lines += ["    RES2_OUT_CHANNELS: 64  # R18/R34: an FPN config (C4 heads are bottlenecks)"]
    return "\n".join(lines + ["INPUT:", '  FORMAT: "RGB"']) + "\n"


def _timm(meta: dict) -> tuple[str, dict]:
    """The timm.create_model name and kwargs that build this layout, or a refusal."""
    # timm's registered ViT of that width, with MoCo v3's heads, patch and size
    if meta["arch"] in VITS:
        spec = VITS[meta["arch"]]
        name = {384: "vit_small_patch16_224", 768: "vit_base_patch16_224"}.get(spec["embed_dim"],
                                                                               "vit_tiny_patch16_224")
        return name, {"num_heads": spec["num_heads"], "patch_size": spec["patch_size"], "img_size": meta["img_size"]}
    if meta["stem"] == "cifar":
        raise UsageError("timm's ResNet has no 3x3 stride-1 stem (CIFAR stem); "
                         "use --format torchvision or safetensors")
    if meta["width"] != 64:
        raise UsageError(f"timm's ResNet fixes its 7x7 stem at 64 channels (stem_width sizes "
                         f"only its deep stems), so width {meta['width']} cannot be built")
    # timm's resnet10t is another network (deep stem, avg-pool down)
    if meta["arch"] == "resnet10":
        return "resnet18", {"layers": [1, 1, 1, 1]}
    return meta["arch"], {}


def export(src: str | Path, fmt: str, out: str | Path, overwrite: bool = False) -> dict:
    """Writes the backbone of `src` as `fmt` to `out`; returns what was written."""
    if fmt not in FORMATS:
        raise UsageError(f"unknown export format '{fmt}'; choose one of {', '.join(FORMATS)}")
    out = Path(out).expanduser()
    if fmt == "folder":
        return export_folder(src, out, overwrite=overwrite)
    side = out.with_suffix(".json") if fmt in ("torchvision", "timm") else None
    if side == out:
        raise UsageError(f"--out {out} is where its .json metadata goes; choose another name")
    for p in (out, side):
        if p is not None and p.is_dir():
            raise UsageError(f"{p} is a folder; --out takes a file name")
        if p is not None and p.exists() and not overwrite:
            raise UsageError(f"{p} exists; pass --overwrite to replace it")
    sd, meta = read_source(src)
    if meta["arch"] in VITS and fmt != "timm":
        raise UsageError(f"a ViT ({meta['arch']}) exports to timm only, not {fmt}")
    info = {"format": fmt, "path": str(out), **{k: meta.get(k) for k in ("arch", "width", "stem")}}
    if fmt == "timm":
        name, kwargs = _timm(meta)
        info.update(timm_model=name, create_model_kwargs={"num_classes": 0, **kwargs})
    elif fmt == "detectron2":
        info["config"] = _detectron2(meta, out)
    out.parent.mkdir(parents=True, exist_ok=True)

    if fmt == "detectron2":
        model = {detectron2_name(k): _numpy(v) for k, v in sd.items()
                 if not k.endswith("num_batches_tracked")}
        obj = {"model": model, "__author__": "mocolab", "matching_heuristics": True}
        write_bytes(out, _dumps(obj))
    elif fmt == "safetensors":
        write_safetensors(out, sd, meta)
    else:  # torchvision and timm share the key names (verified by tests/test_export.py)
        extra = {"format": fmt, "format_version": FORMAT_VERSION}
        if fmt == "timm":
            extra.update(timm_model=info["timm_model"],
                         create_model_kwargs=info["create_model_kwargs"],
                         load_with="timm.create_model(timm_model, pretrained=False, "
                                   "**create_model_kwargs)")
        else:
            extra["load_with"] = LOAD_WITH
        weights = {k: v.detach().cpu() for k, v in sd.items()}
        save_torch(weights, out)
        text = json.dumps({**meta, **extra}, indent=2)
        write_text(side, text)
        info["sidecar"] = str(side)
    return info


def write_safetensors(out: Path, sd: dict, meta: dict) -> None:
    """The backbone state_dict `sd` as safetensors, with `meta` (arch, width, stem, mean/std, method,
    epochs, image_size) as text in its header, written atomically."""
    # save() returns bytes, written by write_bytes so the file gets the usual permissions
    from safetensors.torch import save

    md = {"arch": meta["arch"], "width": str(meta["width"]), "stem": str(meta["stem"]),
          "mean": json.dumps(meta["mean"]), "std": json.dumps(meta["std"]),
          "format_version": FORMAT_VERSION,
          "load_with": f"mocolab.export.load_safetensors(path), then {LOAD_WITH}"}
    md.update({k: str(meta[k]) for k in ("method", "epochs", "image_size", "img_size") if k in meta})
    # own storage each: safetensors refuses shared ones
    weights = {k: v.detach().cpu().clone(memory_format=torch.contiguous_format)
               for k, v in sd.items()}
    write_bytes(out, save(weights, metadata=md))


# ---- model folders ----------------------------------------------------------------------------


def run_dir_of(path: Path) -> Path | None:
    """The run folder a weights file belongs to (backbone.pth, checkpoints/*.pth), or None."""
    for d in (path.parent, path.parent.parent):
        if (d / "config.yaml").is_file() or (d / "summary.json").is_file():
            return d
    return None


def _command_line(run: Path | None, meta: dict) -> str:
    """The command that made the run: command.json's argv when it holds one, else rebuilt from
    its command, data and folder."""
    from .runtime import read_json

    if run is None:
        return ""
    cmd = read_json(run / "command.json")
    if isinstance(cmd.get("argv"), list) and cmd["argv"]:
        return " ".join(str(a) for a in cmd["argv"])
    name = cmd.get("command") or "pretrain"
    data = cmd.get("data") or meta.get("data") or "DATA"
    return f"mocolab {name} --data {data} --out {run}  # config: config.yaml (beside the run)"


def gather_results(path: Path) -> list[dict]:
    """What has been measured of the weights at `path`: the training run's kNN monitor
    (summary.json), the evaluations beside the weights (BASE.*.json) and the detect / segment
    runs beside the run folder whose --backbone was these weights -> rows {evaluation, data, metric,
    value, file}."""
    from .eval.load import resolve_entry
    from .runtime import read_json

    rows: list[dict] = []
    run = run_dir_of(path)
    if run is not None:
        summary = read_json(run / "summary.json")
        if isinstance(summary.get("knn_top1"), (int, float)):
            what = f"kNN monitor (k={summary.get('knn_k', 200)}, {summary.get('knn_features', 'backbone')} features)"
            rows.append({"evaluation": what,
                         "data": "the run's test split", "metric": "top-1 %", "value": summary["knn_top1"],
                         "file": "summary.json"})
    for f in sorted(path.parent.glob(f"{path.stem}.*.json")):
        r = read_json(f)
        top1 = r.get("top1", r.get("knn_top1"))
        if "protocol" in r and isinstance(top1, (int, float)):
            rows.append({"evaluation": str(r["protocol"]), "data": str(r.get("data", "")), "metric": "top-1 %",
                         "value": top1, "file": f.name})
    if run is not None:
        target = path.resolve()
        for d in sorted(p for p in run.parent.iterdir() if p.is_dir()):
            for kind, metrics in (("detect", ("AP50", "AP")), ("segment", ("mIoU",))):
                r = read_json(d / f"{kind}.json") if (d / f"{kind}.json").is_file() else {}
                source = str((r.get("backbone") or {}).get("source", ""))
                if not source or source.startswith("random:"):
                    continue
                try:
                    if resolve_entry(source.split(" (")[0])[1].resolve() != target:
                        continue
                except Exception:  # a moved or deleted backbone: not this one
                    continue
                for m in metrics:
                    if isinstance(r.get(m), (int, float)):
                        rows.append({"evaluation": f"{kind} ({r.get('head', '')}, seed {r.get('seed')})",
                                     "data": str((r.get("settings") or {}).get("task", {}).get("data", "")
                                                 or d.name),
                                     "metric": m, "value": r[m], "file": f"{d.name}/{kind}.json"})
    return rows


def model_card(name: str, config: dict, results: list[dict], command: str) -> str:
    """README.md of a model folder: what the backbone is, how to load it, what it scored, how it was made."""
    arch = config["arch"] + (f" (width {config['width']}, {config['stem']} stem)" if config.get("width") else "")
    trained = f"{config.get('method', 'an unknown method')}"
    if config.get("epochs") is not None:
        trained += f", {config['epochs']:.1f} epochs"
    lines = [f"# {name}", "",
             f"A {arch} backbone trained with {trained}" + (f" on `{config['data']}`" if config.get("data") else "")
             + f", exported by mocolab {config.get('mocolab_version', '')}. It returns the global-pooled features "
             f"({config.get('feature_dim', '?')} per image).", "",
             "## Use", "", "```python", "import mocolab", "",
             'model = mocolab.load("PATH/TO/THIS/FOLDER")  # backbone, eval transform, metadata',
             'emb = mocolab.embed(model, "my_images/")      # features N x D, paths, labels',
             "```", "", "Without mocolab installed as a package, from a checkout of its repository:", "",
             "```python", "import torch", "",
             'net = torch.hub.load("PATH/TO/mocolab", "backbone", weights="PATH/TO/THIS/FOLDER", source="local")',
             "```", "",
             f"Preprocessing: RGB, shorter side resized to {config.get('resize', '?')}, center crop "
             f"{config.get('image_size', '?')}, scaled to [0, 1], normalized with mean {config['mean']} and std "
             f"{config['std']}.", "",
             "## Results", ""]
    if results:
        lines += ["| evaluation | data | metric | value | file |", "|---|---|---|---|---|"]
        lines += [f"| {r['evaluation']} | {r['data']} | {r['metric']} | {r['value']:.2f} | {r['file']} |"
                  for r in results]
    else:
        lines.append("No evaluation results were found beside the weights when this folder was written "
                     "(run `mocolab knn`, `linear` or `compare` on the run, then export again).")
    lines += ["", "## How it was made", ""]
    lines += [f"```\n{command}\n```" if command else "Unknown: not exported from a mocolab run folder.",
              "", f"Source weights: `{config.get('source', '')}`.", ""]
    return "\n".join(lines)


def export_folder(src: str | Path, out: Path, overwrite: bool = False) -> dict:
    """`--format folder`: model.safetensors, config.json and README.md in the folder `out`, written in a
    temporary folder beside it and renamed into place (an existing `out` only with overwrite)."""
    import shutil
    import tempfile

    from . import __version__
    from .data import cache_size_for
    from .eval.load import CONFIG_FILE, MODEL_FILE, resolve_entry

    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} is a file; --format folder writes a folder")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UsageError(f"{out} exists; pass --overwrite to replace it")
    sd, meta = read_source(src)
    name, path, _ = resolve_entry(str(src))
    run = run_dir_of(path)
    if "data" not in meta and run is not None:
        from .runtime import read_json

        meta["data"] = read_json(run / "command.json").get("data") or next(
            (r.get("data") for r in map(read_json, sorted(path.parent.glob(f"{path.stem}.*.json"))) if r.get("data")),
            None)
    image_size = meta.get("image_size") or meta.get("img_size") or (32 if meta.get("stem") == "cifar" else 224)
    with torch.device("meta"):  # the feature width, without allocating the network
        ref = _reference(meta)
    dim = next((v[0] for k, v in reversed(list(ref.items())) if k.endswith("weight") and len(v) == 1), None)
    config = {"format": "mocolab-model", "format_version": FORMAT_VERSION, "mocolab_version": __version__,
              **{k: meta.get(k) for k in ("arch", "width", "stem", "img_size")},
              "mean": meta["mean"], "std": meta["std"], "image_size": image_size, "resize": cache_size_for(image_size),
              "feature_dim": dim, "method": meta.get("method"), "epochs": meta.get("epochs"), "data": meta.get("data"),
              "source": str(path), "load_with": "mocolab.load(folder)"}
    config = {k: v for k, v in config.items() if v is not None}
    results = gather_results(path)
    card = model_card(out.name or name, config, results, _command_line(run, meta))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        write_safetensors(tmp / MODEL_FILE, sd, {**meta, "image_size": image_size})
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        (tmp / "README.md").write_text(card)
        os.chmod(tmp, 0o755)  # mkdtemp's 0o700 would keep the folder from others
        old = None
        # replaced as a whole: moved aside, then removed once the new one is in place
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"format": "folder", "path": str(out), "files": [MODEL_FILE, CONFIG_FILE, "README.md"],
            "results": len(results), **{k: meta.get(k) for k in ("arch", "width", "stem")}}


def load_safetensors(path: str | Path) -> tuple[dict, dict]:
    """A safetensors export -> (state_dict for torchvision_model(arch, width, stem), metadata)."""
    from .eval.load import read_safetensors

    return read_safetensors(path)


def cmd_export(args) -> int:
    info = export(args.checkpoint, args.format, args.out, overwrite=args.overwrite)
    if args.format == "folder":
        print(f"wrote {info['path']}/ ({', '.join(info['files'])}: {info['arch']}"
              + (f", width {info['width']}, {info['stem']} stem" if info.get("width") else "") + ")")
        print(f"load with mocolab.load({info['path']!r}) or torch.hub.load(MOCOLAB_REPO, 'backbone', "
              f"weights={info['path']!r}, source='local')")
        return 0
    what = info["arch"] if info["width"] is None else f"{info['arch']}, width {info['width']}, {info['stem']} stem"
    if "sidecar" in info:
        what += f"; metadata in {info['sidecar']}"
    print(f"wrote {info['path']} ({info['format']}: {what})")
    if "timm_model" in info:
        kw = "".join(f", {k}={v!r}" for k, v in info["create_model_kwargs"].items())
        print(f"load with timm.create_model({info['timm_model']!r}, pretrained=False{kw})")
    if "config" in info:
        print(info["config"], end="")
    return 0


def add_command(sub) -> None:
    p = sub.add_parser("export", help="write a backbone for torchvision, timm, detectron2 "
                                      "or safetensors, or a shareable model folder",
                       description="folder: a folder with model.safetensors, config.json (arch, width, stem, "
                                   "mean/std, method, epochs, data) and README.md (a model card: the run's kNN, "
                                   "linear and transfer results, the command that made it), which mocolab.load, "
                                   "`mocolab knn --checkpoint`, `pretrain --init` and hubconf.py read")
    p.add_argument("checkpoint", metavar="CKPT",
                   help="run folder, model folder, mocolab checkpoint or backbone.pth, official MoCo "
                        "or torchvision weights")
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--out", required=True, help="file to write (detectron2: *.pkl; folder: a folder)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --out (and its .json) if they exist")
    p.set_defaults(fn=cmd_export)


def _method_name(cfg: dict, model: dict) -> str:
    """The method of a training checkpoint, named as the exports name it: a `mocolab supervised`
    run's holds its classifier (encoder_q.fc), a pretraining's names its method in its config."""
    from .registry import METHODS

    if any(k.startswith("encoder_q.fc.") for k in model):
        return "supervised"
    name = cfg.get("moco", {}).get("method", "moco")
    return METHODS.get(name).title if name in METHODS else "MoCo"
