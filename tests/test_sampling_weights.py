"""Balancing strategies: hand-computed probabilities, every error, warnings, invariants."""

from __future__ import annotations

import math
from contextlib import nullcontext

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from segbalance.errors import UserError
from segbalance.sampling import (
    SamplingWarning,
    group_probabilities,
    parse_balance,
    parse_weights,
)

TUTORIAL = {"0": 749, "1": 144, "2": 126, "3": 52, "4": 34}


def test_uniform_gives_every_group_the_same_share() -> None:
    assert group_probabilities(TUTORIAL, "uniform") == dict.fromkeys(TUTORIAL, 0.2)


def test_proportional_follows_the_image_counts() -> None:
    p = group_probabilities(TUTORIAL, "proportional")
    assert p == pytest.approx({g: n / 1105 for g, n in TUTORIAL.items()})


def test_power_and_sqrt() -> None:
    # sqrt(1) : sqrt(4) = 1 : 2
    assert group_probabilities({"a": 1, "b": 4}, "sqrt") == pytest.approx({"a": 1 / 3, "b": 2 / 3})
    assert group_probabilities({"a": 1, "b": 4}, "power:0.5") == group_probabilities(
        {"a": 1, "b": 4}, "sqrt"
    )
    assert group_probabilities(TUTORIAL, "power:0") == pytest.approx(
        group_probabilities(TUTORIAL, "uniform")
    )
    assert group_probabilities(TUTORIAL, "power:1") == pytest.approx(
        group_probabilities(TUTORIAL, "proportional")
    )


def test_repeat_factor_matches_lvis_formula() -> None:
    # f_a = 0.9 -> r_a = max(1, sqrt(0.5/0.9)) = 1; f_b = 0.1 -> r_b = sqrt(5)
    p = group_probabilities({"a": 90, "b": 10}, "repeat-factor:0.5")
    wb = 10 * math.sqrt(5)
    assert p == pytest.approx({"a": 90 / (90 + wb), "b": wb / (90 + wb)})
    # a tiny threshold repeats nothing: proportional
    assert group_probabilities(TUTORIAL, "repeat-factor:1e-9") == pytest.approx(
        group_probabilities(TUTORIAL, "proportional")
    )


def test_custom_weights_unnamed_groups_keep_one() -> None:
    p = group_probabilities(TUTORIAL, "custom", parse_weights("0=1,4=2"))
    assert p == pytest.approx({"0": 1 / 6, "1": 1 / 6, "2": 1 / 6, "3": 1 / 6, "4": 2 / 6})


def test_weights_multiply_another_strategy() -> None:
    p = group_probabilities({"a": 30, "b": 10}, "proportional", {"b": 3})
    assert p == pytest.approx({"a": 0.5, "b": 0.5})


def test_zero_weight_leaves_group_out_with_warning() -> None:
    with pytest.warns(SamplingWarning, match="weight 0.*: 4"):
        p = group_probabilities(TUTORIAL, "uniform", {"4": 0})
    assert p["4"] == 0.0 and p["0"] == pytest.approx(0.25)


def test_empty_group_is_left_out_with_warning() -> None:
    with pytest.warns(SamplingWarning, match="no images.*: b"):
        p = group_probabilities({"a": 3, "b": 0, "c": 1}, "uniform")
    assert p == {"a": 0.5, "b": 0.0, "c": 0.5}


@pytest.mark.parametrize(
    ("balance", "message"),
    [
        ("unifrom", "unknown balance strategy 'unifrom'; did you mean 'uniform'"),
        ("power", "needs a parameter, e.g. 'power:0.5'"),
        ("repeat-factor", "needs a parameter"),
        ("power:abc", r"must be a number in \[0, 1\]"),
        ("power:nan", "must be a number"),
        ("power:1.5", "must be a number"),
        ("power:-0.5", "must be a number"),
        ("repeat-factor:0", r"must be a number in \(0, 1\]"),
        ("repeat-factor:2", "must be a number"),
        ("uniform:3", "takes no parameter"),
        ("custom", "'custom' needs weights"),
    ],
)
def test_bad_strategy_is_a_clear_error(balance: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        group_probabilities(TUTORIAL, balance)


def test_unknown_strategy_lists_valid_names() -> None:
    with pytest.raises(UserError) as err:
        parse_balance("balanced")
    for name in ("proportional", "uniform", "power:ALPHA", "sqrt", "custom", "repeat-factor:T"):
        assert name in str(err.value)


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ({"7": 1.0}, "group '7', which does not exist; valid groups: 0, 1, 2, 3, 4"),
        ({"1": -1.0}, "weight of group '1' is -1.0"),
        ({"1": float("nan")}, "weight of group '1' is nan"),
        ({"1": float("inf")}, "weight of group '1' is inf"),
        (dict.fromkeys(TUTORIAL, 0.0), "leaves no group to sample"),
    ],
)
def test_bad_weights_are_clear_errors(weights: dict[str, float], message: str) -> None:
    warns = pytest.warns(SamplingWarning) if message.startswith("leaves") else nullcontext()
    with warns, pytest.raises(UserError, match=message):
        group_probabilities(TUTORIAL, "custom", weights)


def test_all_groups_empty_is_an_error() -> None:
    with pytest.warns(SamplingWarning), pytest.raises(UserError, match="no group to sample"):
        group_probabilities({"a": 0, "b": 0}, "uniform")
    with pytest.raises(UserError, match="no rows"):
        group_probabilities({}, "uniform")


def test_parse_weights_accepts_spaces_and_names() -> None:
    assert parse_weights(" 0=1, big group = 0.5 ,x=2e-1") == {"0": 1.0, "big group": 0.5, "x": 0.2}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("0", "must look like GROUP=WEIGHT"),
        ("=2", "must look like GROUP=WEIGHT"),
        ("0=one", "'one' is not a number"),
        ("0=1,0=2", "names group '0' twice"),
        ("0=-1", "weight of group '0' is -1.0"),
        ("0=nan", "weight of group '0' is nan"),
    ],
)
def test_parse_weights_errors(text: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        parse_weights(text)


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 1000), min_size=1, max_size=12),
    weights=st.lists(st.sampled_from([0.0, 0.5, 1.0, 3.0]), min_size=12, max_size=12),
    balance=st.sampled_from(["proportional", "uniform", "sqrt", "power:0.2", "repeat-factor:0.3"]),
)
def test_probabilities_are_a_distribution_over_sampleable_groups(
    sizes: list[int], weights: list[float], balance: str
) -> None:
    counts = {f"g{i}": n for i, n in enumerate(sizes)}
    w = {f"g{i}": weights[i] for i in range(len(sizes))}
    sampleable = [g for g in counts if counts[g] > 0 and w[g] > 0]
    if not sampleable:
        with pytest.warns(SamplingWarning), pytest.raises(UserError):
            group_probabilities(counts, balance, w)
        return
    with pytest.warns() if len(sampleable) < len(counts) else nullcontext():
        p = group_probabilities(counts, balance, w)
    assert list(p) == list(counts)
    assert sum(p.values()) == pytest.approx(1.0)
    assert all((p[g] > 0) == (g in sampleable) for g in counts)
    if balance in ("sqrt", "power:0.2"):  # with equal weights a bigger group never gets less
        same = [g for g in sampleable if w[g] == 1.0]
        for a in same:
            for b in same:
                if counts[a] > counts[b]:
                    assert p[a] >= p[b]
