"""Balancing strategies side by side on the user's own data: the demo's comparison.

``compare(cfg, strategies, work_dir)`` trains one run per strategy with everything else
equal (model, budget, seed: the config given, only ``sampling.balance`` differs), each in
``<work_dir>/<strategy>`` (``:`` becomes ``-``), and evaluates every best model on the same
images: the manifest's validation split, or a separate test set (``test``). It writes::

    compare.json   settings, per strategy the evaluation (IoU with 95 % intervals) and
                   the best epoch, the table and the verdict line
    compare.png    per-group IoU bars per strategy; worst-group vs mean-group IoU

Every run is resumable: a finished run (metrics.json) is reused, a killed one resumed from
its checkpoint, so running the same command again continues where it stopped. Every
strategy, the data, the test set and every run folder are checked before the first run.

Example:
    >>> summary = compare(cfg, ["proportional", "uniform"], "runs/cmp")  # doctest: +SKIP
    >>> print(summary["verdict"])  # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from pydantic import ValidationError

from segbalance.config import Config, config_from_dict
from segbalance.errors import UserError
from segbalance.evaluate import evaluate, json_view
from segbalance.evaluate import load_data as load_eval_data
from segbalance.io import (
    atomic_path,
    check_file_target,
    check_folder_target,
    check_replaceable_file,
    figure_metadata,
    is_our_figure,
    json_has_keys,
    write_text,
)
from segbalance.pipeline.verify import check_files
from segbalance.text import format_table
from segbalance.train.plan import load_data
from segbalance.train.run import resumable, train_or_resume

DEFAULT_STRATEGIES = ("proportional", "uniform", "sqrt", "adaptive")
RESULT = "compare.json"
FIGURE = "compare.png"


def run_name(strategy: str) -> str:
    """The run folder of a strategy: ``power:0.5`` -> ``power-0.5``."""
    return strategy.strip().replace(":", "-").replace("/", "-")


def strategy_configs(cfg: Config, strategies: Sequence[str]) -> dict[str, Config]:
    """One config per strategy: ``cfg`` with only ``sampling.balance`` changed.

    Raises:
        UserError: no strategy, a repeated one, or one the config refuses (named).
    """
    if not strategies:
        raise UserError("--balance needs at least one strategy, e.g. proportional uniform")
    out: dict[str, Config] = {}
    seen: dict[str, str] = {}
    for strategy in strategies:
        name = run_name(strategy)
        if name in seen:
            raise UserError(f"--balance lists '{strategy}' twice (as '{seen[name]}' too)")
        seen[name] = strategy
        raw = cfg.model_dump(mode="json")
        raw["sampling"]["balance"] = strategy
        try:
            out[strategy] = config_from_dict(raw)
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise UserError(f"--balance {strategy}: {where}: {first['msg']}") from err
    return out


def _check_inputs(
    configs: Mapping[str, Config], work_dir: Path, test: str | Path | None
) -> dict[str, bool]:
    """Everything that can be refused, before any run: data, test set, folders."""
    cfg = next(iter(configs.values()))
    train = load_data(cfg)[0]  # the same rows for every strategy; files checked once
    if test is not None:  # a test folder's masks are read with the training data's classes
        rows = load_eval_data(test, classes=train.classes)
        check_files(rows, str(test))
    if work_dir.exists() and not work_dir.is_dir():
        raise UserError(f"--work-dir {work_dir} is a file; pass a folder")
    check_folder_target(work_dir)
    for name in (RESULT, FIGURE):
        check_file_target(work_dir / name)
    # Rewritten on every run, but never over a file of the user's that has these names.
    check_replaceable_file(
        work_dir / RESULT,
        "--work-dir",
        "an earlier compare result",
        lambda p: json_has_keys(p, ("strategies", "results", "verdict")),
    )
    check_replaceable_file(
        work_dir / FIGURE, "--work-dir", "a figure segbalance drew", is_our_figure
    )
    return {s: resumable(c, work_dir / run_name(s)) for s, c in configs.items()}


def compare(
    cfg: Config,
    strategies: Sequence[str],
    work_dir: str | Path,
    *,
    test: str | Path | None = None,
    bootstrap: int = 1000,
) -> dict[str, Any]:
    """Train and evaluate every strategy; write compare.json and compare.png.

    Args:
        cfg: the run config (``data.manifest`` set); ``sampling.balance`` is replaced.
        strategies: balance strategies as ``--balance`` spells them.
        work_dir: the comparison's folder; one run folder per strategy in it.
        test: evaluate on this manifest CSV or data folder instead of the valid split.
        bootstrap: replicates of the 95 % intervals (0: none).

    Returns:
        The content of compare.json.
    """
    work_dir = Path(work_dir)
    configs = strategy_configs(cfg, strategies)
    resumed = _check_inputs(configs, work_dir, test)
    data = str(test) if test is not None else str(cfg.data.manifest)
    split = None if test is not None else cfg.data.valid_split
    results: dict[str, dict[str, Any]] = {}
    epochs: dict[str, int | None] = {}
    for strategy, run_cfg in configs.items():
        state = "resuming" if resumed[strategy] else "training"
        print(f"[compare] {state} balance={strategy} in {work_dir / run_name(strategy)}")
        run = train_or_resume(run_cfg, work_dir / run_name(strategy))
        if run.best_model is None:
            raise RuntimeError(f"the {strategy} run wrote no best.keras")
        result = evaluate(
            run.best_model, data, split, batch_size=cfg.train.batch_size, bootstrap=bootstrap
        )
        results[strategy] = json_view(result)
        epochs[strategy] = run.best_epoch
    train_counts = load_data(cfg)[0].counts()
    summary = {
        "strategies": list(configs),
        "evaluated_on": {"data": data, "split": split or "all"},
        "budget": budget(cfg),
        "train_images": train_counts,
        "results": results,
        "best_epoch": epochs,
        "runs": {s: str(work_dir / run_name(s)) for s in configs},
        "table": comparison_table(results, train_counts),
        "verdict": verdict(results, train_counts),
        "figure": str(work_dir / FIGURE),
    }
    plot_comparison(results, work_dir / FIGURE, note=budget_note(cfg))
    write_text(work_dir / RESULT, json.dumps(summary, indent=2) + "\n")
    return summary


def budget(cfg: Config) -> dict[str, Any]:
    """What every strategy shares: model, size, epochs, samples per epoch, batch, seed."""
    return {
        "model": cfg.model.name,
        "image_size": list(cfg.data.image_size),
        "epochs": cfg.train.epochs,
        "epoch_length": cfg.data.epoch_length,
        "batch_size": cfg.train.batch_size,
        "seed": cfg.train.seed,
    }


def budget_note(cfg: Config) -> str:
    b = budget(cfg)
    length = b["epoch_length"] or "all train images"
    return (
        f"same budget for each: {b['model']} at {b['image_size'][0]} px, {b['epochs']} epochs "
        f"x {length} samples, batch {b['batch_size']}, seed {b['seed']}"
    )


def _cell(value: float | None, interval: Sequence[float] | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" + ("" if interval is None else f" [{interval[0]:.2f}-{interval[1]:.2f}]")


def comparison_table(
    results: Mapping[str, Mapping[str, Any]], train_counts: Mapping[str, int]
) -> str:
    """Per group: train images, evaluated images, IoU [95 % CI] per strategy; then the
    mean-group and worst-group rows."""
    strategies = list(results)
    first = results[strategies[0]]["groups"]
    header = ("group", "train", "eval", *strategies)
    rows: list[tuple[str, ...]] = []
    for g, entry in first.items():
        cells = (
            _cell(results[s]["groups"][g]["iou"], results[s]["groups"][g]["iou_ci"])
            for s in strategies
        )
        rows.append((g, str(train_counts.get(g, 0)), str(entry["images"]), *cells))
    for key, label in (("mean_group_iou", "mean group"), ("worst_group_iou", "worst group")):
        cells = (_cell(results[s][key], results[s][f"{key}_ci"]) for s in strategies)
        rows.append((label, "", "", *cells))
    return format_table(header, rows, align="lrrr")


def verdict(results: Mapping[str, Mapping[str, Any]], train_counts: Mapping[str, int]) -> str:
    """The strategy with the best worst-group IoU and what it costs the largest group.

    The cost is measured against proportional (no balancing) when it was run, else
    against the strategy that does best on the largest group.
    """
    worst = {
        s: r["worst_group_iou"] for s, r in results.items() if r["worst_group_iou"] is not None
    }
    if not worst:
        return "no strategy has a worst-group IoU (no evaluated group has foreground)"
    best = max(worst, key=lambda s: worst[s])  # the first listed on ties
    evaluated = [g for g in train_counts if g in results[best]["groups"]]
    big = max(evaluated, key=lambda g: train_counts[g])

    def big_iou(s: str) -> float:
        value = results[s]["groups"][big]["iou"]
        return float("nan") if value is None else float(value)

    ref = "proportional" if "proportional" in results else max(results, key=big_iou)
    others = ", ".join(f"{s} {v:.3f}" for s, v in worst.items() if s != best)
    cost = big_iou(best) - big_iou(ref)
    against = "" if best == ref else f" vs {ref} ({big_iou(ref):.3f} -> {big_iou(best):.3f})"
    return (
        f"best worst-group IoU: {best} {worst[best]:.3f}"
        + (f" ({others})" if others else "")
        + f"; largest group {big} ({train_counts[big]} train images): {cost:+.3f} IoU{against}"
    )


COLOURS = ("#8C8C8C", "#DD8452", "#55A868", "#4C72B0", "#C44E52", "#8172B3", "#937860")


def _errors(values: Sequence[float], intervals: Sequence[Sequence[float] | None]) -> np.ndarray:
    """Matplotlib's asymmetric error bars (2, n); 0 where there is no interval."""
    low = [v - ci[0] if ci else 0.0 for v, ci in zip(values, intervals, strict=True)]
    high = [ci[1] - v if ci else 0.0 for v, ci in zip(values, intervals, strict=True)]
    return np.clip(np.array([low, high]), 0.0, None)


