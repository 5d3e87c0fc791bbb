"""TensorBoard images: fixed validation images per group, prediction and true contour."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

from segbalance.config import load_config
from segbalance.train import train
from segbalance.train.images import CONTOUR, contour, overlay, write_images


def _events(log_dir: Path) -> dict[str, list[tuple[int, object]]]:
    """tag -> [(step, tensor proto)] of every event file under ``log_dir``."""
    found: dict[str, list[tuple[int, object]]] = {}
    for path in sorted(log_dir.glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                plugin = value.metadata.plugin_data.plugin_name
                if plugin == "images":
                    found.setdefault(value.tag, []).append((event.step, value.tensor))
    return found


def test_contour_and_overlay() -> None:
    mask = np.zeros((8, 8), np.float32)
    mask[2:6, 2:6] = 1
    edge = contour(mask)
    assert edge.sum() == 12 and not edge[3:5, 3:5].any()  # the ring of a 4x4 square
    image = np.full((8, 8, 3), 100.0, np.float32)
    predicted = np.zeros((8, 8), bool)
    predicted[0, 0] = True
    out = overlay(image, predicted, mask)
    assert out.dtype == np.uint8 and out[0, 0, 0] > 100 and out[0, 0, 1] < 100
    assert (out[2, 2] == CONTOUR.astype(np.uint8)).all() and (out[7, 7] == 100).all()


def test_written_as_tf_summary_image_would(tmp_path: Path) -> None:
    writer = tf.summary.create_file_writer(str(tmp_path))
    images = [np.full((4, 6, 3), v, np.uint8) for v in (0, 200)]
    write_images(writer, "group_images/0", 3, images)
    writer.close()
    (step, tensor), *_ = _events(tmp_path)["group_images/0"]
    strings = tf.make_ndarray(tensor)
    assert step == 3 and strings[0] == b"6" and strings[1] == b"4" and len(strings) == 4
    decoded = tf.io.decode_png(strings[3]).numpy()
    assert decoded.shape == (4, 6, 3) and (decoded == 200).all()


def test_every_epoch_writes_each_groups_images(synth_manifest: Path, tmp_path: Path) -> None:
    cfg = load_config(
        None,
        {
            "data.manifest": str(synth_manifest),
            "data.image_size": 32,
            "data.epoch_length": 8,
            "model.name": "unet-small",
            "model.encoder_weights": "none",
            "model.decoder_filters": [16, 8, 8, 8, 8],
            "train.epochs": 2,
            "train.batch_size": 4,
            "augment.jit": False,  # XLA-compiling the augmentation costs more than it saves
        },
    )
    run = train(cfg, tmp_path / "run")
    found = _events(run.work_dir / "logs")
    groups = sorted({g for g in run.history[0] if g.startswith("iou_")})
    assert sorted(found) == sorted(f"group_images/{g[4:]}" for g in groups)
    for entries in found.values():
        assert [step for step, _ in entries] == [1, 2]  # the steps of the group_iou scalars
        strings = tf.make_ndarray(entries[0][1])
        assert strings[0] == b"32" and 3 <= len(strings) <= 5  # 1..3 images of 32 px
