"""segbalance predict: files/folders/globs, original sizes, bad files skipped, overlays.

``model_file`` is the shared random model of conftest.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segbalance.cli import main
from segbalance.overlays import overlay_image
from segbalance.predict_inputs import clashes, expand_inputs, output_names


def _image(path: Path, hw: tuple[int, int], seed: int, mode: str = "RGB") -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = rng.integers(0, 256, (*hw, 3), dtype=np.uint8)
    Image.fromarray(arr).convert(mode).save(path)


@pytest.fixture()
def inputs(tmp_path) -> Path:
    src = tmp_path / "in"
    _image(src / "a" / "x.png", (50, 70), 0)
    _image(src / "a" / "deep" / "y.jpg", (96, 40), 1)
    _image(src / "b" / "x.png", (64, 64), 2, mode="L")  # same name, other folder
    _image(src / "c" / "z.bmp", (33, 47), 3, mode="RGBA")
    (src / "a" / "notes.txt").write_text("not an image")
    (src / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    return src


def test_expand_and_mirror_names(inputs) -> None:
    files, problems, ignored = expand_inputs(
        [inputs / "a", str(inputs / "b" / "*.png"), inputs / "c" / "z.bmp", inputs / "nope"]
    )
    rel = [f.relative_to(inputs).as_posix() for f in files]
    assert rel == ["a/broken.png", "a/x.png", "a/deep/y.jpg", "b/x.png", "c/z.bmp"]
    assert [p.file for p in problems] == [str(inputs / "nope")]
    assert [p.file for p in ignored] == [str(inputs / "a" / "notes.txt")]  # said, not dropped
    names = [n.as_posix() for n in output_names(files)]
    assert names == [
        "a/broken.png.png",
        "a/x.png.png",
        "a/deep/y.jpg.png",
        "b/x.png.png",
        "c/z.bmp.png",
    ]


def test_output_name_is_the_full_input_name_plus_png(tmp_path) -> None:
    files = [tmp_path / "a.jpg", tmp_path / "a.png", tmp_path / "a.jpg.png"]
    names = [n.as_posix() for n in output_names(files)]
    assert names == ["a.jpg.png", "a.png.png", "a.jpg.png.png"]
    assert clashes(output_names(files)) == {}


def test_clashes_fold_case_and_catch_a_name_that_is_a_folder() -> None:
    names = [Path("A.png.png"), Path("a.png.png"), Path("d.png.png"), Path("d.png.png/e.png.png")]
    assert clashes(names) == {1: 0, 3: 2}


def test_cli_writes_masks_at_original_size_and_skips_bad_file(
    model_file, inputs, tmp_path, capsys
) -> None:
    out = tmp_path / "out"
    code = main(
        [
            "predict",
            str(model_file),
            str(inputs / "a"),
            str(inputs / "b" / "*.png"),
            str(inputs / "c" / "z.bmp"),
            "--out",
            str(out),
            "--overlay",
            "--probabilities",
            "--batch-size",
            "2",
            "--quiet",
        ]
    )
    assert code == 2  # one input could not be read
    err = capsys.readouterr().err
    assert "broken.png" in err
    expected = {"a/x.png.png": (50, 70), "a/deep/y.jpg.png": (96, 40), "b/x.png.png": (64, 64)}
    expected["c/z.bmp.png"] = (33, 47)
    foreground = 0
    for rel, hw in expected.items():
        mask = np.asarray(Image.open(out / "masks" / rel))
        assert mask.shape == hw and mask.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 255}
        foreground += int((mask > 0).sum())
        prob = np.asarray(Image.open(out / "probabilities" / rel))
        assert prob.shape == hw
        # the mask is the thresholded probability (up to 8-bit rounding at 0.5)
        agree = ((prob >= 128) == (mask > 0)).mean()
        assert agree > 0.99
        overlay = np.asarray(Image.open(out / "overlays" / rel))
        assert overlay.shape == (*hw, 3)
    assert foreground > 0
    assert not (out / "masks" / "a" / "broken.png.png").exists()
    assert [p.name for p in out.rglob(".*")] == [".segbalance"]  # no temp files left behind


def test_all_good_inputs_exit_zero(model_file, tmp_path) -> None:
    _image(tmp_path / "one.png", (40, 40), 5)
    code = main(["predict", str(model_file), str(tmp_path / "one.png"), "--out", str(tmp_path)])
    assert code == 0
    assert (tmp_path / "masks" / "one.png.png").is_file()
    assert not (tmp_path / "overlays").exists()


def test_earlier_outputs_inside_an_input_folder_are_not_inputs(model_file, tmp_path, capsys):
    _image(tmp_path / "one.png", (40, 40), 5)
    for _ in range(2):  # the second run sees out/masks/one.png inside the input folder
        code = main(["predict", str(model_file), str(tmp_path), "--out", str(tmp_path / "out")])
        assert code == 0
    assert "ignored 1 file(s), an earlier output" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "out" / "masks").rglob("*.png")) == ["one.png.png"]


def test_no_inputs_is_a_user_error(model_file, tmp_path) -> None:
    assert main(["predict", str(model_file), str(tmp_path / "*.png"), "--out", str(tmp_path)]) == 2


def test_overlay_tints_mask_and_draws_contour() -> None:
    image = np.full((20, 20, 3), 100, np.uint8)
    mask = np.zeros((20, 20), bool)
    mask[5:15, 5:15] = True
    out = overlay_image(image, mask)
    assert (out[0, 0] == image[0, 0]).all()  # background untouched
    assert (out[5, 5] == [255, 230, 0]).all()  # contour pixel
    inner = out[10, 10]
    assert not (inner == image[10, 10]).all() and not (inner == [255, 230, 0]).all()
