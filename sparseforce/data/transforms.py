"""Image transforms on PIL images and CHW tensors, the few that the paper's recipes use.

Random transforms accept an optional ``torch.Generator``; ``make_loader`` reseeds such generators
per worker process.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

__all__ = ["Compose", "ToTensor", "Normalize", "RandomCrop", "RandomHorizontalFlip",
           "RandomResizedCrop", "Resize", "CenterCrop"]


def _hw(img: Any) -> tuple[int, int]:
    if isinstance(img, Image.Image):
        w, h = img.size
        return h, w
    if isinstance(img, torch.Tensor):
        if img.dim() < 2:
            raise ValueError(f"expected an image tensor [..., H, W], got shape {tuple(img.shape)}")
        return int(img.shape[-2]), int(img.shape[-1])
    raise TypeError(f"expected a PIL image or a torch.Tensor, got {type(img).__name__}")


def _crop(img: Any, top: int, left: int, height: int, width: int) -> Any:
    if isinstance(img, Image.Image):
        # PIL fills any part of the box outside the image with zeros, matching the tensor path.
        return img.crop((left, top, left + width, top + height))
    h, w = _hw(img)
    if top < 0 or left < 0 or top + height > h or left + width > w:
        pad_t, pad_l = max(0, -top), max(0, -left)
        pad_b, pad_r = max(0, top + height - h), max(0, left + width - w)
        img = F.pad(img, (pad_l, pad_r, pad_t, pad_b))
        top, left = top + pad_t, left + pad_l
    return img[..., top:top + height, left:left + width]


def _resize(img: Any, size: tuple[int, int]) -> Any:
    h, w = size
    if isinstance(img, Image.Image):
        return img.resize((w, h), Image.BILINEAR)
    if not img.is_floating_point():
        raise TypeError("tensor resize needs a floating-point image; apply ToTensor first")
    squeeze = img.dim() == 3
    x = img.unsqueeze(0) if squeeze else img
    # antialias keeps downscaling (the common case, e.g. ImageNet -> 224) from aliasing,
    # matching what PIL's bilinear filter does on the PIL path.
    x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    return x.squeeze(0) if squeeze else x


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    size = tuple(int(s) for s in size)
    if len(size) != 2:
        raise ValueError(f"size must be an int or (height, width), got {size}")
    return size  # type: ignore[return-value]


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence[Callable]):
        self.transforms = list(transforms)

    def __call__(self, img: Any) -> Any:
        for t in self.transforms:
            img = t(img)
        return img

    def __repr__(self) -> str:
        inner = ", ".join(repr(t) for t in self.transforms)
        return f"Compose([{inner}])"


class ToTensor:
    """PIL image or HWC uint8 array -> float32 CHW tensor in [0, 1]."""

    def __call__(self, img: Any) -> torch.Tensor:
        if isinstance(img, Image.Image):
            if img.mode not in ("L", "RGB", "RGBA"):
                img = img.convert("RGB")
            arr = np.array(img)  # a copy: PIL hands out read-only buffers
        elif isinstance(img, np.ndarray):
            arr = img
        else:
            raise TypeError(f"ToTensor expects a PIL image or numpy array, got {type(img).__name__}")
        if arr.ndim == 2:
            arr = arr[:, :, None]
        if arr.ndim != 3:
            raise ValueError(f"expected an HxW or HxWxC image, got shape {arr.shape}")
        t = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)
        if t.dtype == torch.uint8:
            return t.float().div_(255.0)
        return t.float()

    def __repr__(self) -> str:
        return "ToTensor()"


class Normalize:
    """(x - mean) / std per channel on a float CHW (or NCHW) tensor."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        self.mean = torch.as_tensor(mean, dtype=torch.float32).reshape(-1, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32).reshape(-1, 1, 1)
        if self.mean.shape != self.std.shape:
            raise ValueError("mean and std must have the same length")
        if (self.std == 0).any():
            raise ValueError("std must be non-zero")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError("Normalize expects a floating-point tensor; apply ToTensor first")
        if x.shape[-3] != self.mean.shape[0]:
            raise ValueError(
                f"Normalize has {self.mean.shape[0]} channels but the image has {x.shape[-3]}")
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()})"


