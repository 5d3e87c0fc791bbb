"""Training: the entry, the trainer and its callbacks, plan, runtime, checkpoints and logs.

Example:
    >>> from segbalance.config import load_config
    >>> from segbalance.train import train
    >>> cfg = load_config(None, {"data.manifest": "data/manifest.csv", "train.epochs": 2})
    >>> result = train(cfg, "runs/first")  # doctest: +SKIP
"""

from segbalance.train.result import TrainResult
from segbalance.train.run import train

__all__ = ["TrainResult", "train"]
