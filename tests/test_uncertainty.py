"""Bootstrap intervals of per-group IoU: seeded, stratified, containing the point estimate."""

from __future__ import annotations

import numpy as np
import pytest

from segbalance.errors import UserError
from segbalance.metrics import GroupMetrics
from segbalance.uncertainty import bootstrap_iou


def sample_counts(n: int, seed: int) -> np.ndarray:
    """Per-image (tp, fp, fn, tn) of images with IoUs spread over 0.3..0.9."""
    rng = np.random.default_rng(seed)
    tp = rng.integers(200, 900, n).astype(float)
    fp = rng.integers(0, 300, n).astype(float)
    fn = rng.integers(0, 300, n).astype(float)
    return np.stack([tp, fp, fn, 4096 - tp - fp - fn], axis=1)


@pytest.fixture
def data() -> tuple[np.ndarray, np.ndarray]:
    sizes = [200, 40, 7]  # a big, a middle and a tutorial-small group
    counts = np.concatenate([sample_counts(n, seed) for seed, n in enumerate(sizes)])
    ids = np.repeat(np.arange(len(sizes)), sizes)
    return counts, ids


def test_intervals_are_seeded(data: tuple[np.ndarray, np.ndarray]) -> None:
    counts, ids = data
    a = bootstrap_iou(counts, ids, 3, samples=300, seed=1)
    b = bootstrap_iou(counts, ids, 3, samples=300, seed=1)
    c = bootstrap_iou(counts, ids, 3, samples=300, seed=2)
    assert a == b
    assert a.groups != c.groups


def test_intervals_contain_the_point_estimates(data: tuple[np.ndarray, np.ndarray]) -> None:
    counts, ids = data
    metrics = GroupMetrics(["big", "middle", "small"])
    metrics.update(ids, counts)
    point = metrics.result()
    ci = bootstrap_iou(counts, ids, 3, samples=1000, seed=0)
    for name, interval in zip(["big", "middle", "small"], ci.groups, strict=True):
        assert interval is not None
        assert interval[0] <= point["groups"][name]["iou"] <= interval[1]
    assert ci.worst is not None and ci.mean is not None
    assert ci.worst[0] <= point["worst_group_iou"] <= ci.worst[1]
    assert ci.mean[0] <= point["mean_group_iou"] <= ci.mean[1]


def test_a_small_group_gets_a_wider_interval(data: tuple[np.ndarray, np.ndarray]) -> None:
    counts, ids = data
    ci = bootstrap_iou(counts, ids, 3, samples=1000, seed=0)
    width = [hi - lo for lo, hi in ci.groups]  # type: ignore[misc]
    assert width[0] < width[1] < width[2]


def test_hand_made_edge_cases() -> None:
    perfect, wrong = [10.0, 0.0, 0.0, 90.0], [0.0, 10.0, 10.0, 80.0]
    counts = np.array([perfect, wrong, perfect])
    ids = np.array([0, 0, 2])  # group 1 has no images; group 2 has one
    ci = bootstrap_iou(counts, ids, 3, samples=2000, seed=0)
    assert ci.groups[1] is None
    assert ci.groups[2] is None  # one image: no interval (a zero width would look precise)
    lo, hi = ci.groups[0]  # type: ignore[misc]
    # Resamples of {perfect, wrong}: both wrong (IoU 0, p=1/4), mixed (10/30, 1/2), both
    # perfect (1, 1/4): the 2.5th and 97.5th percentiles are 0 and 1.
    assert (lo, hi) == (0.0, 1.0)


def test_bad_settings_are_user_errors() -> None:
    with pytest.raises(UserError, match="samples must be >= 1"):
        bootstrap_iou(np.zeros((1, 4)), np.zeros(1), 1, samples=0)
    with pytest.raises(UserError, match="level must be in"):
        bootstrap_iou(np.zeros((1, 4)), np.zeros(1), 1, level=1.0)
