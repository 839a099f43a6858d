"""Augmentation presets (MoCo v1, v2 "aug+") in two backends.

- `BatchAugment`: batched, on the model's device, from uint8 batches. Every image draws its
  own parameters, following torchvision's per-image sampling rules (RandomResizedCrop's 10
  tries, ColorJitter's random order). Written by hand because torchvision.transforms.v2
  draws one set of parameters per batch (image by image it ran an order of magnitude slower),
  kornia, which draws per image, ran about twice as slow on 2 cores, and per-image batching is
  what makes augmentation cheap next to the model, several times faster than the PIL pipeline
  in one process (benchmarks/augment.py; benchmarks/RESULTS.md, session 8, 'Maintained
  libraries for the batched augmentation: kornia and torchvision v2').
- `pil_transform`: torchvision's classic per-image pipeline, the reference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torchvision import transforms as T
from torchvision.ops import roi_align

from .distributed import to_device

_GRAY = (0.299, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights


@dataclass(frozen=True)
class AugSpec:
    size: int
    scale: tuple[float, float] = (0.2, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)  # brightness, contrast, saturation, hue
    p_jitter: float = 0.8
    p_gray: float = 0.2
    p_blur: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    p_flip: float = 0.5
    p_solarize: float = 0.0
    gray_first: bool = False  # v1 applies grayscale before jitter


def preset(name: str, size: int, scale: tuple[float, float] | list[float] | None = None) -> AugSpec:
    """v1: the MoCo v1 recipe; v2: "aug+" (blur dropped below 64 px); cifar: the official
    CIFAR demo's; none: the whole image, for tests. `scale`: the random resized crop's area
    range instead of the preset's."""
    if name == "v1":
        spec = AugSpec(size, jitter=(0.4, 0.4, 0.4, 0.4), p_jitter=1.0, p_blur=0.0, gray_first=True)
    elif name == "v2":
        spec = AugSpec(size, p_blur=0.5 if size >= 64 else 0.0)
    elif name == "cifar":  # the official CIFAR demo: v2 without blur, torchvision's default crop scale
        spec = AugSpec(size, scale=(0.08, 1.0), p_blur=0.0)
    elif name == "none":
        spec = AugSpec(size, scale=(1.0, 1.0), ratio=(1.0, 1.0), p_jitter=0.0, p_gray=0.0, p_blur=0.0, p_flip=0.0)
    else:
        raise ValueError(f"unknown augmentation preset '{name}'; choose v1, v2, cifar or none")
    return replace(spec, scale=(float(scale[0]), float(scale[1]))) if scale else spec


# ---------------------------------------------------------------------------------------------
# batched tensor backend

def _gray(x: torch.Tensor) -> torch.Tensor:
    """x: B x 3 x H x W -> B x 1 x H x W"""
    r, g, b = x.unbind(1)
    return (_GRAY[0] * r + _GRAY[1] * g + _GRAY[2] * b).unsqueeze(1)


