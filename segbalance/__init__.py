"""segbalance: group-balanced image segmentation on TensorFlow 2 / Keras 3.

For your own ``model.fit``: ``segbalance.balanced_dataset`` and ``segbalance.steps_per_epoch``
(:mod:`segbalance.api`), imported on first use so that ``import segbalance`` (and
``segbalance --help``) does not start TensorFlow.
"""

from __future__ import annotations

import importlib
from typing import Any

from segbalance.version import __version__

__all__ = ["__version__", "balanced_dataset", "steps_per_epoch"]

_API = ("balanced_dataset", "steps_per_epoch")


def __getattr__(name: str) -> Any:
    """``segbalance.balanced_dataset`` etc.: import :mod:`segbalance.api` on first use (PEP 562)."""
    if name in _API:
        # Imported on first use, not with the package: segbalance.api imports TensorFlow,
        # which `import segbalance` (the CLI's --help) must not pay for.
        return getattr(importlib.import_module("segbalance.api"), name)
    raise AttributeError(f"module 'segbalance' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
