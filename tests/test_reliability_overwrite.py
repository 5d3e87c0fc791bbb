"""Never delete or overwrite what segbalance did not create: every case is a clean refusal.

Each refusal asserts exit code 2, that stderr names the file and says what to do, that no
traceback is printed, and that nothing on disk changed (the user's file byte-identical,
nothing new beside it). Each re-run onto segbalance's own earlier output still works.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segbalance.cli import main
from segbalance.data.manifest import COLUMNS
from segbalance.data.synth import generate
from segbalance.errors import UserError
from segbalance.export import EXPORT_KIND, _check_out
from segbalance.io import is_our_figure, mark_dir

SYNTH = ["--scale", "0.001", "--size", "32", "--quiet", "--workers", "1"]


def run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    cap = capsys.readouterr()
    assert "Traceback" not in cap.err and "please report" not in cap.err, cap.err
    return code, cap.out, cap.err


def tree(root: Path) -> dict[str, bytes | None]:
    """Every path below ``root`` with its bytes (None: a folder)."""
    return {
        p.relative_to(root).as_posix(): (p.read_bytes() if p.is_file() else None)
        for p in sorted(root.rglob("*"))
    }


def a_png(path: Path) -> Path:
    """A real PNG segbalance did not write (no metadata)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path)
    return path


def small_synth(out: Path) -> Path:
    generate(out, scale=0.001, size=32, progress=False, workers=1)
    return out


# A case: (tmp, manifest) -> (argv, the file the message must name); it builds the user's
# files in tmp, and the command must refuse them. Then: the substrings stderr must hold,
# and those it must not (advice that would be refused anyway).
Setup = Callable[[Path, Path], tuple[list[object], str]]


def _prepare_users_csv(tmp: Path, manifest: Path) -> tuple[list[object], str]:
    (tmp / "mydata.csv").write_text("name,age\nbob,3\n")
    return ["prepare", manifest.parent.parent, "--out", tmp / "mydata.csv"], "mydata.csv"


def _prepare_users_sidecar(tmp: Path, manifest: Path) -> tuple[list[object], str]:
    (tmp / "mydata.json").write_text('{"mine": true}\n')
    return ["prepare", manifest.parent.parent, "--out", tmp / "mydata.csv"], "mydata.json"


def _prepare_users_rejects(tmp: Path, manifest: Path) -> tuple[list[object], str]:
    (tmp / "mydata_rejects.csv").write_text("a,b\n1,2\n")  # prepare would delete a stale list
    return ["prepare", manifest.parent.parent, "--out", tmp / "mydata.csv"], "mydata_rejects.csv"


def _prepare_columns_without_sidecar(tmp: Path, manifest: Path) -> tuple[list[object], str]:
    (tmp / "m.csv").write_text(",".join(COLUMNS) + "\n")  # looks like one, but no sidecar
    return ["prepare", manifest.parent.parent, "--out", tmp / "m.csv"], "m.csv"


def _stats_json(name: str, text: str) -> Setup:
    def setup(tmp: Path, manifest: Path) -> tuple[list[object], str]:
        (tmp / name).write_text(text)
        return ["stats", manifest, "--json", tmp / name], name

    return setup


def _stats_json_is_a_sidecar(tmp: Path, manifest: Path) -> tuple[list[object], str]:
    shutil.copy(manifest.with_suffix(".json"), tmp / "side.json")
    return ["stats", manifest, "--json", tmp / "side.json"], "side.json"


def _stats_plot_text(tmp: Path, manifest: Path) -> tuple[list[object], str]:
    (tmp / "mine.png").write_text("mine\n")
    return ["stats", manifest, "--plot", tmp / "mine.png"], "mine.png"


def _stats_plot_real_png(tmp: Path, manifest: Path) -> tuple[list[object], str]:
    return ["stats", manifest, "--plot", a_png(tmp / "photo.png")], "photo.png"


