"""Per-group statistics of a manifest: exact values, table, JSON, figure, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from segbalance.cli import main
from segbalance.data.manifest import COLUMNS, Manifest
from segbalance.data.stats import compute_stats, format_stats_table, plot_stats

# group, split, height, width, coverage: known values, groups out of natural order
ROWS = [
    ("0", "train", 32, 32, 0.0),
    ("0", "train", 32, 32, 0.1),
    ("10", "valid", 64, 64, 0.5),
    ("0", "train", 32, 32, 0.2),
    ("0", "valid", 32, 32, 0.3),
    ("2", "train", 32, 32, 0.0),
    ("0", "valid", 48, 32, 0.4),
    ("10", "train", 64, 64, 0.25),
]


def _write_manifest(folder: Path) -> Path:
    """A manifest CSV as 'prepare' writes it (the image files are not needed by stats)."""
    path = folder / "segbalance" / "manifest.csv"
    path.parent.mkdir(parents=True)
    lines = [",".join(COLUMNS)]
    for i, (g, split, h, w, cov) in enumerate(ROWS):
        lines.append(f"Images/{g}/{i}.png,Masks/{g}/{i}.png,{g},{split},{h},{w},{cov},0/255")
    path.write_text("\n".join(lines) + "\n")
    return path


def _manifest(rows=ROWS) -> Manifest:
    g, split, h, w, cov = zip(*rows, strict=True)
    images = tuple(f"{x}.png" for x in range(len(rows)))
    rules = ("0/255",) * len(rows)
    return Manifest(
        Path("/data"), images, images, g, split, np.array(h), np.array(w), np.array(cov), rules
    )


def test_exact_values_per_group() -> None:
    stats = compute_stats(_manifest())
    assert stats["groups_order"] == ["0", "2", "10"]
    assert stats["splits"] == ["train", "valid"]
    assert stats["images"] == 8 and stats["imbalance"] == 5.0
    g0, g2, g10 = (stats["groups"][g] for g in ("0", "2", "10"))
    assert g0["images"] == 5 and g0["splits"] == {"train": 3, "valid": 2}
    assert g0["empty_masks"] == 1
    # coverages 0, .1, .2, .3, .4: linear quantiles at positions 0.4, 1, 2, 3, 3.6
    expected = {"mean": 0.2, "q10": 0.04, "q25": 0.1, "median": 0.2, "q75": 0.3, "q90": 0.36}
    assert g0["coverage"] == pytest.approx({**expected, "min": 0.0, "max": 0.4}, abs=1e-12)
    assert g0["sizes"] == {
        "min_height": 32,
        "max_height": 48,
        "min_width": 32,
        "max_width": 32,
        "distinct": [
            {"height": 32, "width": 32, "images": 4},
            {"height": 48, "width": 32, "images": 1},
        ],
    }
    assert g10["coverage"]["mean"] == pytest.approx(0.375)
    assert g10["coverage"]["q10"] == pytest.approx(0.275)
    assert g10["coverage"]["q90"] == pytest.approx(0.475)
    assert g10["empty_masks"] == 0 and g10["splits"] == {"train": 1, "valid": 1}
    assert g2["coverage"]["max"] == 0.0 and g2["empty_masks"] == 1
    assert stats["all"]["images"] == 8 and stats["all"]["empty_masks"] == 2
    assert stats["all"]["coverage"]["mean"] == pytest.approx(1.75 / 8)
    assert stats["all"]["mask_rules"] == {"0/255": 8}


def test_a_group_without_rows_is_reported_not_dropped() -> None:
    stats = compute_stats(_manifest().select(groups=["0", "2"]))
    assert stats["groups_order"] == ["0", "2", "10"]
    assert stats["groups"]["10"]["images"] == 0 and stats["groups"]["10"]["coverage"] is None
    assert stats["imbalance"] == 5.0
    table = format_stats_table(stats)
    assert table.splitlines()[3].split()[:2] == ["10", "0"]


def test_table_rows_and_percentages() -> None:
    table = format_stats_table(compute_stats(_manifest()))
    lines = table.splitlines()
    assert lines[0].split()[:4] == ["group", "images", "train", "valid"]
    expected = "0 5 3 2 62.5% 20.0% 20.0% 4.0% 36.0% 1 32-48x32-32 (2 sizes)"
    assert lines[1].split() == expected.split()
    assert lines[2].split()[:2] == ["2", "1"] and lines[3].split()[-1] == "64x64"
    assert lines[-2].startswith("all") and lines[-1] == "largest / smallest group: 5.0x"


coverages = st.lists(st.floats(0.0, 1.0), min_size=1, max_size=30)


parts_strategy = st.lists(
    st.tuples(st.sampled_from("abc"), st.sampled_from(["train", "valid"]), coverages),
    min_size=1,
    max_size=3,
)


@settings(max_examples=40, deadline=None)
@given(parts_strategy)
def test_invariants(parts) -> None:
    rows = [(g, s, 8, 8, c) for g, s, covs in parts for c in covs]
    stats = compute_stats(_manifest(rows))
    assert sum(b["images"] for b in stats["groups"].values()) == len(rows)
    for g, block in stats["groups"].items():
        cov = block["coverage"]
        values = [r[4] for r in rows if r[0] == g]
        assert block["empty_masks"] == sum(v == 0 for v in values)
        assert sum(block["splits"].values()) == block["images"] == len(values)
        assert cov["min"] <= cov["q10"] <= cov["q25"] <= cov["median"] <= cov["q75"]
        assert cov["q75"] <= cov["q90"] <= cov["max"]
        assert cov["min"] - 1e-12 <= cov["mean"] <= cov["max"] + 1e-12


def test_plot_is_a_real_figure(tmp_path: Path) -> None:
    path = plot_stats(compute_stats(_manifest()), tmp_path / "stats.png")
    with Image.open(path) as img:
        assert img.format == "PNG" and img.width > 1000 and img.height > 400
        pixels = np.asarray(img.convert("L"), dtype=float)
    assert (pixels < 128).mean() > 0.01  # bars, boxes and text, not a blank canvas
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stats.png"]  # no temp file left


def test_cli_writes_table_json_and_plot(tmp_path: Path, capsys) -> None:
    manifest = _write_manifest(tmp_path)
    out_json, out_png = tmp_path / "out" / "stats.json", tmp_path / "out" / "stats.png"
    code = main(["stats", str(manifest), "--json", str(out_json), "--plot", str(out_png)])
    assert code == 0
    text = capsys.readouterr().out
    assert "group" in text and "largest / smallest group: 5.0x" in text
    data = json.loads(out_json.read_text())
    assert {"root", "images", "groups_order", "splits", "imbalance", "groups", "all"} <= set(data)
    assert set(data["groups"]["0"]) == {
        "images",
        "splits",
        "coverage",
        "empty_masks",
        "sizes",
        "mask_rules",
    }
    assert data["manifest"] == str(manifest) and Path(data["root"]) == tmp_path.resolve()
    assert data["groups"]["0"]["coverage"]["q90"] == pytest.approx(0.36)
    assert out_png.stat().st_size > 20_000
    assert sorted(p.name for p in out_json.parent.iterdir()) == ["stats.json", "stats.png"]


def test_missing_manifest_exits_2_and_names_it(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "nope" / "manifest.csv"
    assert main(["stats", str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err


def test_bad_plot_name_exits_2_before_writing(tmp_path: Path, capsys) -> None:
    manifest = _write_manifest(tmp_path)
    out_json = tmp_path / "stats.json"
    code = main(
        ["stats", str(manifest), "--json", str(out_json), "--plot", str(tmp_path / "x.gif")]
    )
    assert code == 2
    assert "x.gif" in capsys.readouterr().err
    assert not out_json.exists()


def test_bad_manifest_row_exits_2(tmp_path: Path, capsys) -> None:
    manifest = _write_manifest(tmp_path)
    manifest.write_text(manifest.read_text().replace(",0.3,", ",1.5,"))
    assert main(["stats", str(manifest)]) == 2
    assert str(manifest) in capsys.readouterr().err
