"""The work dir of a run: its files, and when it may be created, reused or resumed.

A work dir holds::

    .segbalance      marker: segbalance created this folder (only such folders are replaced)
    config.yaml      the config the run uses (written first, read back by --resume)
    data.json        fingerprint of the train/valid rows (a resume on other data is refused)
    checkpoints/     tf.train.CheckpointManager: model, optimiser, RunState (last k kept)
    best.keras       the best monitored epoch so far, with segbalance metadata
    history.csv      one row per finished epoch
    logs/            TensorBoard event files
    metrics.json     written when the run is complete

Rules: a new run needs a missing or empty dir; ``overwrite`` deletes a previous run (only
a dir that segbalance created: it carries the ``.segbalance`` marker and a ``config.yaml``);
``resume`` needs that ``config.yaml`` and the same config (only the ``distribute`` section
may change, e.g. other machines).
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml

from segbalance.config import Config, config_from_dict, config_to_yaml
from segbalance.errors import UserError
from segbalance.io import MARKER, check_output_path, is_marked, mark_dir, write_text

CONFIG = "config.yaml"
BEST = "best.keras"
HISTORY = "history.csv"
METRICS = "metrics.json"
CHECKPOINTS = "checkpoints"
LOGS = "logs"
DATA = "data.json"  # the rows the run trained on (segbalance.train.fingerprint)
ADAPTIVE_FIGURE = "adaptive.png"  # group weights over epochs (segbalance.train.adaptive)
PRECISION_PROBE = "precision.json"  # the auto-precision timing (segbalance.train.precision)
#: Everything a run writes at its top level; --overwrite deletes a run only if it holds
#: nothing else (a user's notes put into a run folder are not deleted with it).
RUN_FILES = (
    MARKER,
    CONFIG,
    DATA,
    BEST,
    HISTORY,
    METRICS,
    CHECKPOINTS,
    LOGS,
    ADAPTIVE_FIGURE,
    PRECISION_PROBE,
)
# Sections that may differ on --resume: where the run executes, not what it computes.
RESUME_MAY_CHANGE = ("distribute",)
#: The kind in the .segbalance marker of a work dir train created.
RUN_KIND = "run"


@dataclass(frozen=True)
class WorkDir:
    """Paths of one run's work dir."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / CONFIG

    @property
    def best(self) -> Path:
        return self.root / BEST

    @property
    def history(self) -> Path:
        return self.root / HISTORY

    @property
    def metrics(self) -> Path:
        return self.root / METRICS

    @property
    def checkpoints(self) -> Path:
        return self.root / CHECKPOINTS

    @property
    def logs(self) -> Path:
        return self.root / LOGS


def read_run_config(work_dir: str | Path) -> Config:
    """The ``config.yaml`` of an earlier run (for ``--resume``).

    A key the run's version did not have reads as that version behaved
    (:data:`segbalance.config.ADDED_KEYS`).

    Raises:
        UserError: no run in ``work_dir`` or an unreadable config.
    """
    path = Path(work_dir) / CONFIG
    if not path.is_file():
        raise UserError(
            f"nothing to resume in {work_dir}: it has no {CONFIG}. Start a new run without --resume"
        )
    try:
        raw = yaml.safe_load(path.read_text()) or {}
        return config_from_dict(raw)
    except (OSError, yaml.YAMLError) as err:
        raise UserError(f"cannot read {path}: {err}") from err


def config_diff(old: Config, new: Config, ignore: tuple[str, ...] = ()) -> list[str]:
    """Dotted keys whose values differ, as ``key: old -> new`` lines."""
    a, b = old.model_dump(mode="json"), new.model_dump(mode="json")
    out: list[str] = []
    for section in a:
        if section in ignore:
            continue
        for key in a[section]:
            if a[section][key] != b[section][key]:
                out.append(f"{section}.{key}: {a[section][key]!r} -> {b[section][key]!r}")
    return out


def _is_run(wd: WorkDir) -> bool:
    """A work dir ``segbalance train`` created: its marker says run, and it has a config."""
    return is_marked(wd.root, RUN_KIND) and wd.config.is_file()


def _is_empty(path: Path) -> bool:
    return not path.exists() or (path.is_dir() and not any(path.iterdir()))


def check_work_dir(work_dir: str | Path, cfg: Config, *, resume: bool, overwrite: bool) -> WorkDir:
    """Check the work-dir rules (module doc) without writing anything.

    Raises:
        UserError: a non-empty dir without resume/overwrite, a resume with another config,
            an overwrite of a folder that is not a segbalance run, a folder that cannot be
            created or written, or both flags.
    """
    wd = WorkDir(Path(work_dir))
    if resume and overwrite:
        raise UserError("--resume and --overwrite exclude each other: pick one")
    if wd.root.exists() and not wd.root.is_dir():
        raise UserError(f"work dir {wd.root} is a file; pass a folder to --work-dir")
    check_output_path(wd.root, "--work-dir", folder=True)
    if resume:
        changed = config_diff(read_run_config(wd.root), cfg, ignore=RESUME_MAY_CHANGE)
        if changed:
            raise UserError(
                f"--resume must use the config of the run in {wd.root}, but these differ:\n  "
                + "\n  ".join(changed)
                + "\nDrop the flags that change them, or start a new run in another --work-dir"
            )
        return wd
    if not _is_empty(wd.root):
        if not overwrite:
            raise UserError(
                f"work dir {wd.root} is not empty; pass --resume to continue its run, "
                "--overwrite to delete it and start again, or choose another --work-dir"
            )
        if not _is_run(wd):
            raise UserError(
                f"--overwrite refuses to delete {wd.root}: it is not a segbalance run (no "
                f"{MARKER} and {CONFIG} from 'segbalance train'), so it may hold your files. "
                "Delete or move it yourself, or choose another --work-dir"
            )
        foreign = foreign_entries(wd)
        if foreign:
            more = f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
            raise UserError(
                f"--overwrite refuses to delete the run in {wd.root}: it also holds "
                f"{', '.join(foreign[:5])}{more}, "
                "which segbalance did not write. Move them out, then run it again"
            )
    return wd


def remove_new_run(wd: WorkDir) -> None:
    """Remove a run this invocation created and that has trained nothing (no checkpoint).

    Only a folder holding nothing but a run's files is removed; anything else stays.
    """
    checkpoints = wd.checkpoints
    trained = checkpoints.is_dir() and any(checkpoints.iterdir())
    if _is_run(wd) and not foreign_entries(wd) and not trained:
        shutil.rmtree(wd.root)


def foreign_entries(wd: WorkDir) -> list[str]:
    """Names at the top of ``wd`` that a run does not write (nor a temp file of its writers)."""
    ours = set(RUN_FILES)
    temp = re.compile(r"^\.(" + "|".join(re.escape(n) for n in RUN_FILES) + r")\.[0-9a-f]{8}")
    return sorted(
        p.name for p in wd.root.iterdir() if p.name not in ours and not temp.match(p.name)
    )


def create_work_dir(wd: WorkDir, cfg: Config) -> None:
    """Start a new run in a checked work dir (:func:`check_work_dir`): marker and config.

    An earlier run there is deleted first; the check made sure segbalance created it.
    """
    if not _is_empty(wd.root):
        if not _is_run(wd) or foreign_entries(wd):  # again, at the moment of deleting
            raise UserError(f"--overwrite refuses to delete {wd.root}: it is not only a run")
        shutil.rmtree(wd.root)
    wd.root.mkdir(parents=True, exist_ok=True)
    mark_dir(wd.root, RUN_KIND)
    write_text(wd.config, config_to_yaml(cfg))
