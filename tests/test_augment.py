"""The batched tensor augmentations against torchvision's PIL pipeline, by statistics."""

import math

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from mocolab.augment import (
    AugSpec,
    BatchAugment,
    _adjust_hue,
    _gaussian_blur,
    _select_dense,
    _select_subset,
    crop_resize,
    jitter_columns,
    jitter_params,
    preset,
    sample_crop_boxes,
)


def test_crop_area_and_ratio_match_torchvision():
    n, H, W, scale, ratio = 20000, 32, 32, (0.08, 1.0), (3 / 4, 4 / 3)
    g = torch.Generator().manual_seed(0)
    boxes = sample_crop_boxes(n, H, W, scale, ratio, g)
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= W).all() and (boxes[:, 3] <= H).all()
    torch.manual_seed(0)
    ref = torch.tensor([T.RandomResizedCrop.get_params(torch.empty(3, H, W), scale, ratio) for _ in range(n)],
                       dtype=torch.float32)  # (top, left, h, w)
    area, ref_area = (w * h) / (H * W), ref[:, 2] * ref[:, 3] / (H * W)
    bins = torch.linspace(0, 1, 11)
    hist = torch.histogram(area, bins).hist / n
    ref_hist = torch.histogram(ref_area, bins).hist / n
    assert (hist - ref_hist).abs().max() < 0.02, (hist, ref_hist)
    lr, ref_lr = torch.log(w / h), torch.log(ref[:, 3] / ref[:, 2])
    assert abs(lr.mean() - ref_lr.mean()) < 0.02 and abs(lr.std() - ref_lr.std()) < 0.02
    # positions are uniform: the crop centre's mean is the image centre
    cx = (boxes[:, 0] + boxes[:, 2]) / 2
    assert abs(cx.mean().item() - W / 2) < 0.3


def test_hue_matches_torchvision():
    torch.manual_seed(0)
    x = torch.rand(6, 3, 8, 8)
    x[:, :, 0] = x[:, :1, 0]  # gray pixels (no saturation)
    x[:, :, 1, :3] = torch.eye(3)  # pure red, green, blue
    x[:, :, 2, 0] = 0.0  # black
    h = torch.tensor([-0.5, -0.3, -0.1, 0.0, 0.2, 0.45])
    ours = _adjust_hue(x, h)
    ref = torch.stack([TF.adjust_hue(x[i], float(h[i])) for i in range(6)])
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("masked", [False, True])
def test_jitter_applies_torchvision_ops_per_image_in_the_drawn_order(masked):
    """Each image gets torchvision's adjust_brightness/contrast/saturation/hue with its own
    factors, in its own order (or nothing when not applied)."""
    torch.manual_seed(0)
    B = 48
    x = torch.rand(B, 3, 8, 8)
    fac, order = jitter_params(B, (0.4, 0.4, 0.4, 0.1), torch.Generator().manual_seed(1))
    fac[:4, :3] = torch.tensor([1.4, 0.6, 1.4])  # large factors: values clamp, so the order matters
    apply = torch.rand(B) < 0.8
    aug = BatchAugment(preset("v2", 8), [0.0] * 3, [1.0] * 3)
    aug.masked = masked
    # ColorJitter with the given parameters, through the batch path's own jitter
    dense = aug.masked if aug.masked is not None else x.device.type != "cpu"
    J = jitter_columns(apply, fac, order, aug.spec.jitter)
    ours = aug._jitter(x.clone(), J, _select_dense if dense else _select_subset)
    ops = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
    for i in range(B):
        ref = x[i]
        if apply[i]:
            for op in order[i].tolist():
                ref = ops[op](ref, float(fac[i, op]))
        torch.testing.assert_close(ours[i], ref, atol=1e-4, rtol=1e-4)
    assert order.sort(1).values.eq(torch.arange(4)).all()  # a permutation per image
    assert len({tuple(o) for o in order.tolist()}) > 10  # and not one shared order


def test_two_views_are_one_call_on_the_doubled_batch():
    x = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    aug = BatchAugment(preset("v2", 32), [0.5] * 3, [0.25] * 3, channels_last=True)
    q, k = aug.two_views(x, torch.Generator().manual_seed(0))
    both = aug(torch.cat([x, x]), torch.Generator().manual_seed(0))
    assert torch.equal(q, both[:8]) and torch.equal(k, both[8:])
    assert q.is_contiguous(memory_format=torch.channels_last) and k.is_contiguous(memory_format=torch.channels_last)
    assert not torch.equal(q, k)  # each image's two views draw their own parameters


