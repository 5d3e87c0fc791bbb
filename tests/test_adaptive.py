"""Adaptive balancing: the update rule on hand-set numbers, the plan's per-epoch targets,
the same q on two replicas, and an adaptive run resumed equals the uninterrupted one."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest

from segbalance.config import load_config
from segbalance.errors import UserError
from segbalance.sampling import SamplingPlan, group_probabilities, largest_remainder
from segbalance.sampling.adaptive import adjusted_losses, initial_weights, mix, update_weights
from segbalance.sampling.weights import adaptive_base, parse_balance

sys.path.insert(0, str(Path(__file__).parent))
from _mw_worker import latest_checkpoint
from test_reliability_resume import Stop, StopAtEpoch
from test_trainer import TINY as TRAINER_TINY


# --------------------------------------------------------------------------- update rule
def test_two_updates_by_hand() -> None:
    q0 = initial_weights(np.array([0.2, 0.3, 0.5]))
    q1 = update_weights(q0, np.array([0.2, 0.5, 1.0]), eta=2.0)
    q2 = update_weights(q1, np.array([0.3, 0.3, 0.6]), eta=2.0)
    # q2 ∝ exp(2 * (0.2 + 0.3)), exp(2 * (0.5 + 0.3)), exp(2 * (1.0 + 0.6)) = e^1, e^1.6, e^3.2
    e = [math.exp(1.0), math.exp(1.6), math.exp(3.2)]
    np.testing.assert_allclose(q2, [x / sum(e) for x in e], rtol=1e-12)
    np.testing.assert_allclose(q2, [0.0844086, 0.1538025, 0.7617889], atol=1e-7)


def test_eta_zero_and_equal_losses_leave_q_alone() -> None:
    q = np.array([0.1, 0.6, 0.3])
    np.testing.assert_allclose(update_weights(q, np.array([0.4, 0.9, 0.1]), eta=0.0), q)
    np.testing.assert_allclose(update_weights(q, np.array([0.5, 0.5, 0.5]), eta=3.0), q)


def test_a_group_without_signal_counts_as_the_mean_and_zero_stays_zero() -> None:
    q = update_weights(np.array([0.25, 0.25, 0.5, 0.0]), np.array([1.0, 3.0, np.nan, 9.0]), 1.0)
    # The NaN group gets the mean loss 2: q ∝ 0.25e^1, 0.25e^3, 0.5e^2, 0.
    w = np.array([0.25 * math.e, 0.25 * math.e**3, 0.5 * math.e**2, 0.0])
    np.testing.assert_allclose(q, w / w.sum(), rtol=1e-12)


def test_huge_losses_do_not_overflow() -> None:
    q = update_weights(np.array([0.5, 0.5]), np.array([1e4, 1e4 + 1.0]), eta=100.0)
    assert np.isfinite(q).all() and q[1] == pytest.approx(1.0)


def test_the_adjustment_adds_c_over_root_n_and_favours_small_groups() -> None:
    losses = np.array([0.1, 0.3, 0.2, np.nan])
    out = adjusted_losses(losses, np.array([400, 25, 4, 16]), 2.0)
    np.testing.assert_allclose(out[:3], [0.1 + 0.1, 0.3 + 0.4, 0.2 + 1.0], rtol=1e-12)
    assert math.isnan(out[3])  # no signal stays no signal (counted as the mean later)
    np.testing.assert_array_equal(adjusted_losses(losses, np.array([400, 25, 4, 16]), 0.0), losses)
    # A group without images (not sampled) gets no adjustment and no division by zero.
    assert adjusted_losses(np.array([0.5]), np.array([0]), 3.0).tolist() == [0.5]
    # The easy-looking small group (loss 0.2, 4 images) now gains weight over the large one.
    q = update_weights(
        np.array([0.5, 0.5]), adjusted_losses(np.array([0.2, 0.4]), np.array([4, 400]), 1.0), 1.0
    )
    assert q[0] > q[1]


def test_mix_without_bounds_is_the_convex_combination() -> None:
    p = mix(np.array([0.5, 0.25, 0.25]), np.array([0.1, 0.1, 0.8]), 0.5, 0.0, 100.0,
            np.array([100, 100, 100]), 300)  # fmt: skip
    np.testing.assert_allclose(p, [0.3, 0.175, 0.525])


def test_mix_honours_the_cap_and_the_floor() -> None:
    sizes = np.array([34, 500, 1000])
    base = np.full(3, 1 / 3)
    # q wants group 0 (34 images) 90% of a 1000-sample epoch: 26 showings per image.
    p = mix(base, np.array([0.9, 0.09, 0.01]), 1.0, 0.1, 5.0, sizes, 1000)
    # Group 0 at its cap 5 * 34 / 1000; group 2 at the floor 0.1; group 1 takes the rest.
    np.testing.assert_allclose(p, [0.17, 0.73, 0.1])
    assert p[0] * 1000 / 34 <= 5.0 + 1e-9 and p.sum() == pytest.approx(1.0)


def test_mix_scales_the_free_groups_proportionally() -> None:
    p = mix(np.full(3, 1 / 3), np.array([0.9, 0.05, 0.05]), 1.0, 0.1, 5.0,
            np.array([34, 500, 1000]), 1000)  # fmt: skip
    np.testing.assert_allclose(p, [0.17, 0.415, 0.415])


def test_a_cap_too_low_to_fill_the_epoch_gives_natural_proportions() -> None:
    sizes = np.array([10, 30])
    p = mix(np.array([0.5, 0.5]), np.array([0.5, 0.5]), 0.5, 0.0, 1.0, sizes, 100)
    np.testing.assert_allclose(p, [0.25, 0.75])


def test_a_floor_above_one_over_groups_and_left_out_groups() -> None:
    base = np.array([0.5, 0.0, 0.5])  # group 1 left out (weight 0)
    p = mix(base, np.array([1.0, 0.0, 0.0]), 1.0, 0.9, 100.0, np.array([5, 5, 5]), 10)
    np.testing.assert_allclose(p, [0.5, 0.0, 0.5])  # floor lowered to 1/2


@pytest.mark.parametrize("seed", range(20))
def test_mix_is_a_distribution_inside_its_bounds(seed: int) -> None:
    rng = np.random.default_rng(seed)
    g = int(rng.integers(2, 12))
    sizes = rng.integers(1, 300, g)
    base, q = rng.dirichlet(np.ones(g)), rng.dirichlet(np.ones(g) * 0.2)
    floor, cap, E = float(rng.uniform(0, 1 / g)), float(rng.uniform(1, 20)), int(sizes.sum())
    p = mix(base, q, float(rng.uniform()), floor, cap, sizes, E)
    assert p.sum() == pytest.approx(1.0) and (p >= 0).all()
    hi = cap * sizes / E
    assert (p <= hi + 1e-12).all() and (p >= np.minimum(min(floor, 1 / g), hi) - 1e-12).all()


# --------------------------------------------------------------------------- strategies
def test_adaptive_names_and_their_base() -> None:
    assert adaptive_base("adaptive") == "proportional"
    assert adaptive_base("adaptive:uniform") == "uniform"
    assert adaptive_base(" adaptive:power:0.3 ") == "power:0.3"
    assert parse_balance("adaptive:sqrt") == ("adaptive", None)
    sizes = {"a": 30, "b": 10}
    assert group_probabilities(sizes, "adaptive:proportional") == {"a": 0.75, "b": 0.25}
    for bad in ("adaptive:adaptive", "adaptive:nope", "adaptive:power:2"):
        with pytest.raises(UserError):
            parse_balance(bad)


def test_config_keys_and_their_bounds() -> None:
    cfg = load_config(None, {"sampling.balance": "adaptive:sqrt", "sampling.adaptive_eta": 0.5})
    assert cfg.sampling.adaptive_eta == 0.5 and cfg.sampling.adaptive_signal == "valid_iou"
    for key, value in [
        ("sampling.adaptive_mix", 1.5),
        ("sampling.adaptive_floor", -0.1),
        ("sampling.adaptive_cap", 0),
        ("sampling.adaptive_signal", "train_accuracy"),
        ("sampling.balance", "adaptive:custom"),  # custom needs weights here too
    ]:
        with pytest.raises(UserError, match=key.split(".")[1] if "adaptive_" in key else "cust"):
            load_config(None, {"sampling.balance": "adaptive", key: value})
    with pytest.raises(UserError, match="sample_weights"):
        load_config(None, {"sampling.balance": "adaptive", "sampling.sample_weights": True})


# --------------------------------------------------------------------------- plan targets
IDS = np.repeat([0, 1, 2], [7, 20, 3])
NAMES = ["a", "b", "c"]
TARGETS = {1: [0.2, 0.2, 0.6], 2: [0.6, 0.3, 0.1], 3: [0.1, 0.1, 0.8]}


def _plan(mode: str = "exact") -> SamplingPlan:
    return SamplingPlan(IDS, NAMES, balance="uniform", mode=mode, seed=5, epoch_length=24)


def test_targets_give_each_epoch_its_counts_and_leave_earlier_epochs() -> None:
    plan = _plan()
    before = [plan.epoch(e).copy() for e in range(2)]
    for e, p in TARGETS.items():
        plan.set_target(e, p)
    np.testing.assert_array_equal(plan.epoch(0), before[0])
    assert plan.counts(0) == {"a": 8, "b": 8, "c": 8}
    for e, p in TARGETS.items():
        want = largest_remainder(np.array(p) / sum(p), 24).tolist()
        assert list(plan.counts(e).values()) == want
        assert np.bincount(IDS[plan.epoch(e)], minlength=3).tolist() == want
        assert plan.target_of(e) == pytest.approx(dict(zip(NAMES, p, strict=True)))


def test_streams_show_every_image_before_any_repeat_across_changing_mixes() -> None:
    plan = _plan()
    for e, p in TARGETS.items():
        plan.set_target(e, p)
    rows, ids = np.concatenate([plan.epoch(e) for e in range(5)]), IDS
    for g in range(3):
        seen, mine = rows[ids[rows] == g], np.flatnonzero(ids == g).tolist()
        for k in range(0, len(seen) - len(mine) + 1, len(mine)):  # each pass: a permutation
            assert sorted(seen[k : k + len(mine)].tolist()) == mine


@pytest.mark.parametrize("mode", ["exact", "random"])
def test_a_rebuilt_plan_gives_the_same_epochs(mode: str) -> None:
    """Resume: a new plan given the recorded targets builds epoch e as the first one did."""
    first = _plan(mode)
    for e, p in TARGETS.items():
        first.set_target(e, p)
    epochs = [first.epoch(e).copy() for e in range(5)]
    again = _plan(mode)
    for e in sorted(TARGETS, reverse=True):  # order of setting does not matter
        again.set_target(e, TARGETS[e])
    for e in (4, 2, 3, 0, 1):
        np.testing.assert_array_equal(again.epoch(e), epochs[e])


def test_a_later_target_changes_only_later_epochs() -> None:
    plan = _plan()
    plan.set_target(1, TARGETS[1])
    e1, e2 = plan.epoch(1).copy(), plan.epoch(2).copy()
    plan.set_target(2, TARGETS[2])
    np.testing.assert_array_equal(plan.epoch(1), e1)
    assert not np.array_equal(plan.epoch(2), e2)


def test_bad_targets_are_refused() -> None:
    plan = SamplingPlan([0, 0, 1], ["a", "b", "empty"], seed=0)
    for bad in ([0.5, 0.5], [0.5, -0.1, 0.6], [0.5, 0.5, math.nan], [0, 0, 0], [0.4, 0.4, 0.2]):
        with pytest.raises(UserError, match="epoch 1"):
            plan.set_target(1, bad)


# --------------------------------------------------------------------------- the hook
def _hook(
    signal: str, adjustment: float = 0.0, sizes: tuple[int, ...] = (10, 10, 10)
) -> tuple[Any, Any, SamplingPlan]:
    from segbalance.train.adaptive import AdaptiveBalance
    from segbalance.train.checkpoint import RunState

    cfg = load_config(
        None,
        {
            "sampling.balance": "adaptive",
            "sampling.adaptive_signal": signal,
            "sampling.adaptive_eta": 2.0,
            "sampling.adaptive_mix": 0.5,
            "sampling.adaptive_floor": 0.0,
            "sampling.adaptive_cap": 1000.0,
            "sampling.adaptive_adjustment": adjustment,
        },
    ).sampling
    plan = SamplingPlan(np.repeat([0, 1, 2], sizes), NAMES, seed=0, epoch_length=30)
    hook = AdaptiveBalance(cfg, plan, epochs=3)
    state = RunState(0.1, adaptive=(3, 3))
    hook.begin(state, plan)
    return hook, state, plan


def _val(losses: list[float], ious: list[float]) -> dict[str, Any]:
    return {
        "group_loss": dict(zip(NAMES, losses, strict=True)),
        "groups": {g: {"iou": x} for g, x in zip(NAMES, ious, strict=True)},
    }


@pytest.mark.parametrize("signal", ["valid_loss", "valid_iou", "train_loss"])
def test_the_hook_updates_q_and_sets_the_next_epochs_by_hand(signal: str) -> None:
    hook, state, plan = _hook(signal)
    epochs = [([0.2, 0.5, 1.0], [0.8, 0.5, 0.0]), ([0.3, 0.3, 0.6], [0.7, 0.7, 0.4])]
    for e, (losses, ious) in enumerate(epochs):
        if signal == "train_loss":  # sums over the epoch's samples, in two steps
            seen = np.array(list(plan.counts(e).values()))
            hook.add_train_loss(state, np.array(losses) * seen * 0.25)
            hook.add_train_loss(state, np.array(losses) * seen * 0.75)
        hook.end_epoch(e, _val(losses, ious), state, plan)
    # Every signal is L = [0.2, 0.5, 1.0] then [0.3, 0.3, 0.6] (1 - IoU for valid_iou).
    e = np.exp([1.0, 1.6, 3.2])
    np.testing.assert_allclose(state.get("group_q"), e / e.sum(), rtol=1e-9)
    p = state.get("group_p")
    np.testing.assert_allclose(p[0], [1 / 3] * 3)
    q1 = np.exp([0.4, 1.0, 2.0]) / np.exp([0.4, 1.0, 2.0]).sum()
    np.testing.assert_allclose(p[1], 0.5 / 3 + 0.5 * q1, rtol=1e-9)
    assert plan.target_of(1) == pytest.approx(dict(zip(NAMES, p[1], strict=True)))
    assert plan.target_of(2) == pytest.approx(dict(zip(NAMES, p[2], strict=True)))
    assert np.asarray(state.get("run_group_loss")).tolist() == [0.0, 0.0, 0.0]
    # A resumed run's plan gets the same targets back from the state.
    fresh = SamplingPlan(np.repeat([0, 1, 2], [10, 10, 10]), NAMES, seed=0, epoch_length=30)
    hook.begin(state, fresh)
    for epoch in range(3):
        np.testing.assert_array_equal(fresh.epoch(epoch), plan.epoch(epoch))


def test_the_hook_adds_the_adjustment_of_each_groups_train_images() -> None:
    hook, state, plan = _hook("valid_loss", adjustment=0.5, sizes=(25, 4, 1))
    hook.end_epoch(0, _val([0.2, 0.5, 1.0], [0.8, 0.5, 0.0]), state, plan)
    # eta 2 * (L + 0.5 / sqrt(n)) with n = 25, 4, 1 train images.
    step = 2.0 * (np.array([0.2, 0.5, 1.0]) + 0.5 / np.sqrt([25.0, 4.0, 1.0]))
    np.testing.assert_allclose(state.get("group_q"), np.exp(step) / np.exp(step).sum())
    plain = np.exp([0.4, 1.0, 2.0]) / np.exp([0.4, 1.0, 2.0]).sum()
    assert state.get("group_q")[2] > plain[2] + 0.05  # the 1-image group gains most
    assert hook.facts(state)["adjustment"] == 0.5


# --------------------------------------------------------------------------- replicas
REPLICAS = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    from segbalance.config import LossConfig
    from segbalance.data.manifest import read_manifest
    from segbalance.losses import get_loss
    from segbalance.sampling.adaptive import initial_weights, update_weights
    from segbalance.train import steps
    valid = read_manifest(sys.argv[1]).select(split="valid")
    keras.utils.set_random_seed(3)
    inputs = keras.Input((64, 64, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    model = keras.Model(inputs, keras.layers.Conv2D(1, 3, padding="same")(x))
    loss_fn = get_loss(LossConfig(name="bce"))
    groups = list(valid.groups)
    out = {}
    for name, strategy in [
        ("one", tf.distribute.get_strategy()),
        ("two", tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])),
    ]:
        ds, n, real = steps.eval_dataset(strategy, valid, (64, 64), 4)
        step = steps.make_eval_step(strategy, model, loss_fn, len(groups), 0.5, real)
        val = steps.validate(step, ds, n, groups)
        losses = np.array([val["group_loss"][g] for g in groups])
        q = initial_weights(np.ones(len(groups)))
        for _ in range(2):
            q = update_weights(q, losses, 5.0)
        out[name] = {"losses": losses.tolist(), "q": q.tolist(), "val_loss": val["val_loss"]}
    print(json.dumps(out))
    """
)


