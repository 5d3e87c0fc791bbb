"""Tiny image/mask files and folder layouts for the prepare-stage tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 32


def square_mask(size: int = SIZE, side: int = 8, value: int = 255) -> np.ndarray:
    """A gray mask with a ``side`` x ``side`` square of ``value``: coverage side^2/size^2."""
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[:side, :side] = value
    return mask


def write_image(
    path: Path, array: np.ndarray | None = None, size: int = SIZE, seed: int = 0
) -> Path:
    """Save an RGB image (random pixels unless ``array``); format from the extension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if array is None:
        array = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(array).save(path)
    return path


def write_mask(path: Path, array: np.ndarray | None = None, mode: str | None = None) -> Path:
    """Save a mask array (default: 8x8 square of 255 in 32x32) as given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(square_mask() if array is None else array)
    if mode is not None:
        img = img.convert(mode)
    img.save(path)
    return path


def write_pair(root: Path, image_rel: str, mask_rel: str | None = None, seed: int = 0) -> None:
    """An image and its square mask; ``mask_rel`` defaults to image path under Masks/ as PNG."""
    write_image(root / image_rel, seed=seed)
    if mask_rel is None:
        parts = Path(image_rel).with_suffix(".png").parts
        mask_rel = str(Path("Masks", *parts[1:]))
    write_mask(root / mask_rel)


def layout_a(
    root: Path, counts: dict[str, int], images: str = "Images", masks: str = "Masks"
) -> Path:
    """``Images/<g>/img<i>.png`` + ``Masks/<g>/img<i>.png`` with ``counts[g]`` pairs."""
    for group, n in counts.items():
        for i in range(n):
            write_image(root / images / group / f"img{i}.png", seed=i)
            write_mask(root / masks / group / f"img{i}.png")
    return root
