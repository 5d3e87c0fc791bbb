"""Training: the one tf.distribute loop, precision, schedules, work dir and logs.

Example:
    >>> from segbalance.config import load_config
    >>> from segbalance.train import train
    >>> cfg = load_config(None, {"data.manifest": "data/manifest.csv", "train.epochs": 2})
    >>> result = train(cfg, "runs/first")  # doctest: +SKIP
"""

from segbalance.train.loop import TrainResult, train

__all__ = ["TrainResult", "train"]
