"""The tf.data input pipeline: decode, per-group augmentation, train/eval datasets.

Every model takes float32 RGB in 0..255; masks are float32 with one channel: {0, 1} for
binary, class indices 0..K-1 with 255 (ignored) for a multiclass manifest.
"""

from segbalance.augment_ops import DEFAULT_OPS, get_op
from segbalance.pipeline.augment import build_augmenter
from segbalance.pipeline.cache import DecodedCache
from segbalance.pipeline.dataset import build_eval_dataset, build_train_dataset, sample_seed
from segbalance.pipeline.decode import decode_pair, load_image, preprocess_for_model

__all__ = [
    "DEFAULT_OPS",
    "DecodedCache",
    "build_augmenter",
    "build_eval_dataset",
    "build_train_dataset",
    "decode_pair",
    "get_op",
    "load_image",
    "preprocess_for_model",
    "sample_seed",
]
