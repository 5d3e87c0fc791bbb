"""Choosing the numeric precision (``train.precision``) and XLA (``train.jit_compile``).

``auto`` precision picks the fastest policy the hardware runs well:

* a GPU is visible: ``mixed_float16`` (float16 compute with dynamic loss scaling, see
  :func:`needs_loss_scaling`);
* a CPU with bfloat16 instructions (``avx512_bf16`` or ``amx_bf16`` among the
  ``/proc/cpuinfo`` flags): measured (:func:`choose_precision`): a short timed probe of
  float32 and ``mixed_bfloat16`` on the run's model, cached in the work dir, keeps
  bfloat16 only where it is clearly faster (it is not for every model and CPU);
* otherwise ``float32``: emulated bfloat16 on a CPU without those instructions is slower
  than float32.

An explicit ``float32``, ``mixed_float16`` or ``mixed_bfloat16`` is used as given. The
policy must be set before the model is built (Keras reads it when layers are created);
model outputs stay float32 either way (the models cast their logits). ``auto`` jit_compile
is on with a GPU and off on CPUs (:func:`resolve_jit`).

Example:
    >>> resolve_precision("auto", has_gpu=False, cpu_flags={"avx2", "amx_bf16"})
    'mixed_bfloat16'
    >>> resolve_precision("auto", has_gpu=False, cpu_flags={"avx2"})
    'float32'
    >>> choose_precision("auto", measure=None, cpu_flags={"amx_bf16"}, has_gpu=False).policy
    'float32'
"""

from __future__ import annotations

import json
import platform
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import keras
import tensorflow as tf

from segbalance.errors import UserError
from segbalance.io import write_text

POLICIES = ("float32", "mixed_float16", "mixed_bfloat16")
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
CPUINFO = Path("/proc/cpuinfo")


def read_cpu_flags(path: str | Path = CPUINFO) -> set[str]:
    """The CPU feature flags of the first processor listed in ``path``.

    Returns an empty set where the file does not exist (macOS, Windows) or has no flags.
    """
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # x86 / ARM spelling
            return set(value.split())
    return set()


def cpu_supports_bf16(flags: Iterable[str] | None = None) -> bool:
    """Whether the CPU has native bfloat16 instructions.

    Args:
        flags: CPU flags to judge; default: :func:`read_cpu_flags` of this machine.
    """
    found = set(read_cpu_flags() if flags is None else flags)
    return bool(found & BF16_FLAGS)


def gpu_available() -> bool:
    """Whether TensorFlow sees at least one GPU."""
    return bool(tf.config.list_physical_devices("GPU"))


def resolve_precision(
    requested: str,
    *,
    has_gpu: bool | Callable[[], bool] | None = None,
    cpu_flags: Iterable[str] | None = None,
) -> str:
    """The Keras dtype policy name for the requested precision.

    Args:
        requested: ``auto`` or one of :data:`POLICIES`.
        has_gpu: whether a GPU is used (or a probe returning it); default: ask TensorFlow.
        cpu_flags: CPU flags (injectable for tests); default: read ``/proc/cpuinfo``.

    Raises:
        UserError: an unknown precision name.
    """
    if requested in POLICIES:
        return requested
    if requested != "auto":
        valid = ", ".join(("auto", *POLICIES))
        raise UserError(f"unknown precision '{requested}'; valid: {valid}")
    if has_gpu is None:
        has_gpu = gpu_available
    gpu = has_gpu() if callable(has_gpu) else bool(has_gpu)
    if gpu:
        return "mixed_float16"
    return "mixed_bfloat16" if cpu_supports_bf16(cpu_flags) else "float32"


def needs_loss_scaling(policy: str) -> bool:
    """float16 gradients underflow without loss scaling; bfloat16 has float32's range."""
    return policy == "mixed_float16"


def apply_precision(policy: str) -> str:
    """Set the global Keras dtype policy (before building the model); returns it."""
    if policy not in POLICIES:
        raise UserError(f"unknown precision policy '{policy}'; valid: {', '.join(POLICIES)}")
    keras.mixed_precision.set_global_policy(policy)
    return policy


def describe(policy: str, requested: str) -> str:
    """A short line for the log, e.g. ``precision mixed_bfloat16 (auto: CPU has bf16)``."""
    if requested != "auto":
        return f"precision {policy}" + (" (loss scaling)" if needs_loss_scaling(policy) else "")
    why = {
        "mixed_float16": "GPU found, float16 with loss scaling",
        "mixed_bfloat16": "CPU has bfloat16 instructions",
        "float32": "no GPU and no CPU bfloat16 instructions",
    }[policy]
    return f"precision {policy} (auto: {why})"


# ------------------------------------------------------------------ measured auto on CPUs
#: bfloat16 changes the numerics; it is picked only when clearly faster than float32.
MIN_SPEEDUP = 1.1
#: The probe costs two traces and 7 steps per policy, some 20 steps of the run: under this
#: many steps it cannot pay for itself, and ``auto`` takes float32 without measuring.
PROBE_MIN_STEPS = 500
PROBE_FILE = "precision.json"


@dataclass(frozen=True)
class Choice:
    """The policy a run trains under and the line that says why."""

    policy: str
    note: str


