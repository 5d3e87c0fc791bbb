"""data.cache_decoded: auto caches what fits the budget, says why, and a resume keeps it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from segbalance.config import load_config
from segbalance.data.manifest import read_manifest
from segbalance.pipeline.budget import available_memory, choose_cache
from segbalance.train.run import cache_choice
from segbalance.train.workdir import WorkDir

GIB = 2**30


def data_config(**overrides: object):
    return load_config(None, {f"data.{k}": v for k, v in overrides.items()}).data


@pytest.mark.parametrize(
    ("setting", "available", "train", "valid", "said"),
    [
        # 1000 train rows at 256 px: 0.24 GiB; 250 valid rows: 0.24 GiB.
        ("auto", 8 * GIB, True, True, "decoded rows in memory"),
        ("auto", 1.5 * GIB, True, False, "only the train rows in memory"),
        ("auto", 0.5 * GIB, False, False, "decoding from files every epoch"),
        ("auto", None, False, False, "available memory is unknown"),
        (True, 0.1 * GIB, True, True, "data.cache_decoded"),
        (False, 64 * GIB, False, False, "data.cache_decoded"),
    ],
)
def test_the_choice_follows_the_budget(
    setting: object, available: float | None, train: bool, valid: bool, said: str
) -> None:
    cfg = data_config(cache_decoded=setting, image_size=256)
    choice = choose_cache(cfg, 1000, 250, None if available is None else int(available))
    assert (choice.train, choice.valid) == (train, valid)
    assert said in choice.reason
    if setting == "auto" and available is not None:
        assert "0.25 of" in choice.reason  # the budget is named, with what it is a share of


def test_a_smaller_budget_share_streams_sooner() -> None:
    generous = choose_cache(data_config(cache_budget=0.9, image_size=256), 1000, 0, GIB)
    tight = choose_cache(data_config(cache_budget=0.1, image_size=256), 1000, 0, GIB)
    assert generous.train and not tight.train


def test_available_memory_reads_meminfo(tmp_path: Path) -> None:
    info = tmp_path / "meminfo"
    info.write_text("MemTotal:       24000000 kB\nMemAvailable:   20000000 kB\n")
    assert available_memory(info) == 20000000 * 1024
    # No meminfo (another Unix): free pages from sysconf, still a number of bytes.
    fallback = available_memory(tmp_path / "missing")
    assert isinstance(fallback, int) and fallback > 0


def test_a_resume_keeps_the_choice_the_run_started_with(
    synth_manifest: Path, tmp_path: Path
) -> None:
    cfg = load_config(None, {"data.manifest": str(synth_manifest), "data.image_size": 64})
    rows = read_manifest(synth_manifest)
    data = (rows.select(split="train"), rows.select(split="valid"))
    fresh = cache_choice(cfg, data, None)
    assert fresh.train and fresh.valid  # a few MiB at 64 px fit any budget
    (tmp_path / "data.json").write_text(json.dumps({"cache": {"train": False, "valid": True}}))
    resumed = cache_choice(cfg, data, WorkDir(tmp_path))
    assert (resumed.train, resumed.valid) == (False, True)
    assert "as the run started" in resumed.reason


def test_cache_settings_are_checked_at_load() -> None:
    from segbalance.errors import UserError

    with pytest.raises(UserError, match="data.cache_budget=0.0"):
        data_config(cache_budget=0.0)
    with pytest.raises(UserError, match="data.cache_decoded"):
        data_config(cache_decoded="sometimes")
