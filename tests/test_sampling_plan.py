"""SamplingPlan: no drift, exact quotas, repeats spread evenly, determinism, resuming, sharding."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import segbalance.sampling.plan as plan_module
from segbalance.errors import UserError
from segbalance.sampling import SamplingPlan, SamplingWarning, largest_remainder

SIZES = [749, 144, 126, 52, 34]  # the tutorial's groups
NAMES = [str(i) for i in range(5)]
CHI2_DF4_P001 = 18.467  # chi-square critical value, 4 degrees of freedom, p = 0.001


def tutorial_ids(seed: int = 0) -> np.ndarray:
    """Group id per row, rows of the groups interleaved as in a real manifest."""
    ids = np.repeat(np.arange(5), SIZES)
    return np.random.default_rng(seed).permutation(ids)


def realised(ids: np.ndarray, rows: np.ndarray, groups: int = 5) -> np.ndarray:
    return np.bincount(ids[rows], minlength=groups)


def test_exact_mode_holds_the_quotas_every_epoch_no_drift() -> None:
    ids = tutorial_ids()
    plan = SamplingPlan(ids, NAMES, balance="uniform", mode="exact", seed=0)
    assert plan.epoch_length == 1105
    assert plan.quotas == {"0": 221, "1": 221, "2": 221, "3": 221, "4": 221}
    quota = np.array(list(plan.quotas.values()))
    for e in range(20):
        rows = plan.epoch(e)
        assert rows.dtype == np.int64 and len(rows) == 1105
        np.testing.assert_array_equal(realised(ids, rows), quota)
        assert plan.counts(e) == plan.quotas


def test_random_mode_matches_the_target_mix_chi_square() -> None:
    ids = tutorial_ids()
    plan = SamplingPlan(ids, NAMES, balance="uniform", mode="random", seed=0)
    total = np.zeros(5)
    per_epoch = []
    for e in range(20):
        got = realised(ids, plan.epoch(e))
        assert dict(zip(NAMES, got.tolist(), strict=True)) == plan.counts(e)
        per_epoch.append(got)
        total += got
    expected = 20 * 1105 * np.array(list(plan.target.values()))
    chi2 = float(((total - expected) ** 2 / expected).sum())
    assert chi2 < CHI2_DF4_P001
    # draws really are random: the epochs differ (unlike exact mode)
    assert len({tuple(c) for c in per_epoch}) > 1
    # and the last epochs are as balanced as the first (what the tutorial's recipe lost)
    assert min(per_epoch[-1]) > 150


def stream_of_group(ids: np.ndarray, epochs: list[np.ndarray], g: int) -> np.ndarray:
    rows = np.concatenate(epochs)
    return rows[ids[rows] == g]


@pytest.mark.parametrize("mode", ["exact", "random"])
@pytest.mark.parametrize("length", [None, 333, 4000])
def test_every_image_of_a_group_is_shown_before_any_repeats(mode: str, length: int | None) -> None:
    ids = tutorial_ids(1)
    plan = SamplingPlan(ids, NAMES, mode=mode, seed=5, epoch_length=length)
    epochs = [plan.epoch(e) for e in range(6)]
    for g, n in enumerate(SIZES):
        seq = stream_of_group(ids, epochs, g)
        own = np.sort(np.flatnonzero(ids == g))
        for start in range(0, len(seq) - n + 1, n):  # each full round is a permutation
            np.testing.assert_array_equal(np.sort(seq[start : start + n]), own)
        tail = seq[len(seq) - len(seq) % n :]
        assert len(np.unique(tail)) == len(tail)  # the unfinished round has no repeats


def test_rounds_are_fresh_permutations() -> None:
    ids = np.zeros(50, dtype=np.int64)
    plan = SamplingPlan(ids, ["only"], seed=2)
    first, second = plan.epoch(0), plan.epoch(1)
    assert sorted(first) == sorted(second) == list(range(50))
    assert not np.array_equal(first, second)


def test_same_seed_same_plan_other_seed_other_plan() -> None:
    ids = tutorial_ids()
    for mode in ("exact", "random"):
        a = SamplingPlan(ids, NAMES, mode=mode, seed=3)
        b = SamplingPlan(ids, NAMES, mode=mode, seed=3)
        c = SamplingPlan(ids, NAMES, mode=mode, seed=4)
        np.testing.assert_array_equal(a.epoch(2), b.epoch(2))
        assert not np.array_equal(a.epoch(2), c.epoch(2))
        assert not np.array_equal(a.epoch(2), a.epoch(3))


@pytest.mark.parametrize("mode", ["exact", "random"])
def test_resuming_epoch_7_equals_building_it_after_0_to_6(mode: str) -> None:
    ids = tutorial_ids()
    walked = SamplingPlan(ids, NAMES, mode=mode, seed=11, epoch_length=700)
    for e in range(7):
        walked.epoch(e)
    fresh = SamplingPlan(ids, NAMES, mode=mode, seed=11, epoch_length=700)
    np.testing.assert_array_equal(walked.epoch(7), fresh.epoch(7))
    # going back to an earlier epoch gives it again too
    np.testing.assert_array_equal(walked.epoch(3), fresh.epoch(3))
    assert walked.counts(5) == fresh.counts(5)


def test_multi_chunk_interleave_and_pieces_keep_every_guarantee(monkeypatch) -> None:
    # Force the chunked interleave and the piecewise permutations on a small plan.
    monkeypatch.setattr(plan_module, "_CHUNK", 97)
    monkeypatch.setattr(plan_module, "_PIECE", 40)
    ids = tutorial_ids(2)
    plan = SamplingPlan(ids, NAMES, seed=1, epoch_length=2000)
    epochs = [plan.epoch(e) for e in range(3)]
    quota = np.array(list(plan.quotas.values()))
    for rows in epochs:
        np.testing.assert_array_equal(realised(ids, rows), quota)
    for g, n in enumerate(SIZES):
        seq = stream_of_group(ids, epochs, g)
        for start in range(0, len(seq) - n + 1, n):
            assert len(np.unique(seq[start : start + n])) == n
    fresh = SamplingPlan(ids, NAMES, seed=1, epoch_length=2000)
    np.testing.assert_array_equal(fresh.epoch(2), epochs[2])


def test_big_group_with_small_quota_uses_partial_permutations() -> None:
    # 5000 images, ~100 samples per epoch: each epoch takes a slice of one permutation.
    ids = np.repeat([0, 1], [5000, 3])
    plan = SamplingPlan(ids, ["big", "tiny"], seed=0, epoch_length=200)
    seq = stream_of_group(ids, [plan.epoch(e) for e in range(60)], 0)
    assert len(seq) == 6000
    assert len(np.unique(seq[:5000])) == 5000  # one full round, no repeats
    assert len(np.unique(seq[5000:])) == 1000


def test_order_inside_an_epoch_is_shuffled_across_groups() -> None:
    ids = tutorial_ids()
    rows = SamplingPlan(ids, NAMES, seed=0).epoch(0)
    first_batch = ids[rows[:64]]
    assert len(set(first_batch.tolist())) == 5  # groups are mixed, not one after another


def test_zero_weight_group_never_appears() -> None:
    ids = tutorial_ids()
    with pytest.warns(SamplingWarning):
        plan = SamplingPlan(ids, NAMES, weights={"4": 0}, mode="random", seed=0)
    for e in range(3):
        assert realised(ids, plan.epoch(e))[4] == 0


def test_short_epoch_warns_about_starved_groups() -> None:
    ids = np.arange(10)
    with pytest.warns(SamplingWarning, match="too short"):
        plan = SamplingPlan(ids, [f"g{i}" for i in range(10)], epoch_length=4)
    assert sum(plan.quotas.values()) == 4


@pytest.mark.parametrize(
    ("replicas", "batch", "length"),
    [(1, 16, 1105), (2, 16, 1105), (3, 16, 1105), (4, 16, 1120), (5, 7, 100)],
)
def test_sharding_covers_each_position_once_and_keeps_the_batch_mix(
    replicas: int, batch: int, length: int
) -> None:
    ids = tutorial_ids()
    plan = SamplingPlan(ids, NAMES, seed=9, epoch_length=length)
    full = plan.epoch(1)
    shares = [plan.shard(1, batch, replicas, r) for r in range(replicas)]
    positions = np.concatenate([s[0] for s in shares])
    np.testing.assert_array_equal(np.sort(positions), np.arange(length))
    for pos, rows in shares:
        np.testing.assert_array_equal(rows, full[pos])
    # batch by batch, replica r reads np.array_split(batch_positions, R)[r]
    for b in range(0, length, batch):
        batch_positions = np.arange(b, min(b + batch, length))
        for r, part in enumerate(np.array_split(batch_positions, replicas)):
            mine = shares[r][0]
            np.testing.assert_array_equal(mine[(mine >= b) & (mine < b + batch)], part)
    # per-replica mix: the replicas' counts add up to the global quotas, each near its share
    per_replica = np.array([realised(ids, rows) for _, rows in shares])
    np.testing.assert_array_equal(per_replica.sum(axis=0), list(plan.quotas.values()))
    share = np.array([len(p) for p, _ in shares])[:, None] / length
    expected = share * np.array(list(plan.quotas.values()))[None, :]
    assert np.all(np.abs(per_replica - expected) <= 5 * np.sqrt(expected) + 1)


def test_shard_rejects_bad_arguments() -> None:
    plan = SamplingPlan(tutorial_ids(), NAMES)
    with pytest.raises(UserError, match="replica id"):
        plan.shard(0, 16, 2, 2)
    with pytest.raises(UserError, match="number of replicas"):
        plan.shard(0, 4, 8, 0)
    with pytest.raises(UserError, match="global batch size"):
        plan.shard(0, 0, 1, 0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"group_ids": []}, "at least one row"),
        ({"group_ids": [0, 5]}, r"must lie in 0\.\.4"),
        ({"group_ids": [0.0, 1.0]}, "must be integers"),
        ({"mode": "shuffled"}, "sampling mode 'shuffled' is unknown"),
        ({"seed": -1}, "seed must be an integer >= 0"),
        ({"epoch_length": 0}, "epoch_length must be a positive integer"),
        ({"epoch_length": 10**9}, "epoch_length must be below 1,000,000,000"),
        ({"balance": "power:2"}, "must be a number"),
        ({"weights": {"9": 1.0}}, "valid groups: 0, 1, 2, 3, 4"),
    ],
)
def test_bad_plan_arguments_are_clear_errors(kwargs: dict, message: str) -> None:
    args = {"group_ids": tutorial_ids(), "group_names": NAMES, **kwargs}
    with pytest.raises(UserError, match=message):
        SamplingPlan(**args)


def test_bad_epoch_is_an_error() -> None:
    plan = SamplingPlan(tutorial_ids(), NAMES)
    with pytest.raises(UserError, match="epoch must be an integer >= 0"):
        plan.epoch(-1)


def test_report_shows_mix_showings_and_repeat_warning() -> None:
    ids = tutorial_ids()
    report = SamplingPlan(ids, NAMES, balance="uniform", seed=0, epoch_length=4000).report(3)
    json.dumps(report)  # JSON-able
    assert [e["epoch"] for e in report["epochs"]] == [0, 1, 2]
    assert report["epochs"][2]["counts"] == {g: 800 for g in NAMES}
    by_name = {g["name"]: g for g in report["groups"]}
    assert by_name["4"]["showings_per_image"] == pytest.approx(800 / 34)
    assert by_name["4"]["repeat_warning"] and by_name["3"]["repeat_warning"]  # 23.5x, 15.4x
    assert not by_name["2"]["repeat_warning"]  # 6.3x
    assert len(report["warnings"]) == 2 and "group '4'" in report["warnings"][1]
    assert report["target"] == {g: 0.2 for g in NAMES}


def test_largest_remainder_rounding() -> None:
    np.testing.assert_array_equal(largest_remainder(np.array([0.5, 0.3, 0.2]), 4), [2, 1, 1])
    np.testing.assert_array_equal(largest_remainder(np.full(3, 1 / 3), 1105), [369, 368, 368])


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 40), min_size=1, max_size=8),
    weights=st.lists(st.floats(0.1, 10.0), min_size=8, max_size=8),
    length=st.integers(1, 300),
    epoch=st.integers(0, 50),
    seed=st.integers(0, 2**32),
)
def test_quotas_sum_to_epoch_length_and_epochs_hold_them(
    sizes: list[int], weights: list[float], length: int, epoch: int, seed: int
) -> None:
    names = [f"g{i}" for i in range(len(sizes))]
    ids = np.random.default_rng(seed).permutation(np.repeat(np.arange(len(sizes)), sizes))
    w = dict(zip(names, weights, strict=False))
    with warnings.catch_warnings():  # starved groups warn; checked elsewhere
        warnings.simplefilter("ignore", SamplingWarning)
        exact = SamplingPlan(ids, names, "custom", w, "exact", seed, length)
    q = np.array(list(exact.quotas.values()))
    assert q.sum() == length
    assert np.all(np.abs(q - np.array(list(exact.target.values())) * length) < 1)
    np.testing.assert_array_equal(realised(ids, exact.epoch(epoch), len(sizes)), q)
    rand = SamplingPlan(ids, names, "custom", w, "random", seed, length)
    got = realised(ids, rand.epoch(epoch), len(sizes))
    assert got.sum() == length and got.tolist() == list(rand.counts(epoch).values())


@pytest.mark.parametrize("n", [1, 2, 255, 256, 3000])
def test_packed_sort_equals_argsort_of_the_keys(n: int) -> None:
    keys = np.random.default_rng(n).integers(0, 2**63, size=(3, n), dtype=np.uint64) << 1
    np.testing.assert_array_equal(plan_module._permutations(keys.copy()), np.argsort(keys, axis=1))
    row = keys[0]
    for lo, hi in [(0, n), (0, 1), (n // 3, n // 3 + max(1, n // 10)), (n - 1, n)]:
        got = plan_module._permutations(row.copy(), lo, hi)  # partition path for short slices
        np.testing.assert_array_equal(got, np.argsort(row)[lo:hi])
