"""Whether a run keeps its decoded rows in memory: ``data.cache_decoded: auto`` and its budget.

Decoding and resizing is half the per-sample cost of the input pipeline on a CPU, and the
cache removes it (1.96x the tutorial recipe instead of 1.04x in bench_pipeline.py), so it is
on whenever the rows fit the budget: ``data.cache_budget`` (default 0.25) of the memory
available when the run starts. A quarter leaves the rest for TensorFlow's own buffers
(prefetch, the map's parallel calls, the model and optimiser, XLA), for other workers on the
same machine and for the page cache; the tutorial's 1105 images at 384 px need 0.65 GiB
for training, which a quarter of any machine that trains a U-Net holds.

Train rows are cached as uint8 (4 bytes a pixel: RGB + mask); validation rows as the float32
tensors the evaluation decode makes (16 bytes a pixel), through ``tf.data``'s memory cache,
so validation results do not change with the cache. The train cache rounds resized pixels
to whole grey levels, so a resume uses the choice the run started with (recorded in its
``data.json``), never a new one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from segbalance.config import DataConfig

#: Bytes a pixel takes in the train cache (uint8 RGB + uint8 mask).
TRAIN_BYTES_PER_PIXEL = 4
#: Bytes a pixel takes in the validation cache (float32 RGB + float32 mask).
VALID_BYTES_PER_PIXEL = 16


def available_memory(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """Bytes of memory available to new work (Linux ``MemAvailable``), None when unknown."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:  # other Unix systems: free pages (a lower bound of what is available)
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


@dataclass(frozen=True)
class CacheChoice:
    """What the run caches, and the sentence that says why."""

    train: bool
    valid: bool
    reason: str


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def choose_cache(
    data: DataConfig, train_rows: int, valid_rows: int, available: int | None
) -> CacheChoice:
    """Apply ``data.cache_decoded`` (true, false or auto) to rows of ``data.image_size``.

    Args:
        train_rows: rows of the train split; valid_rows: of the validation split.
        available: bytes of available memory (:func:`available_memory`).
    """
    pixels = int(data.image_size[0]) * int(data.image_size[1])
    train_need = train_rows * pixels * TRAIN_BYTES_PER_PIXEL
    valid_need = valid_rows * pixels * VALID_BYTES_PER_PIXEL
    need = f"train {_gib(train_need)}, valid {_gib(valid_need)}"
    if data.cache_decoded is True:
        return CacheChoice(True, True, f"decoded rows in memory ({need}; data.cache_decoded)")
    if data.cache_decoded is False:
        return CacheChoice(False, False, "decoding from files every epoch (data.cache_decoded)")
    if available is None:
        return CacheChoice(False, False, "decoding from files: available memory is unknown")
    budget = available * data.cache_budget
    train = train_need <= budget
    valid = valid_need + (train_need if train else 0) <= budget
    of = f"budget {_gib(budget)} = {data.cache_budget:g} of {_gib(available)} available"
    if train and valid:
        return CacheChoice(True, True, f"decoded rows in memory ({need}; {of})")
    if train or valid:
        part = "train" if train else "valid"
        return CacheChoice(train, valid, f"only the {part} rows in memory ({need}; {of})")
    return CacheChoice(False, False, f"decoding from files every epoch ({need} > {of})")
