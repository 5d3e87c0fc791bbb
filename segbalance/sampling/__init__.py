"""Group balancing at the index level: strategies -> probabilities -> per-epoch row indices.

Example:
    >>> from segbalance.sampling import SamplingPlan
    >>> plan = SamplingPlan([0, 0, 0, 1], ["big", "small"], balance="uniform", seed=1)
    >>> plan.quotas
    {'big': 2, 'small': 2}
"""

from segbalance.sampling.plan import (
    REPEAT_WARNING,
    SamplingPlan,
    largest_remainder,
    training_epoch_length,
)
from segbalance.sampling.weights import (
    STRATEGIES,
    SamplingWarning,
    adaptive_base,
    group_probabilities,
    parse_balance,
    parse_weights,
)

__all__ = [
    "REPEAT_WARNING",
    "STRATEGIES",
    "SamplingPlan",
    "SamplingWarning",
    "adaptive_base",
    "group_probabilities",
    "largest_remainder",
    "parse_balance",
    "parse_weights",
    "training_epoch_length",
]
