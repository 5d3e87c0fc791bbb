"""Precision: what ``auto`` picks, explicit policies, and a train step under each policy."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from segbalance.config import LossConfig, OptimizerConfig
from segbalance.errors import UserError
from segbalance.losses import get_loss
from segbalance.train import precision, schedule, steps

X86 = "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu sse avx2 {extra}\n\n"
ARM = "processor\t: 0\nFeatures\t: fp asimd {extra}\n"


@pytest.mark.parametrize(
    ("has_gpu", "flags", "expected"),
    [
        (True, set(), "mixed_float16"),
        (True, {"amx_bf16"}, "mixed_float16"),  # a GPU wins over CPU bf16
        (False, {"avx2", "avx512_bf16"}, "mixed_bfloat16"),
        (False, {"avx2", "amx_bf16", "amx_tile"}, "mixed_bfloat16"),
        (False, {"avx2", "avx512f", "avx512_vnni"}, "float32"),  # AVX-512 without bf16
        (False, set(), "float32"),
    ],
)
def test_auto_follows_the_hardware(has_gpu: bool, flags: set[str], expected: str) -> None:
    assert precision.resolve_precision("auto", has_gpu=has_gpu, cpu_flags=flags) == expected
    assert precision.resolve_precision("auto", has_gpu=lambda: has_gpu, cpu_flags=flags) == expected


@pytest.mark.parametrize("name", precision.POLICIES)
def test_an_explicit_policy_overrides_auto(name: str) -> None:
    probe_called = []
    got = precision.resolve_precision(name, has_gpu=lambda: probe_called.append(1) or True)
    assert got == name and not probe_called


def test_unknown_precision_is_a_user_error() -> None:
    with pytest.raises(UserError, match="float8"):
        precision.resolve_precision("float8")
    with pytest.raises(UserError, match="bfloat"):
        precision.apply_precision("bfloat")


def test_cpu_flags_are_read_from_cpuinfo(tmp_path: Path) -> None:
    x86, arm = tmp_path / "x86", tmp_path / "arm"
    x86.write_text(X86.format(extra="amx_bf16") + X86.format(extra=""))
    arm.write_text(ARM.format(extra="bf16"))
    assert "amx_bf16" in precision.read_cpu_flags(x86)
    assert precision.cpu_supports_bf16(precision.read_cpu_flags(x86))
    assert precision.read_cpu_flags(arm) == {"fp", "asimd", "bf16"}
    assert precision.read_cpu_flags(tmp_path / "missing") == set()
    assert not precision.cpu_supports_bf16(set())


def test_auto_on_this_machine_matches_its_cpu_flags() -> None:
    # CUDA_VISIBLE_DEVICES="" (conftest): no GPU, so the CPU decides.
    flags = precision.read_cpu_flags()
    has_bf16 = bool(flags & {"avx512_bf16", "amx_bf16"})
    expected = "mixed_bfloat16" if has_bf16 else "float32"
    assert precision.resolve_precision("auto", has_gpu=False) == expected
    assert precision.resolve_precision("auto") == expected
    assert expected in precision.describe(expected, "auto")


@pytest.fixture
def restore_policy():
    yield
    keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("policy", precision.POLICIES)
def test_a_train_step_under_each_policy(policy: str, restore_policy) -> None:
    precision.apply_precision(policy)
    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="body")(x)
    model = keras.Model(inputs, keras.layers.Conv2D(1, 3, padding="same", dtype="float32")(x))
    opt = schedule.build_optimizer(OptimizerConfig(lr=0.01), 10, 1, policy)
    assert isinstance(opt, keras.optimizers.LossScaleOptimizer) == (policy == "mixed_float16")
    opt.build(model.trainable_variables)
    steps.own_gradient_reduction(opt)
    loss_fn = get_loss(LossConfig(name="bce"))
    step = steps.make_train_step(tf.distribute.get_strategy(), model, opt, loss_fn, 2, 0.5)
    rng = np.random.default_rng(0)
    image = tf.constant(rng.uniform(0, 255, (2, 32, 32, 3)), tf.float32)
    batch = {"image": image, "mask": tf.cast(image[..., :1] > 127, tf.float32)}

    body = model.get_layer("body")
    compute = {"float32": "float32", "mixed_float16": "float16", "mixed_bfloat16": "bfloat16"}
    assert body.compute_dtype == compute[policy] and body.kernel.dtype == "float32"
    assert model(image).dtype == tf.float32  # logits stay float32
    before = body.kernel.numpy().copy()
    losses = [float(step(batch)[0]) for _ in range(3)]
    assert all(np.isfinite(losses))
    assert not np.allclose(before, body.kernel.numpy())  # loss scaling did not skip every step


BF16 = {"avx2", "avx512_bf16"}


def _probe(seconds: dict[str, float]) -> tuple[list[str], object]:
    calls: list[str] = []

    def measure(policies: list[str]) -> dict[str, float]:
        calls.extend(policies)
        return {p: seconds[p] for p in policies}

    return calls, measure


@pytest.mark.parametrize(
    ("bf16_s", "expected", "note"),
    [
        (1.0 / 1.48, "mixed_bfloat16", "auto precision: mixed_bfloat16 (1.48x float32, measured)"),
        (1.0 / 0.95, "float32", "auto precision: float32 (mixed_bfloat16 0.95x float32, measured)"),
        (1.0 / 1.05, "float32", "1.05x float32"),  # under MIN_SPEEDUP: not worth the numerics
    ],
)
def test_auto_on_a_bf16_cpu_measures_both(
    tmp_path: Path, bf16_s: float, expected: str, note: str
) -> None:
    calls, measure = _probe({"float32": 1.0, "mixed_bfloat16": bf16_s})
    cache = tmp_path / precision.PROBE_FILE
    got = precision.choose_precision(
        "auto", measure=measure, cache=cache, key="k", has_gpu=False, cpu_flags=BF16
    )
    assert (got.policy, sorted(calls)) == (expected, ["float32", "mixed_bfloat16"])
    assert note in got.note
    assert precision.read_probe(cache, "k") == pytest.approx(1.0 / bf16_s)


def test_a_cached_probe_is_reused_per_key(tmp_path: Path) -> None:
    cache = tmp_path / precision.PROBE_FILE
    precision.write_probe(cache, "cpu | unet-small", {"float32": 1.5, "mixed_bfloat16": 1.0})
    calls, measure = _probe({"float32": 1.0, "mixed_bfloat16": 2.0})
    kw = {"measure": measure, "cache": cache, "has_gpu": False, "cpu_flags": BF16}
    again = precision.choose_precision("auto", key="cpu | unet-small", **kw)
    assert again.policy == "mixed_bfloat16" and not calls  # a resume: no second probe
    assert "1.50x float32, measured, cached in precision.json" in again.note
    other = precision.choose_precision("auto", key="cpu | efficientnetb4", **kw)
    assert other.policy == "float32" and len(calls) == 2
    assert precision.read_probe(cache, "cpu | unet-small") == pytest.approx(1.5)  # kept
    cache.write_text("{not json")
    assert precision.read_probe(cache, "cpu | unet-small") is None  # damaged: measure again


@pytest.mark.parametrize(
    ("requested", "has_gpu", "flags", "steps", "expected"),
    [
        ("auto", True, BF16, 10_000, "mixed_float16"),
        ("auto", False, {"avx2"}, 10_000, "float32"),  # emulated bf16: never probed
        ("auto", False, BF16, precision.PROBE_MIN_STEPS - 1, "float32"),  # too short to pay
        ("mixed_bfloat16", False, {"avx2"}, 10_000, "mixed_bfloat16"),  # explicit: as given
    ],
)
def test_no_probe_where_it_cannot_change_the_choice(
    requested: str, has_gpu: bool, flags: set[str], steps: int, expected: str
) -> None:
    calls, measure = _probe({"float32": 1.0, "mixed_bfloat16": 0.1})
    got = precision.choose_precision(
        requested, measure=measure, steps=steps, has_gpu=has_gpu, cpu_flags=flags
    )
    assert got.policy == expected and not calls


def test_the_probe_key_names_cpu_model_size_and_batch(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: AMD EPYC 9R14\nflags\t: avx2\n")
    assert precision.cpu_model_name(cpuinfo) == "AMD EPYC 9R14"
    assert precision.cpu_model_name(tmp_path / "missing")  # some name elsewhere
    key = precision.probe_key("unet-small", (64, 96), 8, cpu="X")
    assert key == "X | unet-small | 64x96 | batch 8"


def test_the_probe_times_a_real_step(restore_policy, monkeypatch: pytest.MonkeyPatch) -> None:
    from segbalance.config import load_config

    built: list[str] = []

    def tiny(mcfg, size):  # the probe's wiring, not unet-small's build time
        built.append(mcfg.encoder_weights)
        inputs = keras.Input((*size, 3))
        return keras.Model(inputs, keras.layers.Conv2D(1, 3, padding="same")(inputs))

    monkeypatch.setattr(steps, "build_model", tiny)
    cfg = load_config(None, {"data.image_size": 32, "model.encoder_weights": "imagenet"})
    seconds = steps.time_train_steps(cfg, ["float32", "mixed_bfloat16"], 2, steps=1, warmup=1)
    assert sorted(seconds) == ["float32", "mixed_bfloat16"]
    assert all(np.isfinite(v) and v > 0 for v in seconds.values())
    assert built == ["none", "none"]  # copies without downloading weights
    assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
