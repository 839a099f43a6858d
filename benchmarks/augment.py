"""The tensor augmentation's parts, side by side in one process, rows alternating: what one
training step of the `cifar10_cpu` preset spends on its two views (batch 256, 32 px).

  crop roi_align   torchvision.ops.roi_align, adaptive sampling ratio (the general path)
  crop grid        mocolab's crop_resize when no box is larger than the output: grid_sample
  hue table        torchvision's HSV -> RGB through a 6-way table (tensor form, per image)
  hue mocolab      mocolab's closed-form HSV -> RGB
  views 2 calls    BatchAugment called once per view (before two_views)
  views mocolab    BatchAugment.two_views: both views of the batch in one call (the step's data work)
  views compiled   the same with compile=True (run.compile): every op on every image, fused by
                   torch.compile (compiled in the warm-up)
  views pil        torchvision's PIL pipeline on the same images, one process, for scale
  views tv2        torchvision.transforms.v2 on uint8 tensors, image by image (v2 draws one set of
                   parameters per call: on a batch every image would share them)
  views kornia     kornia.augmentation, batched with per-image parameters (same_on_batch=False);
                   only when kornia is installed (pip install -e '.[bench]')

The library rows answer issue 5's "if a maintained library already does per-image batched
augmentation well enough, prefer it": same preset, same images, same process.

  python benchmarks/augment.py --data ../shared/data/cifar10 [--preset cifar10_cpu] [--rounds 7]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torchvision.ops import roi_align
from torchvision.transforms import v2

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from mocolab.augment import (  # noqa: E402
    AugSpec,
    BatchAugment,
    _adjust_hue,
    blur_kernel_size,
    crop_resize,
    pil_transform,
    preset,
    sample_crop_boxes,
)
from mocolab.config import build_config  # noqa: E402
from mocolab.data import load_splits  # noqa: E402


def tv2_transform(s: AugSpec, mean, std) -> v2.Compose:
    """The preset in torchvision.transforms.v2, for one uint8 tensor image (pil_transform's ops)."""
    gray = v2.RandomGrayscale(p=s.p_gray)
    jitter = [v2.RandomApply([v2.ColorJitter(*s.jitter)], p=s.p_jitter)] if s.p_jitter > 0 else []
    ops = [v2.RandomResizedCrop(s.size, scale=s.scale, ratio=s.ratio, antialias=True),
           *([gray, *jitter] if s.gray_first else [*jitter, gray])]
    if s.p_blur > 0:
        ops.append(v2.RandomApply([v2.GaussianBlur(blur_kernel_size(s), sigma=s.blur_sigma)], p=s.p_blur))
    if s.p_solarize > 0:
        ops.append(v2.RandomSolarize(128, p=s.p_solarize))
    ops += [v2.RandomHorizontalFlip(s.p_flip), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    return v2.Compose(ops)


def kornia_transform(s: AugSpec, mean, std):
    """The preset in kornia.augmentation (float B x 3 x H x W in [0, 1]), per-image parameters;
    None without kornia. Kornia's ColorJitter draws its op order once per call, not per image."""
    try:
        import kornia.augmentation as K
    except ImportError:
        return None
    gray = K.RandomGrayscale(p=s.p_gray)
    jitter = [K.ColorJitter(*s.jitter, p=s.p_jitter)] if s.p_jitter > 0 else []
    ops = [K.RandomResizedCrop((s.size, s.size), scale=s.scale, ratio=s.ratio),
           *([gray, *jitter] if s.gray_first else [*jitter, gray])]
    if s.p_blur > 0:
        ops.append(K.RandomGaussianBlur((blur_kernel_size(s),) * 2, s.blur_sigma, p=s.p_blur))
    if s.p_solarize > 0:
        ops.append(K.RandomSolarize(thresholds=0.0, additions=0.0, p=s.p_solarize))  # threshold 0.5 exactly
    ops += [K.RandomHorizontalFlip(p=s.p_flip), K.Normalize(torch.tensor(mean), torch.tensor(std))]
    return torch.nn.Sequential(*ops)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--preset", default="cifar10_cpu")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--reps", type=int, default=10)
    args = ap.parse_args(argv)
    cfg = build_config(args.preset, [])
    B, S = args.batch_size, cfg.data.image_size
    images = load_splits(args.data, S, limit=B, workers=0).train.images[:B]  # B x 3 x S x S uint8
    x = images.float().div(255)
    spec = preset(cfg.data.augment, cfg.data.crop_size or S, cfg.data.crop_scale)
    boxes = sample_crop_boxes(B, S, S, spec.scale, spec.ratio, torch.Generator().manual_seed(0))
    rois = torch.cat([torch.arange(B, dtype=torch.float32)[:, None], boxes], 1)
    shifts = torch.rand(B, generator=torch.Generator().manual_seed(1)) - 0.5
    aug = BatchAugment(spec, cfg.data.mean, cfg.data.std, cfg.run.channels_last)
    aug_c = BatchAugment(spec, cfg.data.mean, cfg.data.std, cfg.run.channels_last, compile=True)
    gen = torch.Generator().manual_seed(2)
    pil = pil_transform(spec, cfg.data.mean, cfg.data.std)
    sub = images[:32]  # the per-image rows time these, scaled to B
    pil_images = [Image.fromarray(im.permute(1, 2, 0).numpy()) for im in sub]
    tv2, kornia = tv2_transform(spec, cfg.data.mean, cfg.data.std), kornia_transform(spec, cfg.data.mean, cfg.data.std)
    rows = {
        "crop roi_align": lambda: roi_align(x, rois, output_size=(spec.size, spec.size), spatial_scale=1.0,
                                            sampling_ratio=-1, aligned=True),
        "crop grid": lambda: crop_resize(x, boxes, spec.size),
        "hue table": lambda: torch.stack([TF.adjust_hue(x[i], float(shifts[i])) for i in range(B)]),
        "hue mocolab": lambda: _adjust_hue(x, shifts),
        "views 2 calls": lambda: (aug(images, gen), aug(images, gen)),
        "views mocolab": lambda: aug.two_views(images, gen),
        "views compiled": lambda: aug_c.two_views(images, gen),
        "views pil": lambda: [(pil(im), pil(im)) for im in pil_images],  # 32 images, scaled to B below
        "views tv2": lambda: [(tv2(im), tv2(im)) for im in sub],  # likewise
    }
    scale = {"views pil": B / len(sub), "views tv2": B / len(sub)}
    if kornia is not None:
        rows["views kornia"] = lambda: (kornia(images.float().div(255)), kornia(images.float().div(255)))
    else:
        print("views kornia skipped: kornia is not installed (pip install -e '.[bench]')")
    times: dict[str, list[float]] = {k: [] for k in rows}
    for fn in rows.values():
        fn()
    for _ in range(args.rounds):
        for name, fn in rows.items():
            t0 = time.perf_counter()
            for _ in range(args.reps):
                fn()
            times[name].append((time.perf_counter() - t0) / args.reps * scale.get(name, 1.0))
    ms = {k: 1000 * statistics.median(v) for k, v in times.items()}
    print(f"batch {B}, {S} px, augmentation '{cfg.data.augment}', {torch.get_num_threads()} threads; "
          f"ms per batch (median of {args.rounds})")
    for k, v in ms.items():
        print(f"{k:15s} {v:8.1f} ms")
    result = {"ms": ms,
              "crop_roi_align_over_grid": ms["crop roi_align"] / ms["crop grid"],
              "hue_table_over_mocolab": ms["hue table"] / ms["hue mocolab"],
              "views_img_s": 2 * B / (ms["views mocolab"] / 1000),
              "two_calls_over_one": ms["views 2 calls"] / ms["views mocolab"],
              "eager_over_compiled": ms["views mocolab"] / ms["views compiled"],
              "views_pil_over_mocolab": ms["views pil"] / ms["views mocolab"],
              "views_tv2_over_mocolab": ms["views tv2"] / ms["views mocolab"],
              "views_kornia_over_mocolab": ms["views kornia"] / ms["views mocolab"] if "views kornia" in ms else None}
    print(f"crop: roi_align / grid = {result['crop_roi_align_over_grid']:.2f}; hue: table / mocolab = "
          f"{result['hue_table_over_mocolab']:.2f}; two views: {result['views_img_s']:.0f} views/s, "
          f"two calls / one call = {result['two_calls_over_one']:.2f}, "
          f"eager / compiled = {result['eager_over_compiled']:.2f}, "
          f"pil / mocolab = {result['views_pil_over_mocolab']:.1f}, torchvision v2 / mocolab = "
          f"{result['views_tv2_over_mocolab']:.1f}"
          + (f", kornia / mocolab = {result['views_kornia_over_mocolab']:.2f}" if "views kornia" in ms else ""))
    return result


if __name__ == "__main__":
    main()
