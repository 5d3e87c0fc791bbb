"""The built-in synthetic data set: layout, counts, determinism, masks, distinct groups."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from segbalance.cli import main
from segbalance.data import synth
from segbalance.data.synth import TUTORIAL_COUNTS, generate, group_counts
from segbalance.data.synth_draw import render
from segbalance.errors import UserError


def _digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_group_counts_follow_the_tutorial() -> None:
    assert group_counts(1.0) == {"0": 749, "1": 144, "2": 126, "3": 52, "4": 34}
    assert group_counts(0.1) == {"0": 75, "1": 14, "2": 13, "3": 5, "4": 3}
    assert group_counts(0.001) == dict.fromkeys("01234", 3)


@given(st.floats(min_value=1e-4, max_value=5.0))
def test_group_counts_are_rounded_and_at_least_three(scale: float) -> None:
    counts = group_counts(scale)
    for g, n in counts.items():
        assert n >= 3
        assert n == 3 or abs(n - TUTORIAL_COUNTS[g] * scale) <= 0.5


@pytest.mark.parametrize("scale", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_scale_is_a_user_error(scale: float) -> None:
    with pytest.raises(UserError, match="scale"):
        group_counts(scale)


def test_generate_writes_the_tutorial_layout(tmp_path: Path) -> None:
    out = tmp_path / "nails"
    counts = generate(out, scale=0.01, size=32, progress=False)
    assert counts == {"0": 7, "1": 3, "2": 3, "3": 3, "4": 3}
    for g, n in counts.items():
        images = sorted(p.name for p in (out / "Images" / g).iterdir())
        masks = sorted(p.name for p in (out / "Masks" / g).iterdir())
        assert len(images) == n and images == masks
        for name in images:
            with (
                Image.open(out / "Images" / g / name) as img,
                Image.open(out / "Masks" / g / name) as msk,
            ):
                assert img.mode == "RGB" and msk.mode == "L"
                assert img.size == msk.size == (32, 32)
                assert set(np.unique(np.asarray(msk)).tolist()) <= {0, 255}
    assert (out / "synth.json").is_file()
    assert not (out / synth.TMP_NAME).exists()


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    generate(tmp_path / "a", scale=0.01, size=32, seed=3, progress=False)
    generate(tmp_path / "b", scale=0.01, size=32, seed=3, progress=False)
    generate(tmp_path / "c", scale=0.01, size=32, seed=4, progress=False)
    a, b, c = (_digest(tmp_path / n) for n in "abc")
    assert a == b
    assert a.keys() == c.keys()
    assert sum(a[k] != c[k] for k in a if k.endswith(".png")) >= len(a) - 2


def test_worker_processes_do_not_change_the_output(tmp_path: Path) -> None:
    # 56 images: enough to use the process pool (>= 48)
    generate(tmp_path / "one", scale=0.05, size=32, progress=False, workers=1)
    generate(tmp_path / "two", scale=0.05, size=32, progress=False, workers=2)
    assert _digest(tmp_path / "one") == _digest(tmp_path / "two")


def test_masks_mark_the_nails() -> None:
    for g in TUTORIAL_COUNTS:
        for i in range(4):
            image, mask = render(g, i, 96, seed=0)
            assert image.shape == (96, 96, 3) and image.dtype == np.uint8
            assert mask.shape == (96, 96) and mask.dtype == np.uint8
            assert set(np.unique(mask).tolist()) <= {0, 255}
            assert 0 < (mask > 0).mean() < 0.5, (g, i)


def _group_features(group: str, n: int = 8, size: int = 96) -> tuple[float, float]:
    brightness, coverage = [], []
    for i in range(n):
        image, mask = render(group, i, size, seed=0)
        brightness.append(image.mean())
        coverage.append((mask > 0).mean())
    return float(np.mean(brightness)), float(np.mean(coverage))


def test_groups_look_different() -> None:
    bright0, cover0 = _group_features("0")
    _, cover1 = _group_features("1")
    bright3, _ = _group_features("3")
    _, cover4 = _group_features("4")
    assert bright3 < 0.6 * bright0  # dim group
    assert cover4 < 0.5 * cover0  # tiny nails
    assert cover1 > 1.5 * cover0  # close-ups


def test_refuses_to_overwrite_without_the_flag(tmp_path: Path) -> None:
    out = tmp_path / "nails"
    generate(out, scale=0.001, size=32, progress=False)
    before = _digest(out)
    with pytest.raises(UserError, match="--overwrite"):
        generate(out, scale=0.001, size=32, seed=1, progress=False)
    assert _digest(out) == before
    generate(out, scale=0.001, size=32, seed=1, progress=False, overwrite=True)
    assert _digest(out) != before
    assert len(list((out / "Images").rglob("*.png"))) == 15


def test_an_interrupted_run_leaves_no_data_set(tmp_path: Path, monkeypatch) -> None:
    calls = {"n": 0}
    real = synth._write_one

    def failing(job):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(job)

    monkeypatch.setattr(synth, "_write_one", failing)
    out = tmp_path / "nails"
    with pytest.raises(KeyboardInterrupt):
        generate(out, scale=0.001, size=32, progress=False, workers=1)
    assert not (out / "Images").exists() and not (out / "Masks").exists()
    assert (out / synth.TMP_NAME).is_dir()  # obvious, and cleared by the next run
    monkeypatch.setattr(synth, "_write_one", real)
    generate(out, scale=0.001, size=32, progress=False, workers=1)
    assert not (out / synth.TMP_NAME).exists()
    assert len(list((out / "Masks").rglob("*.png"))) == 15


def test_cli_prints_counts(tmp_path: Path, capsys) -> None:
    out = tmp_path / "cli"
    code = main(["synth", str(out), "--scale", "0.001", "--size", "32", "--quiet"])
    assert code == 0
    text = capsys.readouterr().out
    assert "total" in text and "15" in text and "segbalance prepare" in text
    assert len(list((out / "Images" / "4").glob("*.png"))) == 3


def test_cli_bad_input_exits_2(tmp_path: Path, capsys) -> None:
    assert main(["synth", str(tmp_path / "x"), "--size", "8"]) == 2
    assert "--size" in capsys.readouterr().err
    file = tmp_path / "file.txt"
    file.write_text("not a folder")
    assert main(["synth", str(file), "--scale", "0.001", "--size", "32", "--quiet"]) == 2
    assert str(file) in capsys.readouterr().err


@given(
    st.integers(1, 9),
    st.integers(1, 9),
    st.sampled_from([(), (3,)]),
    st.integers(0, 2**32 - 1),
)
def test_png_writer_round_trips(h: int, w: int, channels: tuple[int, ...], seed: int) -> None:
    pixels = np.random.default_rng(seed).integers(0, 256, (h, w, *channels), dtype=np.uint8)
    with Image.open(io.BytesIO(synth.png_bytes(pixels))) as img:
        assert img.mode == ("RGB" if channels else "L")
        np.testing.assert_array_equal(np.asarray(img), pixels)


def test_cli_warns_about_a_manifest_of_the_old_data(tmp_path: Path, capsys) -> None:
    out = tmp_path / "nails"
    args = ["synth", str(out), "--scale", "0.001", "--size", "32", "--quiet"]
    assert main(args) == 0
    (out / "segbalance").mkdir()
    (out / "segbalance" / "manifest.csv").write_text("image,mask\n")
    assert main(args) == 2  # refuses without --overwrite
    capsys.readouterr()
    assert main([*args, "--overwrite", "--seed", "1"]) == 0
    assert "manifest.csv describes the old data" in capsys.readouterr().err


def test_overwrite_never_replaces_real_data_in_the_tutorial_layout(tmp_path: Path) -> None:
    """Images/ and Masks/ that synth did not write (no synth.json) survive --overwrite."""
    out = tmp_path / "nails"
    (out / "Images" / "0").mkdir(parents=True)
    (out / "Masks" / "0").mkdir(parents=True)
    (out / "Images" / "0" / "photo.jpg").write_bytes(b"a real photo")
    with pytest.raises(UserError, match="synth did not write them"):
        generate(out, scale=0.001, size=32, progress=False, overwrite=True)
    assert (out / "Images" / "0" / "photo.jpg").read_bytes() == b"a real photo"
    assert sorted(p.name for p in out.iterdir()) == ["Images", "Masks"]
