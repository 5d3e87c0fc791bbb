"""The training loop: end-to-end artifacts, step semantics, validation sums, work-dir rules."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from segbalance.cli import main
from segbalance.config import Config, LossConfig, OptimizerConfig, load_config
from segbalance.errors import UserError
from segbalance.losses import get_loss
from segbalance.train import logs as runlog
from segbalance.train import schedule, steps
from segbalance.train.workdir import WorkDir, check_work_dir, config_diff, create_work_dir

GROUPS = ["0", "1", "2", "3", "4"]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from segbalance.data.prepare import prepare_dataset
    from segbalance.data.synth import generate

    root = tmp_path_factory.mktemp("synth")
    generate(root, scale=0.02, size=64, seed=0, progress=False, workers=1)
    return prepare_dataset(root, progress=False, workers=1).manifest_path


def tiny_config(manifest: Path, **extra: object) -> Config:
    overrides = {
        "data.manifest": str(manifest),
        "data.image_size": 64,
        "data.epoch_length": 8,
        "model.name": "unet-small",
        "model.encoder_weights": "none",
        "model.decoder_filters": [64, 32, 16, 8, 8],
        "train.batch_size": 2,
        "train.epochs": 2,
        **extra,
    }
    return load_config(None, overrides)


def tiny_model(with_encoder: bool = False) -> keras.Model:
    """Two 3x3 convs (no batch norm: training=True changes nothing) -> float32 logits."""
    inputs = keras.Input((32, 32, 3), name="image")
    x = keras.layers.Rescaling(1 / 255)(inputs)
    if with_encoder:
        inner = keras.Input((32, 32, 3))
        enc = keras.Model(inner, keras.layers.Conv2D(4, 3, padding="same")(inner), name="encoder")
        x = enc(x)
    else:
        x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(x)
    out = keras.layers.Conv2D(1, 3, padding="same", dtype="float32", name="logits")(x)
    return keras.Model(inputs, out)


def tiny_batch(seed: int = 0, n: int = 2) -> dict[str, tf.Tensor]:
    rng = np.random.default_rng(seed)
    image = rng.uniform(0, 255, (n, 32, 32, 3)).astype(np.float32)
    mask = (image[..., :1] > 127).astype(np.float32)  # learnable from the image
    return {"image": tf.constant(image), "mask": tf.constant(mask)}


# --------------------------------------------------------------------------- end to end
@pytest.mark.heavy
def test_two_epochs_write_every_artifact(manifest: Path, tmp_path: Path) -> None:
    from segbalance.artifacts import load_model
    from segbalance.data.manifest import read_manifest
    from segbalance.pipeline.dataset import build_eval_dataset
    from segbalance.sampling import SamplingPlan
    from segbalance.train import train

    cfg = tiny_config(manifest)
    work = tmp_path / "run"
    result = train(cfg, work)
    assert result.epochs_completed == 2 and not result.already_complete

    # best.keras loads with safe_mode and carries what evaluate/predict need
    model, meta = load_model(work / "best.keras")
    assert meta.image_size == (64, 64) and meta.groups == GROUPS
    assert (meta.threshold, meta.preprocessing, meta.output) == (0.5, "0-255", "logits")
    assert meta.config == cfg.model_dump(mode="json")
    assert meta.extra["epoch"] == result.best_epoch
    assert meta.extra["score"] == pytest.approx(result.best_score)

    rows = runlog.read_history(work / "history.csv")
    assert [r["epoch"] for r in rows] == [1, 2]
    with (work / "history.csv").open() as fh:
        assert next(csv.reader(fh)) == runlog.history_columns(GROUPS)
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["val_loss"]) for r in rows)

    # per-group validation numbers equal a numpy computation on the saved model
    best = rows[result.best_epoch - 1]
    valid = read_manifest(manifest).select(split="valid")
    counts = np.zeros((len(GROUPS), 4))
    for batch in build_eval_dataset(valid, image_size=(64, 64), batch_size=4):
        pred = model(batch["image"], training=False).numpy() > 0.0
        true = batch["mask"].numpy() > 0.5
        for g, p, t in zip(batch["group"].numpy(), pred, true, strict=True):
            counts[g] += [(p & t).sum(), (p & ~t).sum(), (~p & t).sum(), (~p & ~t).sum()]
    for g, (tp, fp, fn, _) in zip(GROUPS, counts, strict=True):
        iou = tp / (tp + fp + fn) if tp + fp + fn else 1.0
        assert best[f"iou_{g}"] == pytest.approx(iou, abs=1e-5)
    ious = [best[f"iou_{g}"] for g in GROUPS]
    assert best["mean_group_iou"] == pytest.approx(np.mean(ious), abs=1e-5)
    assert best["worst_group_iou"] == pytest.approx(min(ious), abs=1e-5)

    metrics = json.loads((work / "metrics.json").read_text())
    for key in ("monitor", "best_epoch", "best_score", "epochs_completed", "best", "last"):
        assert key in metrics
    assert metrics["monitor"] == "mean_group_iou" and metrics["epochs_completed"] == 2
    assert set(metrics["best"]["groups"]) == set(GROUPS)
    assert load_config(work / "config.yaml") == cfg
    assert len(list((work / "checkpoints").glob("ckpt-*.index"))) <= cfg.train.keep_checkpoints

    # TensorBoard: losses, per-group IoU, LR and the realised mix of the plan
    train_rows = read_manifest(manifest).select(split="train")
    plan = SamplingPlan(train_rows.group_ids, GROUPS, balance="uniform", seed=0, epoch_length=8)
    scalars = _read_scalars(work / "logs")
    for tag in ("epoch/loss", "epoch/val_loss", "epoch/lr", "groups/mean_group_iou"):
        assert set(scalars[tag]) == {1, 2}
    for g in GROUPS:
        assert scalars[f"group_iou/{g}"][1] == pytest.approx(rows[0][f"iou_{g}"], abs=1e-5)
        assert scalars[f"group_mix/{g}"][2] == pytest.approx(plan.counts(1)[g] / 8)

    with pytest.raises(UserError, match="not empty"):
        train(cfg, work)


def _read_scalars(logdir: Path) -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = {}
    files = list(logdir.glob("events.out.tfevents.*"))
    assert files, f"no TensorBoard event file in {logdir}"
    for path in files:
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                array = tf.make_ndarray(value.tensor)
                if array.ndim:  # the group images written beside the scalars
                    continue
                number = float(array)
                out.setdefault(value.tag, {})[event.step] = number
    return out


def test_data_groups_limit_training_to_those_groups(manifest: Path) -> None:
    from segbalance.train.plan import load_data

    train, valid = load_data(tiny_config(manifest, **{"data.groups": ["4", "0"]}))
    assert train.groups == ["0", "4"] == valid.groups  # manifest order, ids 0 and 1
    assert set(train.group) == {"0", "4"} and set(train.group_ids.tolist()) == {0, 1}


def test_sample_weights_balance_the_loss_instead_of_the_sampling(manifest: Path) -> None:
    from segbalance.train.plan import load_data, loss_weights

    cfg = tiny_config(manifest, **{"sampling.sample_weights": True})
    train, _ = load_data(cfg)
    balance, weights = loss_weights(cfg, train)
    counts = train.counts()  # 12, 2, 2, 2, 2
    assert balance == "proportional"
    n = len(train)
    for g, w in zip(train.group, weights, strict=True):
        assert w == pytest.approx(0.2 / (counts[g] / n))  # uniform target / natural share
    assert weights.sum() == pytest.approx(n)  # the mean weight is 1
    assert loss_weights(tiny_config(manifest), train) == ("uniform", None)


# --------------------------------------------------------------------------- the step
def _sgd(lr: float = 0.1, clipnorm: float | None = None) -> keras.optimizers.Optimizer:
    cfg = OptimizerConfig(name="sgd", lr=lr, schedule="constant", clipnorm=clipnorm)
    return schedule.build_optimizer(cfg, steps_per_epoch=1, epochs=1, policy="float32")


def test_step_loss_is_the_global_batch_mean_and_weights_scale_it() -> None:
    keras.utils.set_random_seed(1)
    model, loss_fn = tiny_model(), get_loss(LossConfig(name="bce"))
    opt = _sgd()
    opt.build(model.trainable_variables)
    steps.own_gradient_reduction(opt)
    step = steps.make_train_step(tf.distribute.get_strategy(), model, opt, loss_fn, 2, 0.5)
    batch = tiny_batch()
    per_sample = loss_fn.call(batch["mask"], model(batch["image"])).numpy()
    loss, counts = step(batch)
    assert float(loss) == pytest.approx(per_sample.mean(), rel=1e-5)
    assert float(tf.reduce_sum(counts)) == 2 * 32 * 32  # tp+fp+fn+tn = every pixel

    weighted = {**tiny_batch(seed=2), "weight": tf.constant([1.0, 0.0])}
    per_sample = loss_fn.call(weighted["mask"], model(weighted["image"])).numpy()
    loss, _ = step(weighted)
    assert float(loss) == pytest.approx(per_sample[0] / 2, rel=1e-5)


def test_frozen_encoder_gets_no_update_until_unfrozen() -> None:
    from segbalance.models import set_encoder_trainable

    keras.utils.set_random_seed(2)
    model, loss_fn = tiny_model(with_encoder=True), get_loss(LossConfig(name="bce"))
    opt = _sgd(lr=0.5)
    opt.build(model.trainable_variables)  # every variable, as the loop does
    steps.own_gradient_reduction(opt)
    encoder = model.get_layer("encoder")
    assert set_encoder_trainable(model, False)
    frozen_step = steps.make_train_step(tf.distribute.get_strategy(), model, opt, loss_fn, 2, 0.5)
    before = [w.numpy().copy() for w in encoder.weights]
    head = model.get_layer("logits").kernel.numpy().copy()
    frozen_step(tiny_batch())
    assert all(np.array_equal(a, w.numpy()) for a, w in zip(before, encoder.weights, strict=True))
    assert not np.allclose(head, model.get_layer("logits").kernel.numpy())

    set_encoder_trainable(model, True)
    step = steps.make_train_step(tf.distribute.get_strategy(), model, opt, loss_fn, 2, 0.5)
    step(tiny_batch(seed=3))
    assert not np.allclose(before[0], encoder.weights[0].numpy())


def test_validation_pads_to_whole_batches_and_sums_counts_per_group(manifest: Path) -> None:
    from segbalance.data.manifest import read_manifest
    from segbalance.pipeline.dataset import build_eval_dataset

    valid = read_manifest(manifest).select(split="valid")  # 7 rows: batch 4 pads one
    keras.utils.set_random_seed(3)
    inputs = keras.Input((64, 64, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    model = keras.Model(inputs, keras.layers.Conv2D(1, 3, padding="same")(x))
    strategy = tf.distribute.get_strategy()
    loss_fn = get_loss(LossConfig(name="bce"))
    ds, n_steps, real = steps.eval_dataset(strategy, valid, (64, 64), 4)
    assert (n_steps, real) == (2, 7)
    eval_step = steps.make_eval_step(strategy, model, loss_fn, len(GROUPS), 0.5, real)
    out = steps.validate(eval_step, ds, n_steps, GROUPS)

    counts, losses = np.zeros((len(GROUPS), 4)), []
    for batch in build_eval_dataset(valid, image_size=(64, 64), batch_size=7):
        logits = model(batch["image"]).numpy()
        losses = loss_fn.call(batch["mask"], logits).numpy()
        pred, true = logits > 0, batch["mask"].numpy() > 0.5
        for g, p, t in zip(batch["group"].numpy(), pred, true, strict=True):
            counts[g] += [(p & t).sum(), (p & ~t).sum(), (~p & t).sum(), (~p & ~t).sum()]
    assert [out["groups"][g]["images"] for g in GROUPS] == [3, 1, 1, 1, 1]
    for g, (tp, fp, fn, _) in zip(GROUPS, counts, strict=True):
        expected = tp / (tp + fp + fn) if tp + fp + fn else 1.0
        assert out["groups"][g]["iou"] == pytest.approx(expected, abs=1e-9)
    tp, fp, fn, _ = counts.sum(axis=0)
    assert out["val_iou"] == pytest.approx(tp / (tp + fp + fn))
    assert out["val_loss"] == pytest.approx(float(np.mean(losses)), rel=1e-5)
    worst = min(GROUPS, key=lambda g: out["groups"][g]["iou"])
    assert out["worst_group"] == worst


def _bookkeeper(**overrides: object):
    """The Monitor of a run with these config overrides (nothing written)."""
    from segbalance.train.checkpoint import RunState
    from segbalance.train.monitor import Monitor

    cfg = load_config(None, overrides)
    return Monitor(cfg, RunState(cfg.optimizer.lr), say=lambda text: None)


def test_early_stopping_counts_epochs_without_improvement() -> None:
    s = _bookkeeper(**{"train.early_stopping_patience": 2, "train.monitor": "val_loss"})
    outcomes = []
    for epoch, val_loss in enumerate([0.9, 0.8, 0.85, 0.7, 0.75, 0.71]):
        improved = s.improved(epoch, {"val_loss": val_loss})
        outcomes.append((improved, s.should_stop({"val_loss": val_loss})))
    assert outcomes == [
        (True, False),
        (True, False),
        (False, False),
        (True, False),
        (False, False),
        (False, True),  # two epochs without beating 0.7
    ]
    assert s.state.get("best") == pytest.approx(0.7) and s.state.get("best_epoch") == 4


def test_plateau_state_lives_in_the_run_state() -> None:
    s = _bookkeeper(
        **{
            "optimizer.schedule": "plateau",
            "optimizer.lr": 0.1,
            "optimizer.plateau_patience": 1,
            "optimizer.plateau_factor": 0.5,
        }
    )
    for epoch, iou in enumerate([0.3, 0.2, 0.25, 0.4]):
        s.improved(epoch, {"mean_group_iou": iou})
        s.should_stop({"mean_group_iou": iou})
    assert s.state.get("lr") == pytest.approx(0.025)  # halved after epochs 2 and 3
    assert s.state.get("plateau_best") == pytest.approx(0.4)
    assert s.state.get("bad_epochs") == 0  # no early stopping configured


# --------------------------------------------------------------------------- schedules
def test_warmup_cosine_by_hand_and_serializable() -> None:
    s = schedule.WarmupCosine(1e-3, total_steps=110, warmup_steps=10, min_lr=1e-5)
    assert float(s(0)) == pytest.approx(1e-4)  # (0 + 1) / 10 of the peak
    assert float(s(9)) == pytest.approx(1e-3)
    assert float(s(10)) == pytest.approx(1e-3)  # cosine starts at the peak
    assert float(s(60)) == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5))  # half way
    assert float(s(110)) == pytest.approx(1e-5)
    assert float(s(500)) == pytest.approx(1e-5)
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(s))
    assert isinstance(again, schedule.WarmupCosine) and float(again(60)) == float(s(60))


def test_plateau_reduces_after_patience_and_respects_the_floor() -> None:
    p = schedule.Plateau(factor=0.5, patience=2, min_lr=0.3, mode="max")
    lrs = [p.step(v, 1.0) for v in (0.5, 0.4, 0.4)]
    assert lrs == [1.0, 1.0, 0.5] and p.wait == 0 and p.best == 0.5
    assert p.step(0.6, 0.5) == 0.5 and p.best == 0.6
    p.step(0.1, 0.5)
    assert p.step(0.1, 0.5) == 0.3  # 0.25 is below min_lr
    low = schedule.Plateau(factor=0.1, patience=1, min_lr=0.0, mode="min")
    assert low.step(2.0, 1.0) == 1.0 and low.step(3.0, 1.0) == pytest.approx(0.1)


def test_optimizers_by_name_and_loss_scaling_for_float16() -> None:
    for name, cls in (("adamw", "AdamW"), ("adam", "Adam"), ("sgd", "SGD")):
        opt = schedule.build_optimizer(OptimizerConfig(name=name), 10, 3, "float32")
        assert type(opt).__name__ == cls and opt.clipnorm == 1.0
    f16 = schedule.build_optimizer(OptimizerConfig(), 10, 3, "mixed_float16")
    assert isinstance(f16, keras.optimizers.LossScaleOptimizer)
    assert isinstance(schedule.inner_optimizer(f16), keras.optimizers.AdamW)
    plateau = schedule.build_optimizer(
        OptimizerConfig(schedule="plateau", lr=0.01), 10, 3, "float32"
    )
    schedule.set_lr(plateau, 0.002)
    assert schedule.current_lr(plateau) == pytest.approx(0.002)


# --------------------------------------------------------------------------- logs
def test_history_drops_epochs_that_a_resume_runs_again(tmp_path: Path) -> None:
    rows = [{"epoch": e, "loss": 1.0 / e, "mean_group_iou": 0.1 * e} for e in (1, 2, 3)]
    (tmp_path / "history.csv").write_text(runlog.history_text(rows, ["a"]))
    log = runlog.RunLog(WorkDir(tmp_path), ["a"], chief=True, done_epochs=2)
    log.close()
    assert [r["epoch"] for r in runlog.read_history(tmp_path / "history.csv")] == [1, 2]


def test_best_row_by_monitor_direction_earliest_on_ties() -> None:
    rows = [
        {"epoch": 1, "val_loss": 0.5, "mean_group_iou": 0.7},
        {"epoch": 2, "val_loss": 0.3, "mean_group_iou": 0.7},
        {"epoch": 3, "val_loss": 0.4, "mean_group_iou": float("nan")},
    ]
    assert runlog.best_row(rows, "mean_group_iou")["epoch"] == 1
    assert runlog.best_row(rows, "val_loss")["epoch"] == 2


def test_metrics_json_is_strict_json(tmp_path: Path) -> None:
    runlog.write_metrics(tmp_path / "m.json", {"a": float("nan"), "b": [1.0, float("inf")]})
    assert json.loads((tmp_path / "m.json").read_text()) == {"a": None, "b": [1.0, None]}


# --------------------------------------------------------------------------- work dir
def prepare_work_dir(work: Path, cfg: Config, *, resume: bool, overwrite: bool) -> None:
    """What train does with its work dir: check everything, then (a new run) create it."""
    wd = check_work_dir(work, cfg, resume=resume, overwrite=overwrite)
    if not resume:
        create_work_dir(wd, cfg)


def test_work_dir_rules(tmp_path: Path) -> None:
    cfg = Config()
    work = tmp_path / "run"
    prepare_work_dir(work, cfg, resume=False, overwrite=False)
    assert load_config(work / "config.yaml") == cfg
    with pytest.raises(UserError, match="not empty"):
        prepare_work_dir(work, cfg, resume=False, overwrite=False)
    (work / "history.csv").write_text("old run")  # a file a run writes: replaced
    prepare_work_dir(work, cfg, resume=False, overwrite=True)
    assert sorted(p.name for p in work.iterdir()) == [".segbalance", "config.yaml"]

    other = tmp_path / "photos"
    other.mkdir()
    (other / "holiday.jpg").write_text("not a run")
    with pytest.raises(UserError, match="not a segbalance run"):
        prepare_work_dir(other, cfg, resume=False, overwrite=True)
    assert (other / "holiday.jpg").exists()
    # A project folder that merely holds a config.yaml is not a run either (it lost its
    # source files to --overwrite once).
    project = tmp_path / "project"
    project.mkdir()
    (project / "config.yaml").write_text("train: {epochs: 2}\n")
    (project / "main.py").write_text("print('mine')\n")
    with pytest.raises(UserError, match=f"refuses to delete {project}"):
        prepare_work_dir(project, cfg, resume=False, overwrite=True)
    assert sorted(p.name for p in project.iterdir()) == ["config.yaml", "main.py"]
    # A run folder the user added notes to: the run is segbalance's, the notes are not.
    (work / "notes.txt").write_text("what I tried")
    with pytest.raises(UserError, match="also holds notes.txt, which segbalance did not write"):
        prepare_work_dir(work, cfg, resume=False, overwrite=True)
    assert (work / "notes.txt").read_text() == "what I tried"
    (work / "notes.txt").unlink()

    moved = load_config(None, {"distribute.devices": "0,1"})
    prepare_work_dir(work, moved, resume=True, overwrite=False)  # where it runs may change
    longer = load_config(None, {"train.epochs": 40})
    with pytest.raises(UserError, match=r"train.epochs: 20 -> 40"):
        prepare_work_dir(work, longer, resume=True, overwrite=False)
    assert config_diff(cfg, longer) == ["train.epochs: 20 -> 40"]


# --------------------------------------------------------------------------- CLI
def test_print_config_is_the_full_default_config(capsys) -> None:
    import yaml

    from segbalance.config import config_from_dict

    assert main(["train", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert config_from_dict(printed) == Config()
    assert set(printed) == set(Config.model_fields)


def test_flags_override_the_config_file(tmp_path: Path, capsys) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  epochs: 7\n  batch_size: 4\nmodel:\n  name: resnet50\n")
    argv = ["train", "--config", str(path), "--epochs", "3", "--weights", "0=1,4=2"]
    argv += ["--workers", "h1:2222, h2:2222", "--worker-index", "1", "--devices", "0,1"]
    assert main([*argv, "--set", "train.monitor=val_loss", "--print-config"]) == 0
    cfg = load_config(None, _flatten(capsys.readouterr().out))
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.model.name) == (3, 4, "resnet50")
    assert cfg.sampling.weights == {"0": 1.0, "4": 2.0} and cfg.train.monitor == "val_loss"
    assert cfg.distribute.workers == ["h1:2222", "h2:2222"] and cfg.distribute.worker_index == 1
    assert cfg.distribute.devices == "0,1"


def _flatten(text: str) -> dict[str, object]:
    import yaml

    raw = yaml.safe_load(text)
    return {f"{s}.{k}": v for s, keys in raw.items() for k, v in keys.items()}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--set", "train.epoch=3"], "Did you mean 'epochs'"),
        (["--set", "epochs"], "SECTION.KEY=VALUE"),
        (["--image-size", "50"], "multiples of 32"),
        (["--weights", "0=abc"], "0=abc"),
        (["--set", "train.monitor=dice"], "train.monitor"),
        (["--batch-size", "0"], "train.batch_size=0: Input should be greater than or equal"),
        (["--epochs", "0"], "train.epochs=0: Input should be greater than or equal to 1"),
        (["--balance", "foo"], "sampling.balance='foo': Value error, unknown balance"),
        (["--balance", "power:7"], "number in [0, 1]"),
        (["--balance", "custom"], "balance 'custom' needs weights"),
        (["--set", "train.checkpoint_every_steps=0"], "train.checkpoint_every_steps=0"),
        (["--model", "unet-smal"], "did you mean 'unet-small'"),
    ],
)
def test_config_errors_exit_2(argv: list[str], message: str, tmp_path: Path, capsys) -> None:
    code = main(["train", str(tmp_path / "m.csv"), "--work-dir", str(tmp_path / "w"), *argv])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "w").exists()  # refused before anything was written


def test_missing_manifest_exits_2(tmp_path: Path, capsys) -> None:
    code = main(["train", str(tmp_path / "nope.csv"), "--work-dir", str(tmp_path / "w")])
    assert code == 2
    assert "nope.csv" in capsys.readouterr().err
    assert main(["train", "--work-dir", str(tmp_path / "w2")]) == 2
    assert "MANIFEST" in capsys.readouterr().err


def test_bad_precision_flag_exits_2() -> None:
    with pytest.raises(SystemExit) as exc:
        main(["train", "m.csv", "--precision", "float8"])
    assert exc.value.code == 2


MIRROR_SCRIPT = """
import json, numpy as np, tensorflow as tf, keras
from segbalance.config import DistributeConfig, LossConfig, OptimizerConfig
from segbalance.losses import get_loss
from segbalance.train import schedule, steps
from segbalance.train.runtime import make_strategy