def cpu_model_name(path: str | Path = CPUINFO) -> str:
    """The ``model name`` of the first processor (``platform.processor()`` elsewhere)."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip():
            return value.strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def probe_key(model: str, image_size: Sequence[int], batch: int, cpu: str | None = None) -> str:
    """What a probe's result depends on: CPU model, model name, image size and batch."""
    size = "x".join(str(int(s)) for s in image_size)
    return f"{cpu or cpu_model_name()} | {model} | {size} | batch {batch}"


def read_probe(path: Path, key: str) -> float | None:
    """The cached ratio (float32 s / bfloat16 s per step) for ``key``, or None."""
    try:
        entries = json.loads(path.read_text()).get("entries", {})
        return float(entries[key]["ratio"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # no file, another key, or a damaged file: measure again


def write_probe(path: Path, key: str, seconds: dict[str, float]) -> float:
    """Record one probe (seconds per step of each policy) in ``path``; returns the ratio."""
    ratio = seconds["float32"] / seconds["mixed_bfloat16"]
    try:
        data = json.loads(path.read_text())
        entries = data["entries"] if isinstance(data.get("entries"), dict) else {}
    except (OSError, ValueError, AttributeError):
        entries = {}
    entries[key] = {**{f"{p}_s_per_step": s for p, s in seconds.items()}, "ratio": ratio}
    write_text(path, json.dumps({"entries": entries}, indent=2) + "\n")
    return ratio


def choose_precision(
    requested: str,
    *,
    measure: Callable[[Sequence[str]], dict[str, float]] | None = None,
    cache: Path | None = None,
    key: str = "",
    steps: int = PROBE_MIN_STEPS,
    has_gpu: bool | Callable[[], bool] | None = None,
    cpu_flags: Iterable[str] | None = None,
) -> Choice:
    """:func:`resolve_precision`, with ``auto`` on a bfloat16 CPU decided by measuring.

    Native bfloat16 is not faster for every model: mixed_bfloat16 ran unet-small 1.5x
    float32 and efficientnetb4 0.95x on an AMX CPU, 1.2-1.4x and 0.89x on an AVX512-BF16
    EPYC. So ``auto`` times both policies (``measure(policy)`` -> seconds per
    step), keeps mixed_bfloat16 only at :data:`MIN_SPEEDUP` x or better, and records the
    result in ``cache`` under ``key`` (a resume or rerun reads it instead of measuring).

    Args:
        measure: the probe; None (or ``steps`` under :data:`PROBE_MIN_STEPS` with nothing
            cached) means float32 without measuring.
        steps: train steps in the run, to judge whether a probe pays for itself.
    """
    policy = resolve_precision(requested, has_gpu=has_gpu, cpu_flags=cpu_flags)
    if requested != "auto" or policy != "mixed_bfloat16":
        return Choice(policy, describe(policy, requested))
    ratio = read_probe(cache, key) if cache is not None else None
    how = f"measured, cached in {cache.name}" if cache is not None else "measured"
    if ratio is None:
        if measure is None or steps < PROBE_MIN_STEPS:
            why = "not measured" if measure is None else f"{steps} steps: too short to probe"
            return Choice("float32", f"auto precision: float32 (CPU has bf16; {why})")
        seconds = measure(("float32", "mixed_bfloat16"))
        if cache is not None:
            ratio = write_probe(cache, key, seconds)
        else:
            ratio = seconds["float32"] / seconds["mixed_bfloat16"]
        how = "measured"
    if ratio >= MIN_SPEEDUP:
        return Choice(
            "mixed_bfloat16", f"auto precision: mixed_bfloat16 ({ratio:.2f}x float32, {how})"
        )
    return Choice(
        "float32", f"auto precision: float32 (mixed_bfloat16 {ratio:.2f}x float32, {how})"
    )


# ------------------------------------------------------------------ XLA
def resolve_jit(
    requested: str | bool,
    *,
    has_gpu: bool | Callable[[], bool] | None = None,
    replicas: int = 1,
) -> bool:
    """``train.jit_compile``: ``auto`` is on with a GPU (fused kernels), off on CPUs.

    On CPUs oneDNN's kernels are already fused and XLA's compile costs more than it saves.
    With several replicas the steps run without XLA whatever is asked: batch norm is then
    synchronized, a collective that cannot run inside a nested XLA function.
    """
    if not isinstance(requested, bool) and requested != "auto":
        raise UserError(f"unknown jit_compile '{requested}'; valid: auto, true, false")
    if replicas > 1:
        return False
    if isinstance(requested, bool):
        return requested
    if has_gpu is None:
        has_gpu = gpu_available
    return bool(has_gpu() if callable(has_gpu) else has_gpu)


def describe_jit(jit: bool, requested: str | bool, replicas: int = 1) -> str:
    """``jit_compile on (auto: GPU found)`` and the like, for the run header."""
    state = "on" if jit else "off"
    if replicas > 1 and requested is not False:
        return f"jit_compile {state} ({replicas} replicas: synchronized batch norm)"
    if requested != "auto":
        return f"jit_compile {state}"
    return f"jit_compile {state} (auto: {'GPU found' if jit else 'no GPU'})"
