"""augment.device: augmentation in the train step gives the pipeline's batches (binary and
multiclass, per-group op lists, XLA, MirroredStrategy), the choice and its refusals, and a
run in either placement (resumed or not) trains the same."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from test_reliability_resume import Stop, StopAtEpoch

from segbalance.classes import IGNORE_INDEX, ClassSet
from segbalance.config import AugmentConfig, LossConfig, OptimizerConfig, load_config
from segbalance.data.manifest import Manifest
from segbalance.errors import UserError
from segbalance.losses import get_loss
from segbalance.pipeline import DecodedCache, build_train_dataset, sample_seed
from segbalance.pipeline.augment import build_augmenter
from segbalance.pipeline.deferred import SEED, batch_augmenter
from segbalance.train import schedule, steps, train
from segbalance.train.device_augment import choose_placement

SIZE = (32, 32)
GROUPS = ("g0", "g1", "g2")
# Every kind of op: XLA runs (flip, affine, photometric), Keras layers, noise; one group
# with its own list (constant fill: opened borders) and one with none.
OPS: dict[str, Any] = {
    "default": [
        {"type": "flip", "p": 0.5},
        {"type": "affine", "degrees": 30, "scale": 0.2, "translate": 0.1, "p": 0.9},
        {"type": "brightness", "factor": 0.2, "p": 0.8},
        {"type": "noise", "std": 10.0, "p": 0.7},
        {"type": "contrast", "factor": 0.3, "p": 0.8},
    ],
    "groups": {
        "g1": [
            {"type": "rotate", "degrees": 40, "fill_mode": "constant", "p": 0.9},
            {"type": "saturation", "factor": 0.5, "p": 0.9},
            {"type": "blur", "p": 0.5},
            {"type": "hue", "factor": 0.2, "p": 0.9},
        ],
        "g2": "none",
    },
}
SPEC = ClassSet.model_validate(
    {
        "classes": [
            {"name": "background", "value": 0},
            {"name": "nail", "value": 100},
            {"name": "skin", "value": 200},
        ],
        "ignore": 255,
    }
)
PLAN = np.array([4, 0, 8, 1, 1, 5, 3, 7, 2, 6, 0, 2])  # repeats allowed, any order
POS = np.arange(len(PLAN))


def _write(root: Path, multiclass: bool) -> Manifest:
    """9 rows in 3 groups, sizes that differ (the resize makes them batchable)."""
    rng = np.random.default_rng(0)
    cols: dict[str, list[Any]] = {k: [] for k in ("image", "mask", "group", "height")}
    for i in range(9):
        group, h = GROUPS[i % 3], 40 + 2 * i
        for sub in ("Images", "Masks"):
            (root / sub / group).mkdir(parents=True, exist_ok=True)
        img = rng.integers(0, 256, (h, 36, 3), dtype=np.uint8)
        if multiclass:  # class values with an ignored stripe
            mask = np.array([0, 100, 200], np.uint8)[img[..., 1] // 86]
            mask[:3] = 255
        else:
            mask = ((img[..., 1] > 127) * 255).astype(np.uint8)
        Image.fromarray(img).save(root / "Images" / group / f"{i}.png")
        Image.fromarray(mask).save(root / "Masks" / group / f"{i}.png")
        for key, value in zip(
            cols, (f"Images/{group}/{i}.png", f"Masks/{group}/{i}.png", group, h), strict=True
        ):
            cols[key].append(value)
    extra: dict[str, Any] = {"mask_rule": ["0/255"] * 9}
    if multiclass:
        cover = np.full((9, 3), 1 / 3)
        extra = {"mask_rule": ["class-value"] * 9, "classes": SPEC, "class_coverage": cover}
    return Manifest(
        root=root, split=["train"] * 9, width=[36] * 9, coverage=[0.5] * 9, **cols, **extra
    )


@pytest.fixture(scope="module", params=["binary", "multiclass"])
def manifest(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Manifest:
    return _write(tmp_path_factory.mktemp(request.param), request.param == "multiclass")


def _dataset(m: Manifest, augment: AugmentConfig, **kw: Any) -> tf.data.Dataset:
    return build_train_dataset(
        m, PLAN, POS, image_size=SIZE, batch_size=4, augment=augment, seed=3, epoch=1, **kw
    )


def _in_step(m: Manifest, augment: AugmentConfig, **kw: Any) -> list[dict[str, np.ndarray]]:
    """The deferred batches, augmented as the train step augments them (a tf.function)."""
    classes = 1 if m.classes is None else m.classes.num_classes
    fn = tf.function(batch_augmenter(build_augmenter(augment, m.groups, classes)), autograph=False)
    return [{k: v.numpy() for k, v in fn(b).items()} for b in _dataset(m, augment, **kw)]


def _pipeline(m: Manifest, augment: AugmentConfig, **kw: Any) -> list[dict[str, np.ndarray]]:
    return [{k: v.numpy() for k, v in b.items()} for b in _dataset(m, augment, **kw)]


def _same(a: list[dict[str, np.ndarray]], b: list[dict[str, np.ndarray]]) -> None:
    assert len(a) == len(b) and all(x.keys() == y.keys() for x, y in zip(a, b, strict=True))
    for x, y in zip(a, b, strict=True):
        assert x["image"].dtype == y["image"].dtype == np.float32
        np.testing.assert_allclose(x["image"], y["image"], atol=1e-3)
        np.testing.assert_array_equal(x["mask"], y["mask"])
        np.testing.assert_array_equal(x["group"], y["group"])


@pytest.mark.parametrize("jit", [False, pytest.param(True, marks=pytest.mark.heavy)])
def test_both_placements_give_the_same_batches_from_cached_rows(
    manifest: Manifest, jit: bool
) -> None:
    augment = AugmentConfig.model_validate({**OPS, "jit": jit})
    cache = DecodedCache.build(manifest, SIZE)
    pipeline = _pipeline(manifest, augment, cache=cache)
    in_step = _in_step(manifest, augment, cache=cache, defer_augment=True)
    _same(pipeline, in_step)
    unaugmented = _pipeline(manifest, AugmentConfig(engine="none"), cache=cache)
    images = [b["image"] for b in unaugmented], [b["image"] for b in in_step]
    assert not np.allclose(np.concatenate(images[0]), np.concatenate(images[1]))  # augmented
    masks = np.concatenate([b["mask"] for b in in_step])
    allowed = {0.0, 1.0} if manifest.classes is None else {0.0, 1.0, 2.0, float(IGNORE_INDEX)}
    assert set(np.unique(masks)) <= allowed


def test_streamed_rows_go_out_as_uint8_with_their_seeds(manifest: Manifest) -> None:
    augment = AugmentConfig.model_validate({**OPS, "jit": False})
    deferred = _pipeline(manifest, augment, defer_augment=True)
    plain = _pipeline(manifest, AugmentConfig(engine="none"))
    for sent, decoded, start in zip(deferred, plain, range(0, len(PLAN), 4), strict=True):
        assert sent["image"].dtype == sent["mask"].dtype == np.uint8
        # Rounded as the cache rounds (half a grey level at most); masks exact.
        assert np.abs(sent["image"] - decoded["image"]).max() <= 0.5 + 1e-4
        np.testing.assert_array_equal(sent["mask"], decoded["mask"])
        seeds = [sample_seed(3, 1, p).numpy() for p in POS[start : start + 4]]
        np.testing.assert_array_equal(sent[SEED], np.stack(seeds))
    # Streamed and augmented in the step: the pipeline's batches of the same (cached) rows.
    cache = DecodedCache.build(manifest, SIZE)
    _same(
        _pipeline(manifest, augment, cache=cache), _in_step(manifest, augment, defer_augment=True)
    )


def _model_and_step(jit: bool, augment: Any = None) -> tuple[keras.Model, Any]:
    keras.utils.set_random_seed(1)
    inputs = keras.Input((*SIZE, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(x)
    model = keras.Model(inputs, keras.layers.Conv2D(1, 3, padding="same")(x))
    opt = schedule.build_optimizer(OptimizerConfig(lr=0.01, schedule="constant"), 1, 1, "float32")
    opt.build(model.trainable_variables)
    steps.own_gradient_reduction(opt)
    strategy = tf.distribute.get_strategy()
    loss = get_loss(LossConfig(name="bce"))
    step = steps.make_train_step(
        strategy, model, opt, loss, 4, 0.5, jit_compile=jit, augment=augment
    )
    return model, step


@pytest.mark.parametrize("jit", [False, pytest.param(True, marks=pytest.mark.heavy)])
def test_train_step_augmenting_equals_pipeline_augmentation(tmp_path: Path, jit: bool) -> None:
    """train.jit_compile: the step's XLA program; augment.jit the op chains' (as given)."""
    m = _write(tmp_path, multiclass=False)
    augment = AugmentConfig.model_validate({**OPS, "jit": jit})
    cache = DecodedCache.build(m, SIZE)  # the same pixels for both
    model_a, step_a = _model_and_step(jit)
    losses_a = [float(step_a(b)[0]) for b in _dataset(m, augment, cache=cache)]
    fn = batch_augmenter(build_augmenter(augment, m.groups))
    model_b, step_b = _model_and_step(jit, fn)
    deferred = _dataset(m, augment, cache=cache, defer_augment=True)
    losses_b = [float(step_b(b)[0]) for b in deferred]
    assert losses_a == pytest.approx(losses_b, rel=1e-4)
    for a, b in zip(model_a.get_weights(), model_b.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


# --------------------------------------------------------------------------- the choice
def test_auto_is_the_step_with_a_gpu_and_the_pipeline_without() -> None:
    cfg = AugmentConfig()
    with_gpu = choose_placement(cfg, ["0"], has_gpu=True)
    assert with_gpu.on_device and with_gpu.step is not None and with_gpu.device == "accelerator"
    assert (
        with_gpu.note == "augmentation: in the train step, on the accelerator (auto: GPU present)"
    )
    without = choose_placement(cfg, ["0"], has_gpu=False)
    assert (without.on_device, without.step, without.device) == (False, None, "cpu")
    assert without.note == "augmentation: in the input pipeline (auto: no GPU)"
    forced = choose_placement(AugmentConfig(device="accelerator"), ["0"], has_gpu=False)
    assert forced.on_device and "on the CPU (no GPU)" in forced.note
    assert not choose_placement(AugmentConfig(device="cpu"), ["0"], has_gpu=True).on_device
    # A resume augments where it started, whatever this machine has.
    resumed = choose_placement(cfg, ["0"], has_gpu=False, recorded="accelerator")
    assert resumed.on_device and "as the run started" in resumed.note


def test_nothing_to_augment_is_nothing_to_defer() -> None:
    for cfg in (
        AugmentConfig(engine="none", device="accelerator"),
        AugmentConfig(default="none", groups={"a": "none"}, device="accelerator"),
    ):
        placement = choose_placement(cfg, ["a", "b"], has_gpu=True)
        assert not placement.on_device and placement.note == "augmentation: none"


def test_albumentations_stays_on_the_cpu(tmp_path: Path) -> None:
    file = str(tmp_path / "a.json")
    auto = AugmentConfig(engine="albumentations", albumentations_file=file)
    placement = choose_placement(auto, ["0"], has_gpu=True)
    assert not placement.on_device and "albumentations runs on the CPU" in placement.note
    keys = {"augment.engine": "albumentations", "augment.albumentations_file": file}
    with pytest.raises(UserError, match="augment.device 'accelerator' cannot run"):
        load_config(None, {**keys, "augment.device": "accelerator"})
    built = auto.model_copy(update={"device": "accelerator"})  # skips load's check
    with pytest.raises(UserError, match="set augment.device to cpu or auto"):
        choose_placement(built, ["0"], has_gpu=True)
    with pytest.raises(UserError, match="augment.device='gpu'"):
        load_config(None, {"augment.device": "gpu"})


# --------------------------------------------------------------------------- runs
TINY = {
    "data.image_size": 32,
    "data.epoch_length": 8,
    "model.decoder_filters": [16, 8, 8, 8, 8],
    "train.batch_size": 2,
    "train.epochs": 2,
    "train.precision": "float32",
    "augment.jit": False,  # XLA-compiling the augmentation costs more than it saves here
}
COLUMNS = ("loss", "val_loss", "iou", "val_iou", "mean_group_iou")


def _run(manifest: Path, work: Path, device: str, **extra: Any) -> Any:
    cfg = load_config(None, {**TINY, "data.manifest": str(manifest), "augment.device": device})
    return train(cfg, work, **extra)


def _history(result: Any) -> np.ndarray:
    return np.array([[row[c] for c in COLUMNS] for row in result.history], np.float64)


@pytest.mark.heavy
def test_a_run_trains_the_same_in_both_placements_and_resumes_exactly(
    synth_manifest: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Three trainings, not four: the step-augmented run is stopped after epoch 1 and
    # resumed, and the whole of it must match the pipeline-augmented run. (Resume equals
    # no stop exactly is the stateless seeds' property, tested for every run in test_resume.)
    cpu = _run(synth_manifest, tmp_path / "cpu", "cpu")
    assert "augmentation: in the input pipeline (augment.device cpu)" in capsys.readouterr().out
    with pytest.raises(Stop):
        _run(synth_manifest, tmp_path / "step", "accelerator", callbacks=[StopAtEpoch(1)])
    assert "augmentation: in the train step, on the CPU (no GPU)" in capsys.readouterr().out
    step = _run(synth_manifest, tmp_path / "step", "accelerator", resume=True)
    assert "as the run started, data.json" in capsys.readouterr().out
    # Float tolerance: the epochs drift by float rounding (the pipeline's and the step's
    # reductions run on other threads), so an IoU may flip a pixel or two.
    np.testing.assert_allclose(_history(cpu)[:, :2], _history(step)[:, :2], rtol=1e-4)
    np.testing.assert_allclose(_history(cpu)[:, 2:], _history(step)[:, 2:], atol=1e-3)
    metrics = json.loads((tmp_path / "step" / "metrics.json").read_text())
    assert metrics["augment_device"] == "accelerator"
    assert json.loads((tmp_path / "step" / "data.json").read_text())["augment_device"] == (
        "accelerator"
    )


MIRROR_SCRIPT = """
import json, sys, numpy as np
from segbalance.config import load_config
from segbalance.train import train
cfg = dict(json.loads(sys.argv[1]))
rows = {}
for device in ("cpu", "accelerator"):
    over = {**cfg, "augment.device": device, "distribute.devices": "cpu:2"}
    result = train(load_config(None, over), sys.argv[2] + "/" + device)
    rows[device] = [[r["loss"], r["val_loss"]] for r in result.history]
    replicas = json.loads(open(sys.argv[2] + "/" + device + "/metrics.json").read())["replicas"]
print(json.dumps({"rows": rows, "replicas": replicas}))
"""


@pytest.mark.heavy
def test_two_replicas_augment_their_shares_in_the_step(
    synth_manifest: Path, tmp_path: Path
) -> None:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    cfg = {**TINY, "data.manifest": str(synth_manifest), "train.epochs": 1}
    proc = subprocess.run(
        [sys.executable, "-c", MIRROR_SCRIPT, json.dumps(cfg), str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["replicas"] == 2
    np.testing.assert_allclose(out["rows"]["cpu"], out["rows"]["accelerator"], rtol=1e-4)


def test_a_run_recorded_before_the_key_resumes_in_the_pipeline(tmp_path: Path) -> None:
    from segbalance.train.device_augment import RECORD, recorded_device

    assert recorded_device(tmp_path) is None  # nothing recorded: a new run decides
    (tmp_path / "data.json").write_text(json.dumps({"train": {}}))
    assert recorded_device(tmp_path) == "cpu"  # it augmented in the pipeline: keep it there
    (tmp_path / "data.json").write_text(json.dumps({RECORD: "accelerator"}))
    assert recorded_device(tmp_path) == "accelerator"
