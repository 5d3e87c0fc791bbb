"""Model files, predict inputs and output paths: every bad case is a clean refusal.

Each case asserts the exit code, that stderr names the file or value, that no traceback
is printed, and what is on disk afterwards (nothing partial, nothing of the user's gone).
Model cases use tiny 1x1-convolution networks (fast to save and load); the real U-Net is
conftest's ``model_file``.

Tests run as root here, and root writes into a chmod 555 folder anyway; the read-only
cases therefore use a folder no one can write in (sysfs ``/sys``, else procfs ``/proc``)
when the process is root, chmod 555 otherwise; they never skip. The
``--out`` under a regular file cases fail for root too.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import struct
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from segbalance.artifacts import META_MEMBER, ModelMeta, save_model
from segbalance.cli import main


def run(capsys, *argv: object) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    cap = capsys.readouterr()
    assert "Traceback" not in cap.err and "please report" not in cap.err, cap.err
    return code, cap.out, cap.err


def image(path: Path, hw: tuple[int, int] = (40, 40), seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (*hw, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return path


def tree(root: Path) -> dict[str, bytes]:
    """Every file below ``root`` with its bytes (for 'nothing changed' assertions)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


# ---------------------------------------------------------------- model files


def _net(channels_out: int = 1, size: int | None = 64) -> keras.Model:
    inp = keras.Input((size, size, 3))
    return keras.Model(inp, keras.layers.Conv2D(channels_out, 1)(inp))


