"""``segbalance export``: SavedModel (TF Serving), TFLite or ONNX from a trained model."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from segbalance.cli.common import add_command

EXAMPLES = """
segbalance export runs/exp/best.keras --format savedmodel --out serving/nails/1
segbalance export runs/exp/best.keras --format tflite --out nails.tflite
segbalance export runs/exp/best.keras --format onnx --out nails.onnx   # needs tf2onnx
"""


def register(sub: Any) -> None:
    parser = add_command(
        sub,
        "export",
        "Export a trained model: inputs are images of the training size (float 0..255 or "
        "uint8), outputs 'probabilities' and 'mask' (threshold from the model file; a "
        "multiclass model: per-class softmax and the most probable class's value).",
        EXAMPLES,
        run,
    )
    parser.add_argument("model", type=Path, metavar="MODEL", help="a .keras file from train")
    parser.add_argument(
        "--format", choices=("savedmodel", "tflite", "onnx"), default="savedmodel", dest="fmt"
    )
    parser.add_argument("--out", type=Path, required=True, help="folder (savedmodel) or file")
    parser.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="mask threshold (default: model's; binary models only)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")


def run(args: argparse.Namespace) -> int:
    from segbalance.artifacts import read_meta
    from segbalance.errors import UserError
    from segbalance.export import export_model

    try:
        out = export_model(
            args.model, args.fmt, args.out, threshold=args.threshold, overwrite=args.overwrite
        )
    except OSError as err:  # a full disk mid-export; the atomic writers left nothing behind
        raise UserError(
            f"--out {args.out}: cannot write it ({err.strerror or err}); nothing was written "
            "there. Free space or choose another --out"
        ) from err
    meta = read_meta(args.model)
    h, w = meta.image_size
    print(f"exported {args.model} as {args.fmt} to {out}")
    print(f"input: images [batch, {h}, {w}, 3] float32 0..255 (SavedModel also: serve_uint8)")
    spec = meta.class_set
    if spec is None:
        print("outputs: probabilities [batch, H, W, 1] float32; mask [batch, H, W, 1] uint8 0/1")
        return 0
    k, values = spec.num_classes, ", ".join(map(str, spec.values))
    print(
        f"outputs: probabilities [batch, H, W, {k}] float32, softmax over "
        f"{', '.join(spec.names)}; mask [batch, H, W, 1] uint8, the most probable class's "
        f"value ({values})"
    )
    return 0
