"""Augmentation invariants: binary masks, image and mask moved together, seeds, groups."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from segbalance.augment_ops import (
    DEFAULT_OPS,
    OPS,
    Affine,
    AugmentOp,
    Blur,
    Brightness,
    Contrast,
    Flip,
    Hue,
    Noise,
    Rotate,
    Saturation,
    Scale,
    Translate,
    get_op,
)
from segbalance.config import AugmentConfig
from segbalance.errors import UserError
from segbalance.pipeline.augment import build_augmenter, build_pipeline
from segbalance.pipeline.kernels import build_kernel, warp

GEOMETRIC = [
    Flip(p=0.5),
    Affine(scale=0.1, degrees=20, translate=0.05),
    Scale(factor=0.2),
    Rotate(degrees=30),
    Translate(fraction=0.1),
]
# Image-only ops with parameters strong enough to change a 32 px image visibly.
IMAGE_ONLY = [
    Brightness(factor=0.3),
    Contrast(factor=0.5),
    Hue(factor=0.3),
    Saturation(factor=0.5),
    Blur(sigma=(1.0, 2.0)),
    Noise(std=20.0),
]


def _seed(a: int, b: int = 0) -> tf.Tensor:
    return tf.constant([a, b], tf.int64)


def _blocky_image(rng: np.random.Generator, size: int = 48, block: int = 8) -> np.ndarray:
    """An image of flat blocks, so a threshold of it has few border pixels."""
    blocks = rng.integers(0, 256, (size // block, size // block, 3)).astype(np.float32)
    return np.kron(blocks, np.ones((block, block, 1), np.float32))


def _run(
    spec: list[AugmentOp], image: np.ndarray, mask: np.ndarray, seed: tf.Tensor, jit: bool = False
) -> tuple[np.ndarray, ...]:
    """One eager-built pipeline run; jit=False by default: tests need no XLA compile each."""
    fn = build_pipeline(spec, jit=jit)
    out_i, out_m = fn(tf.constant(image[None]), tf.constant(mask[None]), seed)
    return out_i.numpy()[0], out_m.numpy()[0]


@pytest.fixture(scope="module")
def default_fn() -> Any:
    return tf.function(build_pipeline("default"))


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    seed=st.integers(0, 2**31 - 1),
    density=st.floats(0.0, 1.0),
    mask_seed=st.integers(0, 1000),
)
def test_binary_mask_stays_binary_after_default_augmentation(
    default_fn: Any, seed: int, density: float, mask_seed: int
) -> None:
    rng = np.random.default_rng(mask_seed)
    mask = (rng.random((32, 32, 1)) < density).astype(np.float32)
    image = rng.integers(0, 256, (32, 32, 3)).astype(np.float32)
    out_i, out_m = default_fn(tf.constant(image[None]), tf.constant(mask[None]), _seed(seed))
    assert set(np.unique(out_m.numpy())) <= {0.0, 1.0}
    assert out_m.shape == (1, 32, 32, 1) and out_i.shape == (1, 32, 32, 3)
    assert float(tf.reduce_min(out_i)) >= 0.0 and float(tf.reduce_max(out_i)) <= 255.0


def test_image_and_mask_are_moved_together() -> None:
    rng = np.random.default_rng(1)
    image = np.where(_blocky_image(rng, 64, 16) > 127, 255.0, 0.0).astype(np.float32)
    mask = (image[..., :1] > 127).astype(np.float32)
    fn = build_pipeline(GEOMETRIC, jit=False)
    changed = 0
    for s in range(6):
        out_i, out_m = fn(tf.constant(image[None]), tf.constant(mask[None]), _seed(s, 3))
        out_i, out_m = out_i.numpy()[0], out_m.numpy()[0]
        redrawn = (out_i[..., :1] > 127).astype(np.float32)
        # Bilinear image vs nearest mask: they may disagree only along block borders.
        assert np.mean(redrawn != out_m) < 0.03, s
        changed += np.mean(out_m != mask) > 0.1
    assert changed >= 4  # the transforms really moved the content


def test_xla_warp_matches_tensorflow_kernel() -> None:
    """The fused gather warp (XLA) and ImageProjectiveTransformV3 agree for one matrix."""
    rng = np.random.default_rng(6)
    image = tf.constant(_blocky_image(rng, 48)[None])
    mask = tf.cast(image[..., :1] > 127, tf.float32)
    a, b = np.cos(0.4) / 1.1, np.sin(0.4) / 1.1
    matrix = [a, b, 3.0, -b, a, -2.0]  # rotate, zoom and shift
    compiled = tf.function(
        lambda i, m: warp(i, m, [tf.constant(v, tf.float32) for v in matrix]), jit_compile=True
    )
    out_img, out_mask = compiled(image, mask)
    ref = [
        tf.raw_ops.ImageProjectiveTransformV3(
            images=x,
            transforms=tf.constant([[*matrix, 0.0, 0.0]], tf.float32),
            output_shape=[48, 48],
            fill_value=0.0,
            interpolation=method,
            fill_mode="REFLECT",
        ).numpy()
        for x, method in ((image, "BILINEAR"), (mask, "NEAREST"))
    ]
    inner = np.s_[:, 6:-6, 6:-6]  # the two reflect conventions differ by a pixel at the edge
    assert np.abs(out_img.numpy() - ref[0])[inner].max() < 0.05
    assert np.mean(out_mask.numpy()[inner] != ref[1][inner]) < 0.01
    assert np.abs(out_img.numpy() - image.numpy()).mean() > 5  # it did move


def test_image_only_ops_change_the_image_only() -> None:
    assert {op.type for op in IMAGE_ONLY} == {n for n, c in OPS.items() if c.targets == "image"}
    rng = np.random.default_rng(2)
    image = _blocky_image(rng, 32)
    mask = (image[..., :1] > 127).astype(np.float32)
    for op in IMAGE_ONLY:
        out_i, out_m = _run([op], image, mask, _seed(5))
        np.testing.assert_array_equal(out_m, mask, err_msg=op.type)
        assert np.abs(out_i - image).mean() > 0.5, op.type


def test_image_only_ops_after_the_compiled_run_clip_and_leave_the_mask() -> None:
    """The finish (clip, mask threshold) runs inside the last XLA call when only
    image-only ops follow it; those then clip their own output."""
    rng = np.random.default_rng(4)
    image = _blocky_image(rng, 32)
    mask = (image[..., :1] > 127).astype(np.float32)
    affine = Affine(scale=0.2, degrees=30.0, p=1.0)
    tail = [Brightness(factor=1.0, p=1.0), Noise(std=80.0, p=1.0), Saturation(factor=0.9, p=1.0)]
    moved_only = _run([affine], image, mask, _seed(8), jit=True)[1]
    for ops in ([affine, *tail], [affine, tail[0], tail[2], tail[1]]):
        out_i, out_m = _run(ops, image, mask, _seed(8), jit=True)
        assert out_i.min() >= 0.0 and out_i.max() <= 255.0
        assert (out_i == 0.0).any() or (out_i == 255.0).any()  # the ops did leave 0..255
        np.testing.assert_array_equal(out_m, moved_only)  # only the affine moved it


@pytest.mark.parametrize("name", sorted(OPS))
def test_every_declared_op_has_a_kernel(name: str) -> None:
    op = OPS[name]()
    assert op.type == name and op.targets in ("image", "image+mask")
    fn = build_kernel(op, compiled=False)
    image, mask = tf.zeros([1, 32, 32, 3]), tf.zeros([1, 32, 32, 1])
    out_i, out_m = fn(image, mask, _seed(1))
    assert out_i.shape == image.shape and out_m.shape == mask.shape


def test_flip_with_p1_always_flips_and_p0_never() -> None:
    image = np.arange(4 * 6 * 3, dtype=np.float32).reshape(4, 6, 3)
    mask = (np.arange(24).reshape(4, 6, 1) % 5 == 0).astype(np.float32)
    always = tf.function(build_pipeline([Flip(p=1.0)]))  # XLA-compiled
    never = build_pipeline([Flip(p=0.0)], jit=False)
    for s in range(4):
        out_i, out_m = always(tf.constant(image[None]), tf.constant(mask[None]), _seed(s))
        np.testing.assert_array_equal(out_i.numpy()[0], image[:, ::-1])
        np.testing.assert_array_equal(out_m.numpy()[0], mask[:, ::-1])
        out_i, _ = never(tf.constant(image[None]), tf.constant(mask[None]), _seed(s))
        np.testing.assert_array_equal(out_i.numpy()[0], image)


def test_same_seed_same_result_other_seed_other_result(default_fn: Any) -> None:
    rng = np.random.default_rng(3)
    image = tf.constant(_blocky_image(rng, 32)[None])
    mask = tf.constant((rng.random((1, 32, 32, 1)) > 0.5).astype(np.float32))
    a = default_fn(image, mask, _seed(7, 1))
    b = default_fn(image, mask, _seed(7, 1))
    np.testing.assert_array_equal(a[0].numpy(), b[0].numpy())
    outs = [default_fn(image, mask, _seed(7, k))[0].numpy() for k in range(2, 6)]
    assert all(not np.array_equal(outs[0], o) for o in outs[1:])


def test_per_group_pipelines_apply_to_the_right_group() -> None:
    cfg = AugmentConfig(
        default=[{"type": "flip", "mode": "vertical", "p": 1.0}],  # as YAML gives it
        groups={"b": "none", "c": [Flip(p=1.0)]},
    )
    aug = tf.function(build_augmenter(cfg, ["a", "b", "c", "d"]))
    image = np.arange(4 * 6 * 3, dtype=np.float32).reshape(4, 6, 3)
    mask = (image[..., :1] % 7 == 0).astype(np.float32)
    expected = {0: image[::-1], 1: image, 2: image[:, ::-1], 3: image[::-1]}
    for group, want in expected.items():
        out_i, out_m = aug(tf.constant(image), tf.constant(mask), tf.constant(group), _seed(1))
        np.testing.assert_array_equal(out_i.numpy(), want, err_msg=str(group))
        np.testing.assert_array_equal(out_m.numpy()[..., 0], (want[..., 0] % 7 == 0))


def test_nothing_to_augment_gives_none() -> None:
    assert build_augmenter(AugmentConfig(engine="none"), ["0"]) is None
    assert build_augmenter(AugmentConfig(default="none"), ["0", "1"]) is None
    assert build_augmenter(AugmentConfig(default="none", groups={"1": "default"}), ["0", "1"])


def test_default_covers_the_tutorial_ops() -> None:
    ops = {op.type: op for op in DEFAULT_OPS}
    assert {"flip", "affine", "noise", "blur", "brightness", "contrast", "hue"} <= set(ops)
    assert isinstance(ops["affine"], Affine)
    assert ops["affine"].scale == 0.2 and ops["affine"].degrees == 30
    assert get_op("rotate") is Rotate
    with pytest.raises(UserError, match="did you mean 'rotate'"):
        get_op("rotat")


def test_groups_not_in_the_data_are_a_user_error() -> None:
    # The one augment error load_config cannot see: it needs the manifest's groups.
    with pytest.raises(UserError, match="7.*Valid groups: 0, 1"):
        build_augmenter(AugmentConfig(groups={"7": "none"}), ["0", "1"])


def test_albumentations_missing_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "albumentations", None)  # import now fails
    cfg = AugmentConfig(engine="albumentations", albumentations_file=str(tmp_path / "a.json"))
    with pytest.raises(UserError, match=r"segbalance\[albumentations\]"):
        build_augmenter(cfg, ["0"])


def test_albumentations_engine_moves_mask_and_is_seeded(tmp_path: Path) -> None:
    """Runs the engine where the optional extra is installed; else checks the error."""
    cfg = AugmentConfig(engine="albumentations", albumentations_file=str(tmp_path / "a.json"))
    try:
        import albumentations as A
    except ImportError:
        with pytest.raises(UserError, match="albumentations"):
            build_augmenter(cfg, ["0"])
        return
    A.save(A.Compose([A.HorizontalFlip(p=1.0), A.GaussNoise(p=1.0)]), tmp_path / "a.json")
    aug = tf.function(build_augmenter(cfg, ["0"]))
    rng = np.random.default_rng(4)
    image = tf.constant(_blocky_image(rng, 32))
    mask = tf.constant((rng.random((32, 32, 1)) > 0.5).astype(np.float32))
    i1, m1 = aug(image, mask, tf.constant(0), _seed(9))
    i2, _ = aug(image, mask, tf.constant(0), _seed(9))
    i3, _ = aug(image, mask, tf.constant(0), _seed(10))
    np.testing.assert_array_equal(m1.numpy(), mask.numpy()[:, ::-1])
    np.testing.assert_array_equal(i1.numpy(), i2.numpy())
    assert not np.array_equal(i1.numpy(), i3.numpy())
    (tmp_path / "bad.json").write_text(json.dumps({"nope": 1}))
    bad = AugmentConfig(engine="albumentations", albumentations_file=str(tmp_path / "bad.json"))
    with pytest.raises(UserError, match="bad.json"):
        build_augmenter(bad, ["0"])