def plot_comparison(results: Mapping[str, Mapping[str, Any]], path: Path, note: str = "") -> Path:
    """Two panels: per-group IoU per strategy (95 % CI bars); worst vs mean group IoU."""
    strategies = list(results)
    groups = list(results[strategies[0]]["groups"])
    x = np.arange(len(groups))
    width = 0.8 / len(strategies)
    fig = Figure(figsize=(14, 4.8))  # a bare Agg figure, as demo.py: no pyplot state
    FigureCanvasAgg(fig)
    bars, scatter = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.6, 1]})
    for k, s in enumerate(strategies):
        colour = COLOURS[k % len(COLOURS)]
        entries = [results[s]["groups"][g] for g in groups]
        ious = [e["iou"] or 0.0 for e in entries]
        offset = (k - (len(strategies) - 1) / 2) * width
        yerr = _errors(ious, [e["iou_ci"] for e in entries])
        bars.bar(x + offset, ious, width, yerr=yerr, capsize=2, label=s, color=colour)
        mean, worst = results[s]["mean_group_iou"] or 0.0, results[s]["worst_group_iou"] or 0.0
        xerr = _errors([mean], [results[s]["mean_group_iou_ci"]])
        werr = _errors([worst], [results[s]["worst_group_iou_ci"]])
        scatter.errorbar([mean], [worst], xerr=xerr, yerr=werr, fmt="o", color=colour, capsize=3)
        scatter.annotate(s, (mean, worst), textcoords="offset points", xytext=(6, 6), fontsize=9)
    bars.set_xticks(x, groups)
    bars.set(title="IoU per group (95% CI)", xlabel="group", ylabel="IoU", ylim=(0, 1.08))
    bars.legend(frameon=False, fontsize=9)
    scatter.set(
        title="Worst group vs mean group", xlabel="mean-group IoU", ylabel="worst-group IoU"
    )
    for ax in (bars, scatter):
        ax.spines[["top", "right"]].set_visible(False)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("Balancing strategies compared" + (f"\n{note}" if note else ""), fontsize=11)
    fig.tight_layout()
    with atomic_path(path, ".png") as tmp:
        fig.savefig(tmp, dpi=110, format="png", metadata=figure_metadata("png"))
    return path