def test_two_replicas_sum_the_group_losses_so_q_is_the_same(
    synth_manifest: Path, tmp_path: Path
) -> None:
    script = tmp_path / "replicas.py"
    script.write_text(REPLICAS)
    done = subprocess.run(
        [sys.executable, str(script), str(synth_manifest)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    one, two = out["one"], out["two"]
    # Per-group means of the summed losses: equal up to the order of float additions.
    np.testing.assert_allclose(two["losses"], one["losses"], rtol=1e-5)
    np.testing.assert_allclose(two["q"], one["q"], rtol=1e-4)
    assert two["val_loss"] == pytest.approx(one["val_loss"], rel=1e-5)
    assert len(set(np.round(one["losses"], 6))) > 1  # the groups really differ


# --------------------------------------------------------------------------- runs
# The trainer tests' tiny run, three epochs so two updates shape the last one.
TINY = {
    **TRAINER_TINY,
    "train.epochs": 3,
    # Group DRO's uniform start, so the first epoch's weights are known without the data.
    "sampling.balance": "adaptive:uniform",
    # Strong steps so the 3-epoch run visibly moves its weights.
    "sampling.adaptive_eta": 20.0,
    "sampling.adaptive_mix": 1.0,
    "sampling.adaptive_floor": 0.1,
    # The same seeded augmentation ops, not XLA-compiled: compiling them anew in each of the
    # four trainings cost ~4 s of CPU each (the training tests left at the default jit them).
    "augment.jit": False,
}


class Record(keras.callbacks.Callback):
    """Per epoch the group counts the trainer reads; the final weights."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: dict[int, dict[str, int]] = {}
        self.weights: list[np.ndarray] = []

    def on_epoch_begin(self, epoch: int, logs: object = None) -> None:
        trainer = self.params["trainer"]
        _, indices = trainer.epoch_reads(epoch, 0, 1, 0)
        groups = [trainer.train_rows.group[i] for i in indices]
        self.counts[epoch] = {g: groups.count(g) for g in trainer.groups}

    def on_train_end(self, logs: object = None) -> None:
        self.weights = self.model.get_weights()


STABLE = ("seconds", "images_per_s")


def _rows(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k not in STABLE} for r in history]


class StopAtStep(keras.callbacks.Callback):
    """Ends the run when step ``step`` of epoch ``epoch`` begins (after a mid-epoch save)."""

    def __init__(self, epoch: int, step: int) -> None:
        super().__init__()
        self.epoch, self.step = epoch, step
        self.at = -1

    def on_epoch_begin(self, epoch: int, logs: object = None) -> None:
        self.at = epoch

    def on_train_batch_begin(self, batch: int, logs: object = None) -> None:
        if (self.at, batch) == (self.epoch, self.step):
            raise Stop


@pytest.mark.heavy
def test_adaptive_resume_equals_the_uninterrupted_run(synth_manifest: Path, tmp_path: Path) -> None:
    """One run killed twice, resumed each time: it ends as the uninterrupted run.

    First mid-epoch 2, after the step-2 checkpoint (the group train-loss sums of the epoch in
    progress resume), then between epochs 2 and 3 (the recorded mixes and q resume). The
    train_loss signal keeps the most state across a kill; one uninterrupted run serves both
    kills (each training costs ~15 s, mostly tracing, on a 2-core CI machine).
    """
    from segbalance.train import train
    from segbalance.train.logs import read_history

    overrides = {"sampling.adaptive_signal": "train_loss", "train.checkpoint_every_steps": 2}
    cfg = load_config(None, {**TINY, **overrides, "data.manifest": str(synth_manifest)})
    whole = Record()
    full = train(cfg, tmp_path / "full", callbacks=[whole])
    cut = tmp_path / "cut"
    with pytest.raises(Stop):
        train(cfg, cut, callbacks=[StopAtStep(1, 3)])
    assert latest_checkpoint(cut) == 4 + 2  # 4 steps per epoch: epoch 2 step 2
    assert len(read_history(cut / "history.csv")) == 1
    with pytest.raises(Stop):
        train(cfg, cut, resume=True, callbacks=[StopAtEpoch(2)])
    assert latest_checkpoint(cut) == 2 * 4  # the end of epoch 2
    assert len(read_history(cut / "history.csv")) == 2
    resumed_rec = Record()
    resumed = train(cfg, cut, resume=True, callbacks=[resumed_rec])

    groups = list(full.metrics["groups"])
    weights = [[r[f"weight_{g}"] for g in groups] for r in full.history]
    assert weights[0] == pytest.approx([1 / len(groups)] * len(groups))  # the base plan
    assert weights[2] != pytest.approx(weights[0], abs=1e-3)  # the mix moved
    for e, row in enumerate(weights):  # each epoch read the counts of its recorded mix
        want = largest_remainder(np.array(row), 8).tolist()
        assert list(whole.counts[e].values()) == want
    assert list(resumed_rec.counts) == [2] and resumed_rec.counts[2] == whole.counts[2]
    # history.csv as written (6 digits): weights, losses, IoUs of every epoch.
    assert _rows(read_history(cut / "history.csv")) == _rows(
        read_history(tmp_path / "full" / "history.csv")
    )
    assert resumed.metrics["adaptive"] == full.metrics["adaptive"]
    for a, b in zip(resumed_rec.weights, whole.weights, strict=True):
        np.testing.assert_array_equal(a, b)
    header = (tmp_path / "full" / "history.csv").read_text().splitlines()[0].split(",")
    assert {f"weight_{g}" for g in groups} | {f"val_loss_{g}" for g in groups} <= set(header)
    assert (tmp_path / "full" / full.metrics["adaptive"]["figure"]).is_file()
    final_q = full.metrics["adaptive"]["final_q"]
    assert sum(final_q.values()) == pytest.approx(1.0)


def test_plan_shows_the_base_plan_and_says_later_epochs_adapt(
    synth_manifest: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from segbalance.cli import main

    assert main(["plan", str(synth_manifest), "--balance", "adaptive:sqrt", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["balance"] == "adaptive:sqrt" and report["adaptive"]["base"] == "sqrt"
    sizes = {g["name"]: g["images"] for g in report["groups"]}
    assert report["target"] == pytest.approx(group_probabilities(sizes, "sqrt"))
    assert main(["plan", str(synth_manifest), "--balance", "adaptive"]) == 0
    assert "later epochs adapt" in capsys.readouterr().out


def test_a_run_from_before_the_adjustment_resumes_only_as_it_started(tmp_path: Path) -> None:
    import yaml

    from segbalance.config import config_from_dict, config_to_yaml
    from segbalance.train.workdir import CONFIG, config_diff, read_run_config

    cfg = load_config(None, {"sampling.balance": "adaptive"})
    raw = yaml.safe_load(config_to_yaml(cfg))
    del raw["sampling"]["adaptive_adjustment"]  # as a run's config.yaml before the key
    (tmp_path / CONFIG).write_text(yaml.safe_dump(raw))
    assert config_from_dict(raw).sampling.adaptive_adjustment == 0.0
    assert "adaptive_adjustment" not in raw["sampling"]  # the caller's dict is not changed
    old = read_run_config(tmp_path)
    assert old.sampling.adaptive_adjustment == 0.0
    assert config_diff(old, cfg) == ["sampling.adaptive_adjustment: 0.0 -> 1.0"]
    # `train --resume` rebuilds the config from the same file: it reads the same 0, so
    # the resume goes on as the run started (a user's own file keeps the new default).
    resumed = load_config(tmp_path / CONFIG, {}, saved=True)
    assert config_diff(old, resumed) == [] and resumed.sampling.adaptive_adjustment == 0.0
    assert load_config(tmp_path / CONFIG).sampling.adaptive_adjustment == 1.0
    (tmp_path / CONFIG).write_text(config_to_yaml(cfg))
    assert read_run_config(tmp_path).sampling.adaptive_adjustment == 1.0
