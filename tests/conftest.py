"""Shared fixtures. Tests use tiny inputs (32-64 px, batch 2)."""

from __future__ import annotations

import os

# Quiet TensorFlow and keep tests on the CPU with deterministic ops.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