def test_blur_matches_torchvision_for_each_sigma():
    torch.manual_seed(0)
    x = torch.rand(3, 3, 32, 32)
    sig = torch.tensor([0.5, 1.0, 2.0])
    ours = _gaussian_blur(x, sig)
    for i, s in enumerate(sig.tolist()):
        k = 2 * math.ceil(3 * 2.0) + 1
        ref = TF.gaussian_blur(x[i], [k, k], [s, s])
        torch.testing.assert_close(ours[i], ref, atol=2e-3, rtol=0)


def _stats(views: torch.Tensor):
    """Per-image brightness mean, contrast (std) and saturation (max-min) in [0,1] space."""
    mean, std = views.mean(dim=(1, 2, 3)), views.std(dim=(1, 2, 3))
    sat = (views.max(1).values - views.min(1).values).mean(dim=(1, 2))
    return mean, std, sat


def test_jitter_gray_flip_effects_match_pil_pipeline():
    """Same image, many draws: the distribution of per-view statistics must match PIL's."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    base = (rng.random((32, 32, 3)) * 0.6 + 0.2)
    base[:, :16] *= np.array([1.0, 0.6, 0.3])  # colourful, asymmetric left/right
    img = Image.fromarray((base * 255).astype(np.uint8))
    spec = preset("cifar", 32)
    n = 1500
    x = torch.from_numpy(np.array(img)).permute(2, 0, 1)[None].repeat(n, 1, 1, 1)
    aug = BatchAugment(spec, [0, 0, 0], [1, 1, 1])
    ours = aug(x, torch.Generator().manual_seed(1))
    no_crop = T.Compose([T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8), T.RandomGrayscale(0.2),
                         T.ToTensor()])
    spec_nc = type(spec)(32, scale=(1.0, 1.0), ratio=(1.0, 1.0), p_blur=0.0, p_flip=0.0)
    ours_nc = BatchAugment(spec_nc, [0, 0, 0], [1, 1, 1])(x, torch.Generator().manual_seed(2))
    ref_nc = torch.stack([no_crop(img) for _ in range(n)])
    for a, b, name in zip(_stats(ours_nc), _stats(ref_nc), ("brightness", "contrast", "saturation")):
        assert abs(a.mean() - b.mean()) < 0.02, name
        assert abs(a.std() - b.std()) < 0.02, name
        # quartiles agree too (the shape of the distribution, not only its moments)
        qa, qb = torch.quantile(a, torch.tensor([0.25, 0.5, 0.75])), torch.quantile(b, torch.tensor([0.25, 0.5, 0.75]))
        assert (qa - qb).abs().max() < 0.03, name
    gray_frac = ((ours_nc.max(1).values - ours_nc.min(1).values).amax(dim=(1, 2)) < 1e-3).float().mean()
    assert abs(gray_frac - 0.2) < 0.04
    # flips: the colourful half moves right in about half of the views (full crops)
    spec_f = type(spec)(32, scale=(1.0, 1.0), ratio=(1.0, 1.0), p_jitter=0.0, p_gray=0.0, p_blur=0.0)
    flipped = BatchAugment(spec_f, [0, 0, 0], [1, 1, 1])(x, torch.Generator().manual_seed(3))
    left_sat = (flipped[:, 0, :, :16] - flipped[:, 2, :, :16]).mean(dim=(1, 2))
    right_sat = (flipped[:, 0, :, 16:] - flipped[:, 2, :, 16:]).mean(dim=(1, 2))
    assert abs((right_sat > left_sat).float().mean() - 0.5) < 0.05
    assert ours.shape == (n, 3, 32, 32) and ours.min() >= 0 and ours.max() <= 1


@pytest.mark.parametrize("name,size", [("v1", 64), ("v2", 96), ("cifar", 32), ("none", 32)])
def test_presets_at_any_resolution(name, size):
    x = torch.randint(0, 256, (4, 3, 40, 50), dtype=torch.uint8)
    aug = BatchAugment(preset(name, size), [0.5] * 3, [0.25] * 3, channels_last=True)
    y = aug(x, torch.Generator().manual_seed(0))
    assert y.shape == (4, 3, size, size) and y.is_contiguous(memory_format=torch.channels_last)
    assert torch.isfinite(y).all()


def test_views_differ_and_generator_makes_them_reproducible():
    x = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    aug = BatchAugment(preset("cifar", 32), [0.5] * 3, [0.25] * 3)
    a = aug(x, torch.Generator().manual_seed(0))
    b = aug(x, torch.Generator().manual_seed(0))
    c = aug(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_masked_and_indexed_selection_agree():
    """The accelerator path (compute all, torch.where) equals the CPU path (index subsets)."""
    x = torch.randint(0, 256, (16, 3, 40, 40), dtype=torch.uint8)
    for name in ("v1", "v2", "cifar"):
        aug = BatchAugment(preset(name, 32 if name == "cifar" else 64), [0.5] * 3, [0.25] * 3)
        aug.masked = False
        a = aug(x, torch.Generator().manual_seed(5))
        aug.masked = True
        b = aug(x, torch.Generator().manual_seed(5))
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("spec", [preset("v1", 32),  # grayscale before jitter, hue 0.4
                                  AugSpec(40, p_blur=0.5, p_solarize=0.5)])  # v3's ops: blur, solarize
def test_compiled_augmentation_equals_the_eager_one(spec):
    """compile=True (the training loop's form with run.compile): every op on every image, fused
    by torch.compile, gives the subset form's views for the same draws, and the same draws."""
    x = torch.randint(0, 256, (16, 3, 48, 48), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    eager = BatchAugment(spec, [0.5] * 3, [0.25] * 3)
    compiled = BatchAugment(spec, [0.5] * 3, [0.25] * 3, channels_last=True, compile=True)
    for seed in range(2):
        g_e, g_c = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        a, b = eager.two_views(x, g_e), compiled.two_views(x, g_c)
        torch.testing.assert_close(b[0], a[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(b[1], a[1], atol=1e-5, rtol=1e-5)
        assert torch.equal(g_e.get_state(), g_c.get_state())
        assert b[0].is_contiguous(memory_format=torch.channels_last)
    assert compiled._compiled is not None and eager._compiled is None


def test_params_are_drawn_per_image_and_packed_in_columns():
    """One B x 29 tensor holds every image's draws (one host-to-device copy on a GPU); applying
    given parameters twice gives the same views, and the coin flips follow their probabilities."""
    from mocolab.augment import _FLIP_ON, _GRAY_ON, _JITTER
    aug = BatchAugment(preset("v2", 32), [0.5] * 3, [0.25] * 3)
    P, fits = aug.params(4000, 32, 32, torch.Generator().manual_seed(0))
    assert P.shape == (4000, 29) and P.dtype == torch.float32 and fits
    assert abs(P[:, _GRAY_ON].mean() - 0.2) < 0.02 and abs(P[:, _FLIP_ON].mean() - 0.5) < 0.03
    J = P[:, _JITTER].view(4000, 4, 5)  # per position: blend on, factor, op, hue on, shift
    on = J[:, :, 0].bool() | J[:, :, 3].bool()
    assert abs(on.any(1).float().mean() - 0.8) < 0.03 and (on.sum(1)[on.any(1)] == 4).all()  # all 4 ops or none
    ops = torch.where(J[:, :, 3].bool(), 3.0, J[:, :, 2])[on.any(1)]
    assert ops.sort(1).values.eq(torch.arange(4.0)).all()  # each op once, in a per-image order
    x = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    P8, fits8 = aug.params(8, 32, 32, torch.Generator().manual_seed(1))
    assert torch.equal(aug.apply(x, P8, fits8), aug.apply(x, P8, fits8))
    assert torch.equal(aug.apply(x, P8, fits8), aug(x, torch.Generator().manual_seed(1)))


@pytest.mark.parametrize("size", [32, 24, 40])
def test_crop_resize_equals_roi_align(size):
    # grid_sample when every box fits in the output (one bilinear sample per pixel), roi_align's
    # averaging of several samples otherwise: the same values as roi_align either way
    from torchvision.ops import roi_align
    torch.manual_seed(0)
    x = torch.rand(64, 3, 32, 32)
    boxes = sample_crop_boxes(64, 32, 32, (0.08, 1.0), (3 / 4, 4 / 3), torch.Generator().manual_seed(1))
    rois = torch.cat([torch.arange(64, dtype=torch.float32)[:, None], boxes], 1)
    ref = roi_align(x, rois, output_size=(size, size), spatial_scale=1.0, sampling_ratio=-1, aligned=True)
    torch.testing.assert_close(crop_resize(x, boxes, size), ref, atol=1e-5, rtol=1e-5)


def test_crop_scale_overrides_the_presets_and_bounds_the_crop_area():
    assert preset("v2", 32).scale == (0.2, 1.0) and preset("cifar", 32).scale == (0.08, 1.0)
    spec = preset("cifar", 32, [0.5, 0.9])
    assert spec.scale == (0.5, 0.9) and spec.jitter == preset("cifar", 32).jitter
    boxes = sample_crop_boxes(4000, 32, 32, spec.scale, spec.ratio, torch.Generator().manual_seed(0))
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) / 32**2
    assert area.min() > 0.5 - 0.05 and area.max() < 0.9 + 0.05  # rounding to whole pixels
