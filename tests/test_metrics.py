"""Metrics: confusion counts at a threshold, the empty convention, per-group sums."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from segbalance.errors import UserError
from segbalance.metrics import GroupMetrics, confusion_counts, metrics_from_counts, reduce_metrics


def mask(*values: float) -> np.ndarray:
    return np.asarray(values, np.float32).reshape(1, 2, 2, 1)


def test_confusion_counts_by_hand():
    y = mask(1, 1, 0, 0)
    z = mask(3.0, -1.0, 0.5, -2.0)  # predicted (p > 0.5 <=> z > 0): 1, 0, 1, 0
    # tp: pixel 0; fn: pixel 1; fp: pixel 2; tn: pixel 3
    np.testing.assert_array_equal(confusion_counts(y, z).numpy(), [[1, 1, 1, 1]])


def test_threshold_is_on_the_probability():
    y = mask(1, 1, 0, 0)
    z = mask(3.0, -1.0, 0.5, -2.0)
    # t = 0.7 -> logit cut log(0.7/0.3) = 0.847: only z=3 predicted -> tp 1, fp 0, fn 1, tn 2
    np.testing.assert_array_equal(confusion_counts(y, z, 0.7).numpy(), [[1, 0, 1, 2]])
    # t = 0.2 -> cut -1.386: z=-1 predicted too -> tp 2, fp 1, fn 0, tn 1
    np.testing.assert_array_equal(confusion_counts(y, z, 0.2).numpy(), [[2, 1, 0, 1]])
    with pytest.raises(UserError, match="threshold"):
        confusion_counts(y, z, 1.0)


def test_counts_per_sample_and_dtype():
    rng = np.random.default_rng(1)
    y = (rng.random((3, 8, 8, 1)) > 0.5).astype(np.float32)
    z = rng.normal(size=(3, 8, 8, 1)).astype(np.float32)
    counts = confusion_counts(y, z).numpy()
    assert counts.shape == (3, 4) and counts.dtype == np.float32
    pred, true = z > 0, y > 0.5
    for i in range(3):
        expected = [
            (pred[i] & true[i]).sum(),
            (pred[i] & ~true[i]).sum(),
            (~pred[i] & true[i]).sum(),
            (~pred[i] & ~true[i]).sum(),
        ]
        np.testing.assert_array_equal(counts[i], expected)


def test_metrics_by_hand():
    # tp 3, fp 1, fn 2: iou 3/6, dice 6/9, precision 3/4, recall 3/5
    m = metrics_from_counts(3, 1, 2, 10)
    np.testing.assert_allclose(
        [m["iou"], m["dice"], m["precision"], m["recall"]], [0.5, 2 / 3, 0.75, 0.6]
    )


def test_empty_convention():
    # nothing true, nothing predicted: every denominator is 0 -> 1.0
    m = metrics_from_counts(0, 0, 0, 4)
    assert all(float(m[k]) == 1.0 for k in ("iou", "dice", "precision", "recall"))
    # nothing predicted but something true: iou 0, recall 0, precision 0/0 -> 1.0
    m = metrics_from_counts(0, 0, 3, 1)
    assert (float(m["iou"]), float(m["recall"]), float(m["precision"])) == (0.0, 0.0, 1.0)
    # something predicted on an empty mask: iou 0, recall 0/0 -> 1.0
    m = metrics_from_counts(0, 2, 0, 2)
    assert (float(m["iou"]), float(m["precision"]), float(m["recall"])) == (0.0, 0.0, 1.0)


def test_reductions_by_hand():
    # image A: tp 1, fp 1, fn 0 (iou 1/2); image B: tp 0, fp 0, fn 0 (empty, iou 1)
    counts = [[1, 1, 0, 2], [0, 0, 0, 4]]
    assert reduce_metrics(counts, "micro")["iou"] == pytest.approx(0.5)  # 1 / (1 + 1)
    assert reduce_metrics(counts, "micro-imagewise")["iou"] == pytest.approx(0.75)  # (0.5 + 1)/2
    assert reduce_metrics(counts, "macro-imagewise")["dice"] == pytest.approx((2 / 3 + 1) / 2)
    with pytest.raises(UserError, match="unknown reduction"):
        reduce_metrics(counts, "weighted")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 50), min_size=4, max_size=4))
def test_iou_at_most_dice_and_all_in_unit_interval(c):
    m = metrics_from_counts(*c)
    assert float(m["iou"]) <= float(m["dice"]) + 1e-12
    for value in m.values():
        assert 0.0 <= float(value) <= 1.0


def test_group_metrics_equal_direct_numpy_computation():
    rng = np.random.default_rng(7)
    names = ["0", "1", "2", "10"]
    n = 23
    groups = rng.integers(0, 3, size=n)  # group "10" gets no image
    y = (rng.random((n, 8, 8, 1)) > 0.7).astype(np.float32)
    y[3] = 0  # an empty mask
    z = rng.normal(size=(n, 8, 8, 1)).astype(np.float32) + 2.0 * (y - 0.5)

    # batches of 5 in two accumulators, the second's totals added to the first's, as the
    # per-group sums of two workers are
    first, second = GroupMetrics(names), GroupMetrics(names)
    for start in range(0, n, 5):
        target = first if start < 10 else second
        stop = start + 5
        target.update(groups[start:stop], confusion_counts(y[start:stop], z[start:stop]).numpy())
    first.add_totals(second.counts, second.images)
    result = first.result()
    # the same numbers when the counts were summed per group on the device
    totals = GroupMetrics(names)
    per_group = np.zeros((4, 4))
    np.add.at(per_group, groups, confusion_counts(y, z).numpy())
    totals.add_totals(per_group, np.bincount(groups, minlength=4))
    assert totals.result() == result

    pred, true = z > 0, y > 0.5
    expected_ious = []
    for g in range(3):
        sel = groups == g
        tp = (pred[sel] & true[sel]).sum()
        fp = (pred[sel] & ~true[sel]).sum()
        fn = (~pred[sel] & true[sel]).sum()
        entry = result["groups"][names[g]]
        assert entry["images"] == sel.sum()
        assert entry["iou"] == pytest.approx(tp / (tp + fp + fn))
        assert entry["dice"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
        assert entry["precision"] == pytest.approx(tp / (tp + fp))
        assert entry["recall"] == pytest.approx(tp / (tp + fn))
        expected_ious.append(tp / (tp + fp + fn))
    assert result["groups"]["10"] == {
        "images": 0,
        "iou": None,
        "dice": None,
        "precision": None,
        "recall": None,
    }
    assert result["mean_group_iou"] == pytest.approx(np.mean(expected_ious))
    assert result["worst_group_iou"] == pytest.approx(min(expected_ious))
    tp, fp, fn = (pred & true).sum(), (pred & ~true).sum(), (~pred & true).sum()
    assert result["overall_iou"] == pytest.approx(tp / (tp + fp + fn))
    assert list(result["groups"]) == names


def test_group_metrics_rejects_bad_input():
    gm = GroupMetrics(["a", "b"])
    with pytest.raises(ValueError, match="out of range"):
        gm.update([2], [[1, 0, 0, 0]])
    with pytest.raises(ValueError, match="group ids"):
        gm.update([0, 1], [[1, 0, 0, 0]])
    assert gm.result()["mean_group_iou"] is None
