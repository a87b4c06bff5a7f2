"""Training-image augmentation (BEiT / BEiT-3 pretraining): random resized crop, horizontal flip, colour
jitter, each sample's draws from its own seed so that a resumed run repeats them.

    seeds = sample_seeds(train_seed, epoch, rank, sample_ids)    # one int per sample
    x = augment_images(unit_pixels, seeds, recipe.augment, out_size=S)  # (B, 3, R, R) [0, 1] -> (B, 3, S, S)

The operations follow torchvision's ``RandomResizedCrop`` (area and log-aspect drawn uniformly, 10 tries,
then a centre crop clipped to the ratio range), ``RandomHorizontalFlip`` and ``ColorJitter`` (brightness,
contrast and saturation factors uniform in [1 - s, 1 + s], applied in a random order, clamped to [0, 1]
after each), written in torch because torchvision does not import beside the CPU torch build. The
settings are ``recipes.ImageAugment``; validation and evaluation never call this.
"""

from __future__ import annotations

import hashlib
import math

import torch
import torch.nn.functional as F

from .recipes import ImageAugment


def sample_seeds(seed: int, epoch: int, rank: int, sample_ids) -> list[int]:
    """One 63-bit seed per sample from (training seed, stream epoch, worker rank, sample id).

    A sample is read once per epoch, so (epoch, sample id) names one draw of it: the same wherever Ray
    Data's prefetch threads put the batch, and the same again when a resumed run re-reads the epoch.
    blake2b, not ``hash()``: Python salts ``hash`` of strings per process."""
    out = []
    for sid in sample_ids:
        sid = sid.decode() if isinstance(sid, bytes) else str(sid)
        digest = hashlib.blake2b(f"{seed}/{epoch}/{rank}/{sid}".encode(), digest_size=8).digest()
        out.append(int.from_bytes(digest, "little") >> 1)
    return out


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def crop_box(height: int, width: int, scale, ratio, g: torch.Generator) -> tuple[int, int, int, int]:
    """torchvision ``RandomResizedCrop.get_params``: (top, left, h, w) of a crop covering a uniform
    ``scale`` fraction of the area with a log-uniform aspect ratio (w / h) in ``ratio``."""
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * _uniform(g, scale[0], scale[1])
        aspect = math.exp(_uniform(g, log_lo, log_hi))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (), generator=g))
            left = int(torch.randint(0, width - w + 1, (), generator=g))
            return top, left, h, w
    in_ratio = width / height  # fallback: the whole image, clipped to the ratio range
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def _gray(x: torch.Tensor) -> torch.Tensor:  # (3, H, W) -> (1, H, W), ITU-R 601 luma as torchvision
    return (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]).unsqueeze(0)


def color_jitter(x: torch.Tensor, cfg: ImageAugment, g: torch.Generator) -> torch.Tensor:
    """(3, H, W) in [0, 1] -> the same, brightness / contrast / saturation jittered in a random order."""
    ops = []
    if cfg.brightness > 0:
        f = _uniform(g, max(0.0, 1 - cfg.brightness), 1 + cfg.brightness)
        ops.append(lambda t, f=f: t * f)
    if cfg.contrast > 0:
        f = _uniform(g, max(0.0, 1 - cfg.contrast), 1 + cfg.contrast)
        ops.append(lambda t, f=f: (t - _gray(t).mean()) * f + _gray(t).mean())
    if cfg.saturation > 0:
        f = _uniform(g, max(0.0, 1 - cfg.saturation), 1 + cfg.saturation)
        ops.append(lambda t, f=f: (t - _gray(t)) * f + _gray(t))
    for i in torch.randperm(len(ops), generator=g).tolist():
        x = ops[i](x).clamp_(0.0, 1.0)
    return x


def augment_image(x: torch.Tensor, seed: int, cfg: ImageAugment, out_size: int) -> torch.Tensor:
    """One image (3, H, W) float in [0, 1] -> its augmented view (3, S, S) in [0, 1]."""
    g = torch.Generator().manual_seed(int(seed))
    _, H, W = x.shape
    top, left, h, w = crop_box(H, W, cfg.crop_scale, cfg.crop_ratio, g)
    view = F.interpolate(x[None, :, top:top + h, left:left + w], size=(out_size, out_size), mode="bilinear",
                         antialias=True, align_corners=False)[0].clamp_(0.0, 1.0)  # (3, S, S)
    if float(torch.rand((), generator=g)) < cfg.hflip:
        view = view.flip(-1)
    return color_jitter(view, cfg, g)


def augment_images(x: torch.Tensor, seeds: list[int], cfg: ImageAugment, out_size: int) -> torch.Tensor:
    """(B, 3, H, W) float in [0, 1] -> (B, 3, S, S) augmented views, sample b from ``seeds[b]``."""
    if len(seeds) != x.shape[0]:
        raise ValueError(f"{len(seeds)} seeds for {x.shape[0]} images")
    return torch.stack([augment_image(img, s, cfg, out_size) for img, s in zip(x, seeds)])


__all__ = ["augment_image", "augment_images", "color_jitter", "crop_box", "sample_seeds"]
