"""Image files on disk, as the folder readers (Tiny-ImageNet, ImageNet) find and decode them."""
from __future__ import annotations

from pathlib import Path

from PIL import Image

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")


def is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS


def load_rgb(path: Path) -> Image.Image:
    with Image.open(path) as img:
        # Tiny-ImageNet and ImageNet contain a few grayscale/CMYK JPEGs; convert() also forces
        # the decode so the file handle can be closed here.
        return img.convert("RGB")