mirrored = make_strategy(DistributeConfig(devices="cpu:2"))
rng = np.random.default_rng(0)
image = rng.uniform(0, 255, (4, 32, 32, 3)).astype(np.float32)
mask = (image[..., :1] > 127).astype(np.float32)

def run(strategy, own):
    with strategy.scope():
        keras.utils.set_random_seed(1)
        inputs = keras.Input((32, 32, 3))
        x = keras.layers.Rescaling(1 / 255)(inputs)
        x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(x)
        model = keras.Model(inputs, keras.layers.Conv2D(1, 3, padding="same")(x))
        cfg = OptimizerConfig(name="sgd", lr=0.5, schedule="constant", clipnorm=0.01)
        opt = schedule.build_optimizer(cfg, 1, 1, "float32")
        opt.build(model.trainable_variables)
    if own:
        steps.own_gradient_reduction(opt)
    step = steps.make_train_step(strategy, model, opt, get_loss(LossConfig(name="bce")), 4, 0.5)
    data = {"image": image, "mask": mask}
    ds = strategy.distribute_datasets_from_function(
        lambda ctx: tf.data.Dataset.from_tensor_slices(data).batch(
            ctx.get_per_replica_batch_size(4)))
    losses = [float(step(batch)[0]) for batch in ds]
    return losses, np.concatenate([v.numpy().ravel() for v in model.trainable_variables])

