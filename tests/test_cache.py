"""data.cache_decoded: decoded rows in memory give the batches the file path gives.

``synth_manifest`` is the shared synthetic data set of conftest.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from segbalance.config import AugmentConfig, load_config
from segbalance.data.manifest import Manifest, read_manifest
from segbalance.errors import UserError
from segbalance.pipeline import DecodedCache, build_eval_dataset, build_train_dataset


def _batches(rows: Manifest, cache: DecodedCache | None, augment: AugmentConfig) -> list:
    idx = np.arange(len(rows))[::-1]  # plan order differs from row order on purpose
    ds = build_train_dataset(
        rows,
        idx,
        np.arange(len(rows)),
        image_size=(64, 64),
        batch_size=2,
        augment=augment,
        seed=5,
        epoch=1,
        cache=cache,
    )
    return list(ds.as_numpy_iterator())


# Cheap, un-compiled ops: the default list's XLA compile would dominate this file's time.
OPS = [
    {"type": "flip", "mode": "horizontal", "p": 0.5},
    {"type": "affine", "scale": 0.2, "degrees": 30.0, "p": 0.5},
    {"type": "brightness", "factor": 0.2, "p": 0.5},
]


@pytest.mark.parametrize("augment", ["none", OPS])
def test_cached_batches_equal_decoded_batches(synth_manifest: Path, augment) -> None:
    rows = read_manifest(synth_manifest)
    cfg = AugmentConfig(default=augment, jit=False)
    cache = DecodedCache.build(rows, (64, 64))
    assert cache.images.dtype == np.uint8 and cache.images.shape == (len(rows), 64, 64, 3)
    assert cache.nbytes == len(rows) * 64 * 64 * 4
    plain, cached = _batches(rows, None, cfg), _batches(rows, cache, cfg)
    assert len(plain) == len(cached)
    for a, b in zip(plain, cached, strict=True):
        np.testing.assert_array_equal(a["index"], b["index"])
        np.testing.assert_array_equal(a["group"], b["group"])
        # cached pixels are rounded to whole grey levels; augmentation then moves both alike
        assert np.abs(a["image"] - b["image"]).max() <= 1.0
        assert set(np.unique(b["mask"])) <= {0.0, 1.0}
        assert np.mean(a["mask"] != b["mask"]) < 0.01


def test_cache_holds_the_evaluation_decode_rounded(synth_manifest: Path) -> None:
    rows = read_manifest(synth_manifest).select(split="valid")
    cache = DecodedCache.build(rows, (64, 64), batch_size=3)
    batches = list(build_eval_dataset(rows, image_size=(64, 64), batch_size=4))
    images = np.concatenate([b["image"].numpy() for b in batches])
    masks = np.concatenate([b["mask"].numpy() for b in batches])
    np.testing.assert_array_equal(cache.images, np.clip(np.rint(images), 0, 255))
    np.testing.assert_array_equal(cache.masks, masks > 0.5)


def test_cache_of_another_manifest_is_refused(synth_manifest: Path) -> None:
    rows = read_manifest(synth_manifest)
    cache = DecodedCache.build(rows.select(split="valid"), (64, 64))
    with pytest.raises(UserError, match="build the cache from the same manifest"):
        _batches(rows, cache, AugmentConfig(default="none"))


def test_training_with_cache_decoded(synth_manifest: Path, tmp_path: Path, capsys) -> None:
    from segbalance.train import train

    cfg = load_config(
        None,
        {
            "data.manifest": str(synth_manifest),
            "data.image_size": 64,
            "data.epoch_length": 6,
            "data.cache_decoded": True,
            "model.decoder_filters": [32, 16, 8, 8, 8],
            "model.encoder_weights": "none",
            "train.batch_size": 2,
            "train.epochs": 1,
        },
    )
    result = train(cfg, tmp_path / "run")
    assert result.epochs_completed == 1
    assert "cached" in capsys.readouterr().out
    assert (tmp_path / "run" / "best.keras").is_file()
