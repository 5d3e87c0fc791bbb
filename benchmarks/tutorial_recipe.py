"""The nail tutorial's input recipe, rebuilt as the baseline the benchmarks compare against.

What the tutorial does: one tf.data pipeline per group folder (shuffle, decode + resize,
albumentations through ``tf.numpy_function``, ``repeat(count=epochs)``), mixed with
``tf.data.Dataset.sample_from_datasets`` at equal weights, then batch and prefetch. Its
augmentation is the same list of ops as segbalance's default (flip, scale, rotation,
brightness/contrast, hue, blur, noise), in albumentations.

Also shared by the benchmarks: :func:`synth_manifest` builds (or reuses) synthetic data and
a Manifest for it without the prepare stage, :func:`regroup` re-labels the same images into
any number of groups.

Needs the optional extra: ``pip install 'segbalance[albumentations]'``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from segbalance.data.manifest import Manifest, natural_sort

AUTOTUNE = tf.data.AUTOTUNE


def synth_manifest(root: Path, scale: float, size: int = 384) -> Manifest:
    """A Manifest over ``segbalance.data.synth`` data in ``root`` (generated when missing)."""
    if not (root / "Images").is_dir():
        from segbalance.data.synth import generate

        generate(root, scale=scale, size=size, progress=False)
    images, masks, groups = [], [], []
    for group in natural_sort(p.name for p in (root / "Images").iterdir() if p.is_dir()):
        for img in sorted((root / "Images" / group).glob("*.png")):
            images.append(f"Images/{group}/{img.name}")
            masks.append(f"Masks/{group}/{img.name}")
            groups.append(group)
    n = len(images)
    return Manifest(
        root=root,
        image=images,
        mask=masks,
        group=groups,
        split=["train"] * n,
        height=[size] * n,
        width=[size] * n,
        coverage=[0.0] * n,
        mask_rule=["0/255"] * n,
    )


def regroup(manifest: Manifest, groups: int, seed: int = 0) -> Manifest:
    """The same images split into ``groups`` groups (sizes as even as possible, shuffled)."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(len(manifest)) % groups)
    names = [f"g{i}" for i in range(groups)]
    return Manifest(
        root=manifest.root,
        image=manifest.image,
        mask=manifest.mask,
        group=[names[i] for i in labels],
        split=manifest.split,
        height=manifest.height,
        width=manifest.width,
        coverage=manifest.coverage,
        mask_rule=manifest.mask_rule,
        group_order=tuple(names),
    )


def tutorial_transform() -> Any:
    """segbalance's default augmentation, written the way the tutorial writes it."""
    import albumentations as A
    import cv2

    return A.Compose(
        [
            A.HorizontalFlip(p=0.5),
            A.Affine(scale=(0.8, 1.2), border_mode=cv2.BORDER_REFLECT_101, p=0.5),
            A.Rotate(limit=30, border_mode=cv2.BORDER_REFLECT_101, p=0.5),
            A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.0, p=0.5),
            A.RandomBrightnessContrast(brightness_limit=0.0, contrast_limit=0.2, p=0.5),
            A.HueSaturationValue(18, 0, 0, p=0.3),
            A.GaussianBlur(blur_limit=(5, 5), sigma_limit=(0.1, 1.5), p=0.2),
            A.GaussNoise(std_range=(0.0, 8.0 / 255.0), p=0.3),
        ],
        seed=0,
    )


def tutorial_dataset(
    manifest: Manifest,
    *,
    image_size: int,
    batch_size: int,
    epochs: int,
    seed: int = 0,
    augment: bool = True,
) -> tf.data.Dataset:
    """The tutorial's pipeline: per-group datasets, repeat(epochs), sample_from_datasets."""
    transform = tutorial_transform() if augment else None

    def read(image_path: tf.Tensor, mask_path: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        image = tf.io.decode_png(tf.io.read_file(image_path), channels=3)
        image = tf.image.resize(image, (image_size, image_size))
        mask = tf.io.decode_png(tf.io.read_file(mask_path), channels=1)
        mask = tf.image.resize(mask, (image_size, image_size), method="nearest")
        return image, tf.cast(mask > 0, tf.float32)

    def albument(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = transform(image=image.astype(np.uint8), mask=mask.astype(np.uint8))
        return out["image"].astype(np.float32), out["mask"].astype(np.float32)

    def aug(image: tf.Tensor, mask: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        image, mask = tf.numpy_function(albument, [image, mask], [tf.float32, tf.float32])
        image.set_shape((image_size, image_size, 3))
        mask.set_shape((image_size, image_size, 1))
        return image, mask

    paths = np.asarray(manifest.image_paths()), np.asarray(manifest.mask_paths())
    ids = manifest.group_ids
    per_group = []
    for g in range(len(manifest.groups)):
        rows = np.flatnonzero(ids == g)
        if rows.size == 0:
            continue
        ds = tf.data.Dataset.from_tensor_slices((paths[0][rows], paths[1][rows]))
        ds = ds.shuffle(rows.size, seed=seed).map(read, num_parallel_calls=AUTOTUNE)
        if transform is not None:
            ds = ds.map(aug, num_parallel_calls=AUTOTUNE)
        per_group.append(ds.repeat(count=epochs))
    weights = [1.0 / len(per_group)] * len(per_group)
    mixed = tf.data.Dataset.sample_from_datasets(per_group, weights=weights, seed=seed)
    return mixed.batch(batch_size).prefetch(AUTOTUNE)


if __name__ == "__main__":  # a quick look: python benchmarks/tutorial_recipe.py DATA_DIR
    import sys

    data = synth_manifest(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("runs/bench-data"), 0.3)
    first = next(iter(tutorial_dataset(data, image_size=384, batch_size=16, epochs=1)))
    print(os.path.basename(__file__), [tuple(t.shape) for t in first])