single_loss, single = run(tf.distribute.get_strategy(), True)
two_loss, two = run(mirrored, True)
_, keras_reduced = run(mirrored, False)
out = {"replicas": mirrored.num_replicas_in_sync, "loss": [single_loss, two_loss]}
out["own"] = float(np.abs(single - two).max())
out["keras"] = float(np.abs(single - keras_reduced).max())
print(json.dumps(out))
"""


@pytest.mark.heavy
def test_two_replicas_take_the_single_device_step_with_clipping() -> None:
    import os
    import subprocess
    import sys

    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [sys.executable, "-c", MIRROR_SCRIPT], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["replicas"] == 2
    assert out["loss"][0] == pytest.approx(out["loss"][1], rel=1e-6)
    assert out["own"] < 1e-6  # gradients summed over replicas, then clipped: same update
    assert out["keras"] > 1e-4  # clipping each replica's half-gradient is a different step


def test_resume_takes_the_cluster_from_the_command_line_not_the_saved_run(tmp_path: Path) -> None:
    from segbalance.cli import build_parser
    from segbalance.cli.train import build_config
    from segbalance.config import config_to_yaml

    saved = load_config(
        None,
        {"distribute.workers": ["h1:1", "h2:2"], "distribute.worker_index": 0, "train.epochs": 7},
    )
    (tmp_path / "config.yaml").write_text(config_to_yaml(saved))
    args = build_parser().parse_args(["train", "--work-dir", str(tmp_path), "--resume"])
    cfg = build_config(args)
    assert cfg.train.epochs == 7  # the run's own settings come back
    assert cfg.distribute.workers is None and cfg.distribute.worker_index is None
    args = build_parser().parse_args(
        ["train", "--work-dir", str(tmp_path), "--resume", "--devices", "cpu:2"]
    )
    assert build_config(args).distribute.devices == "cpu:2"


def test_removing_a_refused_new_run_keeps_anything_else(tmp_path: Path) -> None:
    """remove_new_run deletes only a run with nothing trained and nothing foreign in it."""
    from segbalance.train.workdir import remove_new_run

    cfg = Config()
    for extra in ("notes.txt", "checkpoints/ckpt-1.index"):
        work = tmp_path / extra.split("/")[0].replace(".", "_")
        wd = check_work_dir(work, cfg, resume=False, overwrite=False)
        create_work_dir(wd, cfg)
        (work / extra).parent.mkdir(parents=True, exist_ok=True)
        (work / extra).write_text("keep me")
        remove_new_run(wd)
        assert (work / extra).read_text() == "keep me"  # a user's file, or a trained step
    fresh = check_work_dir(tmp_path / "fresh", cfg, resume=False, overwrite=False)
    create_work_dir(fresh, cfg)
    remove_new_run(fresh)
    assert not (tmp_path / "fresh").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "data.csv").write_text("a user's folder, no marker")
    remove_new_run(WorkDir(tmp_path / "mine"))
    assert (tmp_path / "mine" / "data.csv").is_file()