def _blend(a: torch.Tensor, b: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """f*a + (1-f)*b, clamped to [0, 1]; f: B"""
    return (b + f.view(-1, 1, 1, 1) * (a - b)).clamp_(0, 1)


def _adjust_hue(x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Shifts hue by h (B, in [-0.5, 0.5]) through HSV, as torchvision's adjust_hue.
    x: B x 3 x H x W in [0, 1]."""
    r, g, b = x.unbind(1)
    # V = max(r, g, b), elementwise: faster than x.max(1) across planes
    maxc = torch.maximum(torch.maximum(r, g), b)
    cr = maxc - torch.minimum(torch.minimum(r, g), b)  # chroma, = V * S
    inv = 1.0 / torch.where(cr > 0, cr, 1.0)
    # hue in sixths of a turn, torchvision's hr + hg + hb (in (-1, 5]), then shifted, mod 6
    h6 = torch.where(maxc == r, (g - b) * inv, torch.where(maxc == g, (b - r) * inv + 2.0, (r - g) * inv + 4.0))
    h6 = torch.remainder(h6 + 6.0 * h.view(-1, 1, 1), 6.0)
    # HSV -> RGB in closed form, channel c = V - V*S*clamp(min(k, 4 - k), 0, 1) with
    # k = (n_c + h6) mod 6, n = (5, 3, 1): the same values as torchvision's 6-way table,
    # without building and gathering it (written by hand: several times faster than
    # torchvision's adjust_hue image by image, see benchmarks/augment.py; benchmarks/RESULTS.md,
    # session 4, 'Tensor augmentation', and 'Figures moved from code comments')
    k = torch.stack([h6 + 5.0, h6 + 3.0, h6 + 1.0], 1)  # B x 3 x H x W, in [1, 11)
    k = torch.where(k >= 6.0, k - 6.0, k)
    return (maxc.unsqueeze(1) - cr.unsqueeze(1) * torch.minimum(k, 4.0 - k).clamp_(0, 1)).clamp_(0, 1)


def sample_crop_boxes(B: int, H: int, W: int, scale, ratio, g: torch.Generator, tries: int = 10):
    """RandomResizedCrop.get_params for B images at once -> B x 4 boxes (x0, y0, x1, y1)."""
    area = H * W
    target = area * torch.empty(B, tries).uniform_(scale[0], scale[1], generator=g)
    log_r = torch.empty(B, tries).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=g)
    ar = torch.exp(log_r)
    w = torch.round(torch.sqrt(target * ar))
    h = torch.round(torch.sqrt(target / ar))
    ok = (w > 0) & (h > 0) & (w <= W) & (h <= H)
    first = torch.argmax(ok.int(), dim=1)  # first valid try per image
    w = w.gather(1, first[:, None]).squeeze(1)
    h = h.gather(1, first[:, None]).squeeze(1)
    # fallback (no valid try): the central crop with the ratio clamped, as torchvision does
    in_ratio = W / H
    if in_ratio < ratio[0]:
        fw, fh = W, round(W / ratio[0])
    elif in_ratio > ratio[1]:
        fw, fh = round(H * ratio[1]), H
    else:
        fw, fh = W, H
    valid = ok.any(1)
    w = torch.where(valid, w, torch.full_like(w, fw))
    h = torch.where(valid, h, torch.full_like(h, fh))
    u = torch.rand(B, 2, generator=g)
    x0 = torch.where(valid, torch.floor(u[:, 0] * (W - w + 1)), torch.full_like(w, (W - fw) // 2))
    y0 = torch.where(valid, torch.floor(u[:, 1] * (H - h + 1)), torch.full_like(h, (H - fh) // 2))
    return torch.stack([x0, y0, x0 + w, y0 + h], dim=1)


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, max_sigma: float | None = None) -> torch.Tensor:
    """Per-image Gaussian blur (sigma: B), separable, reflect padding, one grouped conv per axis.
    The kernel spans 3 * max_sigma (default: the batch's largest sigma, which syncs on a GPU)."""
    B, C, H, W = x.shape
    radius = int(math.ceil(3 * (max_sigma if max_sigma is not None else float(sigma.max()))))
    radius = min(radius, (min(H, W) - 1))
    k = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kern = torch.exp(-0.5 * (k[None, :] / sigma[:, None].to(x)) ** 2)
    kern = kern / kern.sum(1, keepdim=True)  # B x (2r+1)
    kern = kern.repeat_interleave(C, 0)  # (B*C) x (2r+1)
    y = F.pad(x.reshape(1, B * C, H, W), (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, kern[:, None, None, :], groups=B * C)
    y = F.conv2d(y, kern[:, None, :, None], groups=B * C)
    return y.view(B, C, H, W)


def boxes_fit(boxes: torch.Tensor, size: int) -> bool:
    """Whether no crop box (B x 4: x0, y0, x1, y1) is larger than the output size."""
    return bool(((boxes[:, 2] - boxes[:, 0]) <= size).all() and ((boxes[:, 3] - boxes[:, 1]) <= size).all())


def crop_resize(x: torch.Tensor, boxes: torch.Tensor, size: int, fits: bool | None = None) -> torch.Tensor:
    """x: B x C x H x W float, boxes: B x 4 (x0, y0, x1, y1) -> B x C x size x size, bilinear.
    roi_align with an adaptive sampling ratio averages ceil(box / size)^2 samples per output
    pixel (antialiasing when a box is larger than the output). When no box is (`fits`; None:
    computed from the boxes), that is one bilinear sample at each bin centre, which grid_sample
    computes identically and faster on this 2-core CPU (benchmarks/RESULTS.md, session 4,
    'Tensor augmentation'): the CIFAR case, every step."""
    B, _, H, W = x.shape
    boxes = boxes.to(x)
    x0, y0, x1, y1 = boxes.unbind(1)
    if boxes_fit(boxes, size) if fits is None else fits:
        # output [-1, 1] -> the box, in align_corners=False coordinates
        zero = torch.zeros_like(x0)
        theta = torch.stack([(x1 - x0) / W, zero, (x0 + x1) / W - 1, zero, (y1 - y0) / H, (y0 + y1) / H - 1], 1)
        grid = F.affine_grid(theta.view(B, 2, 3), [B, x.shape[1], size, size], align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    rois = torch.cat([torch.arange(B, dtype=x.dtype, device=x.device)[:, None], boxes], 1)
    return roi_align(x, rois, output_size=(size, size), spatial_scale=1.0, sampling_ratio=-1, aligned=True)


# The per-image parameters of one call, packed as columns of one B x 29 float tensor (drawn
# on the CPU from the run's generator, then one host-to-device copy)
_BOX, _GRAY_ON = slice(0, 4), 4  # crop box x0, y0, x1, y1; grayscale
_JITTER = slice(5, 25)  # 4 positions x (blend on, blend factor, blend op 0-2, hue on, hue shift)
_BLUR_ON = 25
_SIGMA = 26
_SOLARIZE_ON = 27
_FLIP_ON = 28
_N_PARAMS = 29


def _select_subset(mask: torch.Tensor, fn, x: torch.Tensor, *args: torch.Tensor) -> torch.Tensor:
    """fn on the images where mask (B) is set, computed for those only: the fast form on a CPU."""
    idx = mask.nonzero().squeeze(1)
    if idx.numel() == 0:
        return x
    sub = fn(x.index_select(0, idx), *[a.index_select(0, idx) for a in args])
    return x.index_copy_(0, idx, sub)  # in place: x is this call's own working tensor


def _select_dense(mask: torch.Tensor, fn, x: torch.Tensor, *args: torch.Tensor) -> torch.Tensor:
    """fn on every image, kept where mask (B) is set: no data-dependent shapes, so no host-device
    sync on an accelerator (the subset form needs one per op) and one graph for torch.compile."""
    return torch.where(mask.bool().view(-1, 1, 1, 1), fn(x, *args), x)


def _gray3(x: torch.Tensor) -> torch.Tensor:
    return _gray(x).expand(-1, 3, -1, -1)


def _solarize(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x >= 0.5, 1.0 - x, x)


def _flip(x: torch.Tensor) -> torch.Tensor:
    return x.flip(3)


class BatchAugment:
    """uint8 B x 3 x H x W (any device) -> normalised float B x 3 x S x S, per-image parameters.

    Each call draws the parameters on the CPU (`params`) and applies them (`apply`) in one of
    two forms: on a CPU, each op on the subset of images that draws it; on an accelerator, or
    with `compile=True`, each op on every image, kept with torch.where, so that the whole
    augmentation is one graph without host syncs. torch.compile fuses that graph's elementwise
    ops into a few loops (on this 2-core CPU faster than the subset form, in benchmarks/augment.py
    and end to end in benchmarks/throughput.py: benchmarks/RESULTS.md, session 7, 'The
    augmentation as one graph') and, on a GPU, into a few kernels instead of one launch per op."""

    def __init__(self, spec: AugSpec, mean, std, channels_last: bool = False, compile: bool = False):
        self.spec = spec
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.channels_last = channels_last
        self.compile = compile
        # None: dense off the CPU or when compiled, subsets otherwise (tests force either)
        self.masked = None
        self._compiled = None
        self._norm: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}  # mean, std per device

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        B, _, H, W = images.shape
        return self.apply(images, *self.params(B, H, W, g))

    def two_views(self, images: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """The query and key views of a batch (B each), from one call on the 2B images: every op
        runs once on twice the images instead of twice, and at CIFAR size the per-op overhead
        is much of the cost (benchmarks/augment.py: faster at batch 128; benchmarks/RESULTS.md,
        session 6, 'Augmentation')."""
        v = self(torch.cat([images, images]), g)  # 2B x 3 x S x S: views of image i at i and B + i
        return v[:images.shape[0]], v[images.shape[0]:]

    def params(self, B: int, H: int, W: int, g: torch.Generator) -> tuple[torch.Tensor, bool]:
        """Draws B images' parameters, as torchvision would per image -> (B x 29 float32 on the
        CPU, whether every crop box fits in the output size)."""
        s = self.spec
        P = torch.zeros(B, _N_PARAMS)
        P[:, _BOX] = boxes = sample_crop_boxes(B, H, W, s.scale, s.ratio, g)
        rand = torch.rand(B, 8, generator=g)  # per-image coin flips
        P[:, _GRAY_ON] = rand[:, 0] < s.p_gray
        if s.p_jitter > 0:
            P[:, _JITTER] = jitter_columns(rand[:, 1] < s.p_jitter, *jitter_params(B, s.jitter, g), s.jitter)
        if s.p_blur > 0:
            P[:, _SIGMA] = torch.empty(B).uniform_(s.blur_sigma[0], s.blur_sigma[1], generator=g)
            P[:, _BLUR_ON] = rand[:, 2] < s.p_blur
        P[:, _SOLARIZE_ON] = rand[:, 3] < s.p_solarize
        P[:, _FLIP_ON] = rand[:, 4] < s.p_flip
        return P, boxes_fit(boxes, s.size)

    @torch.no_grad()
    def apply(self, images: torch.Tensor, P: torch.Tensor, fits: bool) -> torch.Tensor:
        """images: uint8 B x 3 x H x W; P: `params`' B x 29 columns -> B x 3 x S x S."""
        dev = images.device
        dense = self.masked if self.masked is not None else (self.compile or dev.type != "cpu")
        P = to_device(P, dev)  # one pinned, non-blocking copy on CUDA
        if dev not in self._norm:
            self._norm[dev] = (self.mean.to(dev), self.std.to(dev))
        mean, std = self._norm[dev]
        # the crop stays eager: inductor's grid_sample (gathers) ran several times slower than aten's
        # on this CPU (benchmarks/RESULTS.md, session 7, 'The augmentation as one graph')
        x = crop_resize(images.float().div_(255), P[:, _BOX], self.spec.size, fits)
        if dense and self.compile:
            if self._compiled is None:
                self._compiled = torch.compile(self._color, dynamic=False)
            return self._compiled(x, P, mean, std, True)
        return self._color(x, P, mean, std, dense)

    def _color(self, x: torch.Tensor, P: torch.Tensor, mean, std, dense: bool) -> torch.Tensor:
        """Everything after the crop: gray, jitter, blur, solarize, flip, normalisation."""
        s = self.spec
        select = _select_dense if dense else _select_subset
        if s.gray_first and s.p_gray > 0:
            x = select(P[:, _GRAY_ON], _gray3, x)
        if s.p_jitter > 0:
            x = self._jitter(x, P[:, _JITTER], select)
        if not s.gray_first and s.p_gray > 0:
            x = select(P[:, _GRAY_ON], _gray3, x)
        if s.p_blur > 0:
            blur = lambda y, sg: _gaussian_blur(y, sg, s.blur_sigma[1])  # noqa: E731
            x = select(P[:, _BLUR_ON], blur, x, P[:, _SIGMA])
        if s.p_solarize > 0:
            x = select(P[:, _SOLARIZE_ON], _solarize, x)
        if s.p_flip > 0:
            x = select(P[:, _FLIP_ON], _flip, x)
        x = (x - mean) / std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _jitter(self, x: torch.Tensor, J: torch.Tensor, select) -> torch.Tensor:
        """ColorJitter from `jitter_columns`' B x 20. At each of the 4 positions, the images whose
        op there is brightness, contrast or saturation take one blend, t + f (x - t), towards
        t = 0, their gray mean or their gray image, and the others their hue shift: 2 ops per
        position instead of 4, since the per-op overhead is most of the cost at CIFAR size."""
        for pos in range(4):
            on, f, op, hue_on, shift = J[:, 5 * pos:5 * pos + 5].unbind(1)
            x = select(on, _blend_op, x, f, op)
            if self.spec.jitter[3] > 0:
                x = select(hue_on, _adjust_hue, x, shift)
        return x

def jitter_params(B: int, jitter, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """ColorJitter.get_params for B images: factors B x 4 and a random order B x 4."""
    bj, cj, sj, hj = jitter
    fac = torch.stack([
        torch.empty(B).uniform_(max(0.0, 1 - bj), 1 + bj, generator=g),
        torch.empty(B).uniform_(max(0.0, 1 - cj), 1 + cj, generator=g),
        torch.empty(B).uniform_(max(0.0, 1 - sj), 1 + sj, generator=g),
        torch.empty(B).uniform_(-hj, hj, generator=g),
    ], 1)  # B x 4
    order = torch.argsort(torch.rand(B, 4, generator=g), dim=1)  # a random permutation per image
    return fac, order


def jitter_columns(apply: torch.Tensor, fac: torch.Tensor, order: torch.Tensor, jitter) -> torch.Tensor:
    """ColorJitter's parameters per position: apply B (bool), fac B x 4 (brightness, contrast,
    saturation factors, hue shift), order B x 4 (a permutation of the ops 0..3 per image)
    -> B x 20: for each of the 4 positions (blend on, blend factor, blend op, hue on, hue shift)."""
    enabled = torch.tensor([j > 0 for j in jitter])
    cols = []
    for pos in range(4):
        op = order[:, pos]
        on = apply & enabled[op]
        cols += [on & (op < 3), fac.gather(1, op[:, None]).squeeze(1), op, on & (op == 3), fac[:, 3]]
    return torch.stack([c.float() for c in cols], 1)


def _blend_op(x: torch.Tensor, f: torch.Tensor, op: torch.Tensor) -> torch.Tensor:
    """Brightness (op 0), contrast (1) or saturation (2) per image, as torchvision's
    adjust_*: clamp(t + f (x - t)) with t = 0, the mean of the gray image, the gray image.
    x: B x 3 x H x W, f, op: B"""
    gray = _gray(x)  # B x 1 x H x W
    t = torch.where((op == 2).view(-1, 1, 1, 1), gray,
                    (op == 1).view(-1, 1, 1, 1) * gray.mean(dim=(1, 2, 3), keepdim=True))
    return _blend(x, t, f)


# ---------------------------------------------------------------------------------------------
# PIL backend (torchvision, one image at a time)

def blur_kernel_size(spec: AugSpec) -> int:
    """The per-image pipelines' blur kernel: +-3 of the largest sigma (the batch path's span)."""
    return 2 * math.ceil(3 * spec.blur_sigma[1]) + 1


def pil_transform(spec: AugSpec, mean, std) -> T.Compose:
    s = spec
    ops = [T.RandomResizedCrop(s.size, scale=s.scale, ratio=s.ratio)]
    gray = T.RandomGrayscale(p=s.p_gray)
    if s.gray_first:
        ops.append(gray)
    if s.p_jitter > 0:
        ops.append(T.RandomApply([T.ColorJitter(*s.jitter)], p=s.p_jitter))
    if not s.gray_first:
        ops.append(gray)
    if s.p_blur > 0:
        ops.append(T.RandomApply([T.GaussianBlur(kernel_size=blur_kernel_size(s), sigma=s.blur_sigma)], p=s.p_blur))
    if s.p_solarize > 0:
        ops.append(T.RandomSolarize(128, p=s.p_solarize))
    ops += [T.RandomHorizontalFlip(s.p_flip), T.ToTensor(), T.Normalize(mean, std)]
    return T.Compose(ops)


class TwoViews:
    """Two independent augmentations of one image (query view, key view)."""

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, img):
        return self.transform(img), self.transform(img)