class RandomCrop:
    """Zero-pad by ``padding`` on every side, then take a random ``size`` crop."""

    def __init__(self, size: int | Sequence[int], padding: int = 0,
                 generator: torch.Generator | None = None):
        self.size = _pair(size)
        if padding < 0:
            raise ValueError("padding must be >= 0")
        self.padding = int(padding)
        self.generator = generator

    def __call__(self, img: Any) -> Any:
        if self.padding:
            p = self.padding
            if isinstance(img, Image.Image):
                img = ImageOps.expand(img, border=p, fill=0)
            else:
                img = F.pad(img, (p, p, p, p))
        h, w = _hw(img)
        th, tw = self.size
        if th > h or tw > w:
            raise ValueError(f"crop size {self.size} is larger than the (padded) image {(h, w)}")
        top = int(torch.randint(0, h - th + 1, (1,), generator=self.generator))
        left = int(torch.randint(0, w - tw + 1, (1,), generator=self.generator))
        return _crop(img, top, left, th, tw)

    def __repr__(self) -> str:
        return f"RandomCrop(size={self.size}, padding={self.padding})"


class RandomHorizontalFlip:
    """Mirror left-right with probability ``p``."""

    def __init__(self, p: float = 0.5, generator: torch.Generator | None = None):
        if not 0.0 <= p <= 1.0:
            raise ValueError("p must be in [0, 1]")
        self.p = float(p)
        self.generator = generator

    def __call__(self, img: Any) -> Any:
        # Always draw, even for p in {0, 1}, so the generator stream does not depend on p.
        if float(torch.rand(1, generator=self.generator)) < self.p:
            if isinstance(img, Image.Image):
                return img.transpose(Image.FLIP_LEFT_RIGHT)
            return img.flip(-1)
        return img

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class RandomResizedCrop:
    """Inception-style crop: random area fraction and aspect ratio, resized to ``size``.

    Same sampling scheme as the standard ImageNet recipe (10 tries, then a centre crop clamped
    to the allowed aspect ratio), so accuracy numbers are comparable with published ones.
    """

    def __init__(self, size: int | Sequence[int], scale: tuple[float, float] = (0.08, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3),
                 generator: torch.Generator | None = None):
        self.size = _pair(size)
        if scale[0] > scale[1] or ratio[0] > ratio[1]:
            raise ValueError("scale and ratio must be (min, max)")
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.generator = generator

    def _uniform(self, lo: float, hi: float) -> float:
        return float(torch.empty(1).uniform_(lo, hi, generator=self.generator))

    def get_params(self, img: Any) -> tuple[int, int, int, int]:
        h, w = _hw(img)
        area = h * w
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target_area = area * self._uniform(*self.scale)
            aspect = math.exp(self._uniform(*log_ratio))
            cw = int(round(math.sqrt(target_area * aspect)))
            ch = int(round(math.sqrt(target_area / aspect)))
            if 0 < cw <= w and 0 < ch <= h:
                top = int(torch.randint(0, h - ch + 1, (1,), generator=self.generator))
                left = int(torch.randint(0, w - cw + 1, (1,), generator=self.generator))
                return top, left, ch, cw
        in_ratio = w / h
        if in_ratio < self.ratio[0]:
            cw, ch = w, int(round(w / self.ratio[0]))
        elif in_ratio > self.ratio[1]:
            ch, cw = h, int(round(h * self.ratio[1]))
        else:
            cw, ch = w, h
        return (h - ch) // 2, (w - cw) // 2, ch, cw

    def __call__(self, img: Any) -> Any:
        top, left, ch, cw = self.get_params(img)
        return _resize(_crop(img, top, left, ch, cw), self.size)

    def __repr__(self) -> str:
        return f"RandomResizedCrop(size={self.size}, scale={self.scale}, ratio={self.ratio})"


class Resize:
    """An int resizes the shorter side to ``size`` keeping the aspect ratio; (h, w) is exact."""

    def __init__(self, size: int | Sequence[int]):
        self.size = size if isinstance(size, int) else _pair(size)

    def __call__(self, img: Any) -> Any:
        if isinstance(self.size, int):
            h, w = _hw(img)
            if h <= w:
                target = (self.size, max(1, int(self.size * w / h)))
            else:
                target = (max(1, int(self.size * h / w)), self.size)
        else:
            target = self.size
        if target == _hw(img):
            return img
        return _resize(img, target)

    def __repr__(self) -> str:
        return f"Resize(size={self.size})"


class CenterCrop:
    """Central ``size`` crop; zero-pads images smaller than ``size``."""

    def __init__(self, size: int | Sequence[int]):
        self.size = _pair(size)

    def __call__(self, img: Any) -> Any:
        h, w = _hw(img)
        th, tw = self.size
        # round() rather than // so an odd margin splits the same way as the standard recipe.
        top = int(round((h - th) / 2.0))
        left = int(round((w - tw) / 2.0))
        return _crop(img, top, left, th, tw)

    def __repr__(self) -> str:
        return f"CenterCrop(size={self.size})"
