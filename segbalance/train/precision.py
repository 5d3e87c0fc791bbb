"""Choosing the numeric precision of training (``train.precision``).

``auto`` picks the fastest policy the hardware runs well:

* a GPU is visible: ``mixed_float16`` (float16 compute with dynamic loss scaling, see
  :func:`needs_loss_scaling`);
* otherwise a CPU with bfloat16 instructions (``avx512_bf16`` or ``amx_bf16`` among the
  ``/proc/cpuinfo`` flags): ``mixed_bfloat16``, which needs no loss scaling;
* otherwise ``float32``: emulated bfloat16 on a CPU without those instructions is slower
  than float32.

An explicit ``float32``, ``mixed_float16`` or ``mixed_bfloat16`` is used as given. The
policy must be set before the model is built (Keras reads it when layers are created);
model outputs stay float32 either way (the models cast their logits).

Example:
    >>> resolve_precision("auto", has_gpu=False, cpu_flags={"avx2", "amx_bf16"})
    'mixed_bfloat16'
    >>> resolve_precision("auto", has_gpu=False, cpu_flags={"avx2"})
    'float32'
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import keras
import tensorflow as tf

from segbalance.errors import UserError

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
        return f"precision {policy}"
    why = {
        "mixed_float16": "GPU found, float16 with loss scaling",
        "mixed_bfloat16": "CPU has bfloat16 instructions",
        "float32": "no GPU and no CPU bfloat16 instructions",
    }[policy]
    return f"precision {policy} (auto: {why})"