def _stats_plot_svg(tmp: Path, manifest: Path) -> tuple[list[object], str]:
    (tmp / "logo.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg"/>\n')
    return ["stats", manifest, "--plot", tmp / "logo.svg"], "logo.svg"


def _stats_root_missing(tmp: Path, manifest: Path) -> tuple[list[object], str]:
    return ["stats", manifest, "--root", tmp / "nope"], "nope"


def _stats_root_file(tmp: Path, manifest: Path) -> tuple[list[object], str]:
    (tmp / "afile").write_text("x\n")
    return ["stats", manifest, "--root", tmp / "afile"], "afile"


def _synth_extra_file(tmp: Path, manifest: Path) -> tuple[list[object], str]:
    out = small_synth(tmp / "OUT")
    a_png(out / "Images" / "0" / "my_extra.png")
    return ["synth", out, *SYNTH, "--overwrite"], "Images/0/my_extra.png"


def _synth_extra_group(tmp: Path, manifest: Path) -> tuple[list[object], str]:
    out = small_synth(tmp / "OUT")
    a_png(out / "Masks" / "9" / "x.png")
    return ["synth", out, *SYNTH, "--overwrite"], "Masks/9/"


def _synth_real_data(tmp: Path, manifest: Path) -> tuple[list[object], str]:
    a_png(tmp / "mine2" / "Images" / "0" / "a.png")
    a_png(tmp / "mine2" / "Masks" / "0" / "a.png")
    return ["synth", tmp / "mine2", *SYNTH], "synth.json"


def _synth_users_info(tmp: Path, manifest: Path) -> tuple[list[object], str]:
    (tmp / "OUT").mkdir()
    (tmp / "OUT" / "synth.json").write_text('{"my": "notes"}\n')
    return ["synth", tmp / "OUT", *SYNTH, "--overwrite"], "synth.json"


def _synth_under_a_file(tmp: Path, manifest: Path) -> tuple[list[object], str]:
    (tmp / "afile").write_text("x\n")
    return ["synth", tmp / "afile" / "sub", *SYNTH], "lies under"


def _export_users_folder(tmp: Path, manifest: Path) -> tuple[list[object], str]:
    (tmp / "mysm").mkdir()
    (tmp / "mysm" / "notes.txt").write_text("p\n")
    # the model is never opened: the output is refused first
    return ["export", tmp / "m.keras", "--format", "savedmodel", "--out", tmp / "mysm"], "mysm"


CHOOSE = "hoose another"  # "Choose another --out" / "choose another --json"
REFUSALS: dict[str, tuple[Setup, tuple[str, ...], tuple[str, ...]]] = {
    "prepare_out_is_a_users_csv": (_prepare_users_csv, (CHOOSE, "--out"), ()),
    "prepare_sidecar_is_a_users_json": (_prepare_users_sidecar, (CHOOSE,), ()),
    "prepare_rejects_is_a_users_csv": (_prepare_users_rejects, (CHOOSE,), ()),
    "prepare_manifest_columns_no_sidecar": (_prepare_columns_without_sidecar, (CHOOSE,), ()),
    "stats_json_is_a_shell_script": (
        _stats_json("victim.sh", "#!/bin/sh\necho hi\n"),
        (CHOOSE,),
        (),
    ),
    "stats_json_is_notes": (_stats_json("notes.txt", "my notes\n"), (CHOOSE,), ()),
    "stats_json_is_a_users_json": (_stats_json("my.json", '{"a": 1}\n'), (CHOOSE,), ()),
    "stats_json_is_an_eval_json": (
        _stats_json("eval.json", '{"groups": {}, "worst_group_iou": 0.5}\n'),
        (CHOOSE,),
        (),
    ),
    "stats_json_is_the_sidecar": (_stats_json_is_a_sidecar, (CHOOSE,), ()),
    "stats_plot_is_text": (_stats_plot_text, (CHOOSE, "--plot"), ()),
    "stats_plot_is_a_users_png": (_stats_plot_real_png, (CHOOSE,), ()),
    "stats_plot_is_a_users_svg": (_stats_plot_svg, (CHOOSE,), ()),
    "stats_root_missing": (_stats_root_missing, ("--root", "does not exist"), ()),
    "stats_root_is_a_file": (_stats_root_file, ("--root", "is a file"), ()),
    "synth_overwrite_extra_file": (_synth_extra_file, ("Move them out",), ()),
    "synth_overwrite_extra_group": (_synth_extra_group, ("Move them out",), ()),
    "synth_real_data_real_reason": (_synth_real_data, ("did not write",), ("--overwrite",)),
    "synth_info_not_ours": (_synth_users_info, ("empty or new OUT",), ()),
    "synth_out_under_a_file": (_synth_under_a_file, ("afile, which is a file",), ()),
    "export_users_folder_real_reason": (
        _export_users_folder,
        ("did not create it", "another --out"),
        ("pass --overwrite",),
    ),
}


@pytest.mark.parametrize("case", REFUSALS)
def test_refuses_what_segbalance_did_not_write(
    case: str,
    tmp_path: Path,
    synth_manifest: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    setup, expect, never = REFUSALS[case]
    argv, named = setup(tmp_path, synth_manifest)
    before = tree(tmp_path)
    manifest_before = tree(synth_manifest.parent)

    def no_scan(*args: object, **kwargs: object) -> None:
        raise AssertionError("prepare checked pairs before refusing its output")

    monkeypatch.setattr("segbalance.data.prepare.scan", no_scan)
    code, _, err = run(capsys, *argv)
    assert code == 2, err
    assert named in err, err
    for text in expect:
        assert text in err, err
    for text in never:
        assert text not in err, err
    assert tree(tmp_path) == before  # the user's files byte-identical, nothing new
    assert tree(synth_manifest.parent) == manifest_before


def test_prepare_replaces_its_own_manifest(
    tmp_path: Path, synth_manifest: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["prepare", synth_manifest.parent.parent, "--out", tmp_path / "m.csv", "--workers", 1]
    assert run(capsys, *argv)[0] == 0
    assert run(capsys, *argv)[0] == 0
    assert (tmp_path / "m.json").is_file()


@pytest.mark.parametrize("suffix", [".png", ".svg", ".pdf"])
def test_stats_replaces_its_own_json_and_figure(
    suffix: str, tmp_path: Path, synth_manifest: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plot, stats = tmp_path / f"s{suffix}", tmp_path / "s.json"
    argv = ["stats", synth_manifest, "--json", stats, "--plot", plot]
    assert run(capsys, *argv)[0] == 0
    assert is_our_figure(plot)
    first = json.loads(stats.read_text())
    assert run(capsys, *argv, "--root", synth_manifest.parent.parent)[0] == 0
    assert json.loads(stats.read_text())["groups"] == first["groups"]


def test_synth_overwrite_replaces_its_own_data_set(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = small_synth(tmp_path / "OUT")
    (out / "segbalance").mkdir()
    (out / "segbalance" / "keep.txt").write_text("mine\n")  # outside Images/ Masks/
    assert run(capsys, "synth", out, *SYNTH, "--overwrite", "--seed", "1")[0] == 0
    assert (out / "segbalance" / "keep.txt").read_text() == "mine\n"
    assert json.loads((out / "synth.json").read_text())["seed"] == 1


def test_synth_lists_at_most_five_foreign_files(tmp_path: Path) -> None:
    out = small_synth(tmp_path / "OUT")
    for i in range(8):
        (out / "Images" / "1" / f"extra{i}.png").write_text("x")
    with pytest.raises(UserError, match="and 3 more"):
        generate(out, scale=0.001, size=32, progress=False, overwrite=True, workers=1)
    assert len(list((out / "Images" / "1").glob("extra*"))) == 8


def test_export_replaces_only_its_own_folder(tmp_path: Path) -> None:
    ours = tmp_path / "sm"
    ours.mkdir()
    mark_dir(ours, EXPORT_KIND)
    _check_out("savedmodel", ours, True)  # its own earlier export: allowed
    with pytest.raises(UserError, match="pass --overwrite"):
        _check_out("savedmodel", ours, False)