def _with_meta(src: Path, dst: Path, text: str | None) -> Path:
    """``src`` with its segbalance.json replaced by ``text`` (None: left out)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            if name != META_MEMBER:
                zout.writestr(name, zin.read(name))
        if text is not None:
            zout.writestr(META_MEMBER, text)
    return dst


def _meta(**changes: object) -> str:
    raw = json.loads(ModelMeta(image_size=(64, 64), groups=["0"]).to_json())
    raw.update(changes)
    return json.dumps({k: v for k, v in raw.items() if v is not None})


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """Each kind of bad (or plain) model file by name."""
    d = tmp_path_factory.mktemp("models")
    meta = ModelMeta(image_size=(64, 64), groups=["0"])
    good = save_model(_net(), d / "good.keras", meta)
    inp = keras.Input((64, 64, 3))
    lam = keras.Model(inp, keras.layers.Lambda(lambda x: x[..., :1])(inp))
    data = good.read_bytes()
    files = {
        "lambda": save_model(lam, d / "lambda.keras", meta),
        "three_channels": save_model(_net(3), d / "three.keras", meta),
        "size_mismatch": save_model(_net(), d / "mismatch.keras", ModelMeta((32, 32), ["0"])),
        "plain": _with_meta(good, d / "plain.keras", None),
        "broken_json": _with_meta(good, d / "badjson.keras", "{not json"),
        "json_list": _with_meta(good, d / "list.keras", "[1, 2]"),
        "image_size_zero": _with_meta(good, d / "zero.keras", _meta(image_size=[0, 0])),
        "missing_key": _with_meta(good, d / "nokey.keras", _meta(image_size=None)),
        "unknown_key": _with_meta(good, d / "extra.keras", _meta(colour="blue")),
        "bad_threshold": _with_meta(good, d / "thr.keras", _meta(threshold=1.5)),
        "bad_output_kind": _with_meta(good, d / "out.keras", _meta(output="probabilities")),
    }
    (d / "trunc.keras").write_bytes(data[: len(data) // 2])
    (d / "empty.keras").write_bytes(b"")
    (d / "text.keras").write_text("hello, I am not a model\n")
    h5 = d / "model.h5"
    _net().save(h5)
    shutil.copy(h5, d / "h5.keras")
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(d / "noconfig.keras", "w") as zout:
        for name in zin.namelist():
            if name != "config.json":
                zout.writestr(name, zin.read(name))
    (d / "folder.keras").mkdir()
    crc = bytearray(data)  # the zip's directory intact, the weights' bytes damaged
    with zipfile.ZipFile(good) as archive:
        info = archive.getinfo("model.weights.h5")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra) + 100
    crc[start : start + 50] = b"\xff" * 50
    (d / "crc.keras").write_bytes(bytes(crc))
    for name in ("trunc", "empty", "text", "h5", "noconfig", "folder", "crc"):
        files[name] = d / f"{name}.keras"
    files["missing"] = d / "missing.keras"
    files["good"] = good
    return files


MODEL_CASES = [
    ("lambda", "safe_mode"),
    ("three_channels", "one foreground logit"),
    ("size_mismatch", "does not match the network"),
    ("plain", "--image-size"),
    ("broken_json", "segbalance.json is broken"),
    ("json_list", "not an object"),
    ("image_size_zero", "image_size [0, 0]"),
    ("missing_key", "missing key(s) image_size"),
    ("unknown_key", "unknown key(s) colour"),
    ("bad_threshold", "threshold 1.5"),
    ("bad_output_kind", "output 'probabilities'"),
    ("trunc", "truncated"),
    ("empty", "empty (0 bytes)"),
    ("text", "not a .keras archive"),
    ("h5", "HDF5"),
    ("noconfig", "no config.json"),
    ("folder", "is a folder"),
    ("missing", "does not exist"),
    ("crc", "Bad CRC-32"),
]


@pytest.mark.parametrize(("name", "says"), MODEL_CASES, ids=[c[0] for c in MODEL_CASES])
def test_predict_refuses_a_bad_model_file_cleanly(models, tmp_path, capsys, name, says) -> None:
    src = image(tmp_path / "in" / "a.png")
    code, _, err = run(capsys, "predict", models[name], src, "--out", tmp_path / "out")
    assert code == 2
    assert str(models[name]) in err and says in err, err
    assert not (tmp_path / "out").exists()  # refused before anything was created


@pytest.mark.parametrize(
    ("command", "name"),
    [
        *[("evaluate", n) for n in ("plain", "trunc", "image_size_zero", "h5")],
        *[("export", n) for n in ("lambda", "plain", "trunc", "three_channels")],
    ],
)
def test_evaluate_and_export_refuse_a_bad_model_file_cleanly(
    models, tmp_path, capsys, command, name
) -> None:
    data = tmp_path / "manifest.csv"
    data.write_text("image,mask\n")
    argv = [command, models[name]]
    argv += [data] if command == "evaluate" else ["--out", tmp_path / "sm"]
    code, _, err = run(capsys, *argv)
    assert code == 2 and str(models[name]) in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.csv"]


def test_plain_keras_model_predicts_with_image_size_and_threshold(models, tmp_path, capsys):
    src = image(tmp_path / "in" / "a.png", (30, 50))
    argv = ["predict", models["plain"], src, "--out", tmp_path / "out", "--quiet"]
    code, out, _ = run(capsys, *argv, "--image-size", 64, 64, "--threshold", 0.5)
    assert code == 0 and "wrote 1" in out
    assert np.asarray(Image.open(tmp_path / "out" / "masks" / "a.png.png")).shape == (30, 50)


@pytest.mark.parametrize(
    ("name", "flags", "says"),
    [
        ("plain", ["--image-size", "32", "32", "--threshold", "0.5"], "does not match"),
        ("plain", ["--image-size", "64", "64"], "--threshold"),
        ("plain", ["--image-size", "0", "64", "--threshold", "0.5"], "--image-size"),
        ("good", ["--image-size", "32", "32"], "--image-size 32 32"),
        ("good", ["--threshold", "1.5"], "threshold"),
        ("good", ["--max-pixels", "0"], "--max-pixels"),
    ],
    ids=["size_vs_network", "no_threshold", "zero_size", "size_vs_meta", "threshold", "pixels"],
)
def test_predict_flags_that_do_not_fit_are_refused(
    models, tmp_path, capsys, name, flags, says
) -> None:
    src = image(tmp_path / "in" / "a.png")
    code, _, err = run(capsys, "predict", models[name], src, "--out", tmp_path / "out", *flags)
    assert code == 2 and says in err, err
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- predict inputs


def _png_bomb(path: Path, side: int = 20_000) -> Path:
    """A valid 1-bit PNG of side x side pixels (400 Mpx) that is a few kB on disk."""
    row = b"\x00" + b"\x00" * ((side + 7) // 8)
    pack = zlib.compressobj(9)
    idat = b"".join(pack.compress(row) for _ in range(side)) + pack.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path


def _truncated_png(path: Path) -> Path:
    data = image(path, (60, 60)).read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _bytes(data: bytes) -> Callable[[Path], Path]:
    def write(path: Path) -> Path:
        path.write_bytes(data)
        return path

    return write


BAD_INPUTS: list[tuple[str, str, Callable[[Path], Path], str, list[str]]] = [
    ("empty_jpg", "bad.jpg", _bytes(b""), "empty file (0 bytes)", []),
    ("text_as_jpg", "bad.jpg", _bytes(b"hello"), "not an image", []),
    ("garbage_png", "bad.png", _bytes(b"\x89PNG\r\n\x1a\n junk"), "image", []),
    ("truncated_png", "bad.png", _truncated_png, "damaged or truncated", []),
    ("png_bomb", "bad.png", _png_bomb, "pixel cap", []),
    (
        "over_max_pixels",
        "bad.png",
        lambda p: image(p, (50, 50)),
        "pixel cap",
        ["--max-pixels", "2000"],
    ),
]


@pytest.mark.parametrize(
    ("name", "make", "says", "flags"), [c[1:] for c in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS]
)
def test_a_bad_input_is_named_in_plain_words_and_the_rest_go_on(
    model_file, tmp_path, capsys, name, make, says, flags
) -> None:
    src = tmp_path / "in"
    image(src / "good.png")
    bad = make(src / name)
    out = tmp_path / "out"
    code, stdout, err = run(capsys, "predict", model_file, src, "--out", out, "--quiet", *flags)
    assert code == 2 and str(bad) in err and says in err, err
    assert "pos " not in err and "tensorflow" not in err.lower()  # no decoder internals
    assert "wrote 1 image(s)" in stdout
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["good.png.png"]


def test_non_image_files_in_a_folder_are_said_not_dropped(model_file, tmp_path, capsys) -> None:
    image(tmp_path / "in" / "a.png")
    (tmp_path / "in" / "notes.txt").write_text("x")
    code, out, _ = run(capsys, "predict", model_file, tmp_path / "in", "--out", tmp_path / "o")
    assert code == 0 and "ignored 1 file(s), not an image file name" in out and "notes.txt" in out
    out = tmp_path / "o2"
    code, _, err = run(capsys, "predict", model_file, tmp_path / "in" / "notes.txt", "--out", out)
    assert code == 2 and "notes.txt" in err and "not an image" in err
    assert not out.exists()  # no empty --out when no input could be read


def test_same_names_with_other_extensions_give_one_mask_each(model_file, tmp_path, capsys):
    for i, name in enumerate(["a.jpg", "a.png", "a.jpg.png"]):
        image(tmp_path / "in" / name, (30 + i, 40))
    code, out, _ = run(capsys, "predict", model_file, tmp_path / "in", "--out", tmp_path / "out")
    assert code == 0 and "wrote 3 image(s)" in out
    masks = {p.name: Image.open(p).size for p in (tmp_path / "out" / "masks").iterdir()}
    assert masks == {"a.jpg.png": (40, 30), "a.png.png": (40, 31), "a.jpg.png.png": (40, 32)}


@pytest.mark.parametrize("out_inside", [True, False], ids=["out_in_inputs", "out_elsewhere"])
def test_earlier_outputs_are_never_inputs_whatever_out_was(
    model_file, tmp_path, capsys, out_inside
) -> None:
    src = tmp_path / "in"
    image(src / "a.png")
    first = src / "res" if out_inside else tmp_path / "res"
    assert run(capsys, "predict", model_file, src, "--out", first)[0] == 0
    seen = src if out_inside else tmp_path  # either way the second run walks res/masks/
    code, out, _ = run(capsys, "predict", model_file, seen, "--out", tmp_path / "second")
    assert code == 0 and "wrote 1 image(s)" in out and "earlier output" in out
    assert sorted(p.name for p in (tmp_path / "second").rglob("*.png")) == ["a.png.png"]
    code, _, err = run(capsys, "predict", model_file, first, "--out", tmp_path / "third")
    assert code == 2 and "only earlier outputs" in err and str(first) in err
    assert not (tmp_path / "third").exists()


# ---------------------------------------------------------------- output paths


def _unwritable(tmp_path: Path) -> Path:
    """A folder this process cannot write in (see the module docstring)."""
    if os.geteuid() != 0:
        folder = tmp_path / "ro"
        folder.mkdir()
        folder.chmod(0o555)
        return folder
    # Root ignores permission bits; the kernel's own file systems refuse new files to root.
    for folder in (Path("/sys"), Path("/proc")):
        try:
            with tempfile.TemporaryFile(dir=folder):
                continue
        except OSError:
            return folder
    raise AssertionError("no folder this root process cannot write in (/sys, /proc)")


@pytest.fixture()
def ro_dir(tmp_path) -> Iterator[Path]:
    folder = _unwritable(tmp_path)
    yield folder
    if folder.is_relative_to(tmp_path):
        folder.chmod(0o755)


@pytest.fixture()
def a_file(tmp_path) -> Path:
    path = tmp_path / "note.txt"
    path.write_text("mine\n")
    return path


def _out_cases(tmp_path: Path, a_file: Path, ro_dir: Path) -> dict[str, tuple[Path, str]]:
    return {
        "out_is_a_file": (a_file, "is a file"),
        "out_under_a_file": (a_file / "out", "which is a file"),
        "out_read_only": (ro_dir / "segbalance-out", "cannot write in"),
        "out_is_read_only": (ro_dir, "cannot write in"),
    }


@pytest.mark.parametrize(
    "case", ["out_is_a_file", "out_under_a_file", "out_read_only", "out_is_read_only"]
)
def test_predict_refuses_an_unwritable_out_before_any_work(
    model_file, tmp_path, capsys, a_file, ro_dir, case
) -> None:
    src = image(tmp_path / "in" / "a.png")
    out, says = _out_cases(tmp_path, a_file, ro_dir)[case]
    before = tree(tmp_path)
    code, _, err = run(capsys, "predict", model_file, src, "--out", out)
    assert code == 2 and str(out) in err and says in err, err
    assert tree(tmp_path) == before  # nothing written, nothing changed
    assert out in (a_file, ro_dir) or not out.exists()


def test_predict_refuses_an_out_whose_masks_is_a_file(model_file, tmp_path, capsys) -> None:
    src = image(tmp_path / "in" / "a.png")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "masks").write_text("mine\n")
    code, _, err = run(capsys, "predict", model_file, src, "--out", tmp_path / "out")
    assert code == 2 and str(tmp_path / "out" / "masks") in err and "is a file" in err
    assert tree(tmp_path / "out") == {"masks": b"mine\n"}


def test_an_output_name_that_is_also_a_folder_is_reported(model_file, tmp_path, capsys) -> None:
    image(tmp_path / "in" / "d.png")
    image(tmp_path / "in" / "d.png.png" / "e.png")  # d.png.png/ is also d.png's mask name
    code, out, err = run(capsys, "predict", model_file, tmp_path / "in", "--out", tmp_path / "o")
    assert code == 2 and "wrote 1 image(s)" in out and "same output name" in err, err
    assert str(tmp_path / "in" / "d.png.png" / "e.png") in err


def test_predict_never_replaces_a_users_file_in_an_out_it_did_not_create(
    model_file, tmp_path, capsys
) -> None:
    src = image(tmp_path / "in" / "a.png")
    mine = tmp_path / "out" / "masks" / "a.png.png"
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"my own mask")
    code, _, err = run(capsys, "predict", model_file, src, "--out", tmp_path / "out")
    assert code == 2 and str(mine) in err and "did not create" in err
    assert mine.read_bytes() == b"my own mask"
    assert sorted(p.name for p in (tmp_path / "out").rglob("*")) == ["a.png.png", "masks"]


def test_predict_reruns_into_its_own_out(model_file, tmp_path, capsys) -> None:
    src = image(tmp_path / "in" / "a.png")
    for _ in range(2):
        assert run(capsys, "predict", model_file, src, "--out", tmp_path / "out")[0] == 0
    assert (tmp_path / "out" / ".segbalance").is_file()


def test_a_full_disk_stops_predict_cleanly(model_file, tmp_path, capsys, monkeypatch) -> None:
    import segbalance.predict

    for name in ("a.png", "b.png"):
        image(tmp_path / "in" / name)

    def full(array: np.ndarray, path: Path) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(segbalance.predict, "save_png", full)
    code, _, err = run(capsys, "predict", model_file, tmp_path / "in", "--out", tmp_path / "o")
    assert code == 2 and "No space left" in err and "a.png.png" in err, err
    assert not list((tmp_path / "o").rglob("*.png"))


@pytest.mark.parametrize(
    "case",
    [
        "json_is_a_folder",
        "json_under_a_file",
        "json_read_only",
        "json_full_disk",
        "json_is_the_model",
        "json_is_a_sidecar",
    ],
)
def test_evaluate_json_is_checked_before_the_evaluation(
    model_file, tmp_path, capsys, monkeypatch, a_file, case
) -> None:
    import segbalance.evaluate

    def no_evaluation(*args: object, **kwargs: object) -> None:
        raise AssertionError("evaluate ran despite a bad --json")

    if case == "json_full_disk":

        def full(result: object, path: object) -> None:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))

        fake = {"rows": 0}
        monkeypatch.setattr(segbalance.evaluate, "evaluate", lambda *a, **k: fake)
        monkeypatch.setattr(segbalance.evaluate, "format_evaluation", lambda r: "table")
        monkeypatch.setattr(segbalance.evaluate, "write_json", full)
        target, says = tmp_path / "eval.json", "No space left"
    else:
        monkeypatch.setattr(segbalance.evaluate, "evaluate", no_evaluation)
        sidecar = tmp_path / "manifest.json"  # a .json, but the manifest's, not a result
        sidecar.write_text('{"root": ".", "tool": "segbalance"}\n')
        target, says = {
            "json_is_a_folder": (tmp_path, "is a folder"),
            "json_under_a_file": (a_file / "eval.json", "which is a file"),
            "json_read_only": (_unwritable(tmp_path) / "eval.json", "cannot write in"),
            "json_is_the_model": (a_file, "is not an earlier evaluation result"),
            "json_is_a_sidecar": (sidecar, "is not an earlier evaluation result"),
        }[case]
    before = tree(tmp_path)
    code, _, err = run(capsys, "evaluate", model_file, tmp_path / "m.csv", "--json", target)
    assert code == 2 and str(target) in err and says in err, err
    assert tree(tmp_path) == before


def test_evaluate_json_into_a_missing_folder_creates_it(
    model_file, tmp_path, capsys, monkeypatch
) -> None:
    import segbalance.evaluate

    fake = {"rows": 0, **{k: None for k in segbalance.evaluate.JSON_KEYS}}
    monkeypatch.setattr(segbalance.evaluate, "evaluate", lambda *a, **k: fake)
    monkeypatch.setattr(segbalance.evaluate, "format_evaluation", lambda r: "table")
    target = tmp_path / "new" / "deeper" / "eval.json"
    code, out, _ = run(capsys, "evaluate", model_file, tmp_path / "m.csv", "--json", target)
    assert code == 0 and f"wrote {target}" in out
    assert set(json.loads(target.read_text())) == set(segbalance.evaluate.JSON_KEYS)


@pytest.mark.parametrize(
    ("fmt", "case", "says"),
    [
        ("tflite", "under_a_file", "which is a file"),
        ("savedmodel", "under_a_file", "which is a file"),
        ("tflite", "read_only", "cannot write in"),
        ("savedmodel", "read_only", "cannot write in"),
    ],
)
def test_export_refuses_an_unwritable_out(
    model_file, tmp_path, capsys, a_file, fmt, case, says
) -> None:
    name = "m.tflite" if fmt == "tflite" else "sm"
    parent = a_file if case == "under_a_file" else _unwritable(tmp_path)
    before = tree(tmp_path)
    out = parent / name
    code, _, err = run(capsys, "export", model_file, "--format", fmt, "--out", out)
    assert code == 2 and str(out) in err and says in err, err
    assert tree(tmp_path) == before


def test_predict_into_a_folder_of_the_users_can_run_again(model_file, tmp_path, capsys) -> None:
    """The first run writes beside the user's files; the second replaces only its own."""
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(photos / "a.png")
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    argv = ["predict", str(model_file), str(photos / "a.png"), "--out", str(out)]
    for _ in range(2):
        assert main(argv) == 0, capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "my notes"
    assert (out / "masks" / "a.png.png").is_file()
    # and a predict over the whole folder does not read its own earlier masks back
    assert main(["predict", str(model_file), str(tmp_path), "--out", str(tmp_path / "o2")]) in (
        0,
        2,
    )
    assert not list((tmp_path / "o2" / "masks").rglob("a.png.png.png"))
