"""One drawn mask, saved in every encoding: the coverage prepare records is the drawn one.

A disc of known pixel count is saved as gray/RGB/RGBA/LA/palette, PNG/JPEG/BMP/TIFF,
8/16/1-bit, then ``segbalance prepare`` runs on it (in-process). Each case either

* is accepted: the recorded coverage equals the drawn one (exactly for lossless files; within
  ``LOSSY_TOL`` for JPEG and anti-aliased ones), and training's decode of that manifest row
  (``decode_pair`` with the row's ``mask_rule``) gives exactly the recorded share, or
* is refused: exit 2, the mask file named, nothing written.

Why ``LOSSY_TOL`` (3% of the drawn area): JPEG ringing and anti-aliasing only move pixels on
the disc's edge (about 2*pi*r = 126 of its 1257 pixels), and a mid-level threshold keeps a
pixel on the side holding most of it, so a correct rule is off by a few edge pixels; the
wrong rule this guards against ("non-black is foreground") is off by 100% to 300%.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from segbalance.cli import main
from segbalance.config import AugmentConfig
from segbalance.data.manifest import read_manifest
from segbalance.errors import InvalidDataError
from segbalance.pipeline.dataset import build_train_dataset
from segbalance.pipeline.decode import decode_pair

SIZE, RADIUS = 64, 20
LOSSY_TOL = 0.03
_YY, _XX = np.mgrid[:SIZE, :SIZE] + 0.5
DISC = (_YY - SIZE / 2) ** 2 + (_XX - SIZE / 2) ** 2 < RADIUS**2
DRAWN = float(DISC.mean())


def _soft_disc() -> np.ndarray:
    """The disc anti-aliased: each pixel's covered share (8x8 supersampling), 0..255."""
    sub = (np.arange(SIZE * 8) + 0.5) / 8
    inside = (sub[:, None] - SIZE / 2) ** 2 + (sub[None, :] - SIZE / 2) ** 2 < RADIUS**2
    share = inside.reshape(SIZE, 8, SIZE, 8).mean(axis=(1, 3))
    return np.rint(share * 255).astype(np.uint8)


def _colour(fg: tuple[int, ...], bg: tuple[int, ...], plane: np.ndarray = DISC) -> np.ndarray:
    """An RGB(A) array: ``fg`` where ``plane`` (bool, or 0..255 for a soft edge), else ``bg``."""
    w = plane.astype(np.float32)[..., None] / (255.0 if plane.dtype == np.uint8 else 1.0)
    return np.rint(np.array(fg) * w + np.array(bg) * (1 - w)).astype(np.uint8)


def _palette(colours: list[int], fg_index: int = 1, bg_index: int = 0) -> Image.Image:
    img = Image.fromarray(np.where(DISC, fg_index, bg_index).astype(np.uint8), "P")
    img.putpalette(colours)
    return img


GRAY = (DISC * 255).astype(np.uint8)
LA_ALPHA = np.stack([np.zeros_like(GRAY), GRAY], axis=-1)  # gray flat, disc in alpha
RED, BLACK = (255, 0, 0), (0, 0, 0)
Save = Callable[[Path], None]


def _save(make: Callable[[], Image.Image], **opts: object) -> Save:
    return lambda path: make().save(path, **opts)


# name: (file name, writer, extra prepare flags, expected: "exact" | "lossy" | refusal text)
CASES: dict[str, tuple[str, Save, tuple[str, ...], str]] = {
    "gray-0-255-png": ("m.png", _save(lambda: Image.fromarray(GRAY)), (), "exact"),
    "gray-0-1-png": ("m.png", _save(lambda: Image.fromarray(DISC.astype(np.uint8))), (), "exact"),
    "gray-bmp": ("m.bmp", _save(lambda: Image.fromarray(GRAY)), (), "exact"),
    "gray-tiff": ("m.tif", _save(lambda: Image.fromarray(GRAY)), (), "exact"),
    "gray16-png": (
        "m.png",
        _save(lambda: Image.fromarray(DISC.astype(np.uint16) * 65535)),
        (),
        "exact",
    ),
    "gray16-tiff": (
        "m.tif",
        _save(lambda: Image.fromarray(DISC.astype(np.uint16) * 65535)),
        (),
        "exact",
    ),
    "gray16-png-threshold": (
        "m.png",
        _save(lambda: Image.fromarray(DISC.astype(np.uint16) * 65535)),
        ("--mask-threshold", "127"),
        "exact",
    ),
    "1bit-png": ("m.png", _save(lambda: Image.fromarray(DISC)), (), "exact"),
    "1bit-tiff": ("m.tif", _save(lambda: Image.fromarray(DISC)), (), "exact"),
    "1bit-bmp": ("m.bmp", _save(lambda: Image.fromarray(DISC)), (), "1-bit BMP"),
    "rgb-equal-channels-png": (
        "m.png",
        _save(lambda: Image.fromarray(GRAY).convert("RGB")),
        (),
        "exact",
    ),
    "red-png": ("m.png", _save(lambda: Image.fromarray(_colour(RED, BLACK))), (), "exact"),
    "green-bmp": (
        "m.bmp",
        _save(lambda: Image.fromarray(_colour((0, 255, 0), BLACK))),
        (),
        "exact",
    ),
    "red-tiff": ("m.tif", _save(lambda: Image.fromarray(_colour(RED, BLACK))), (), "exact"),
    "rgba-red-on-clear-black": (
        "m.png",
        _save(lambda: Image.fromarray(_colour((*RED, 255), (0, 0, 0, 0)))),
        (),
        "exact",
    ),
    "palette-black-red-png": ("m.png", _save(lambda: _palette([*BLACK, *RED])), (), "exact"),
    "palette-black-red-tiff": ("m.tif", _save(lambda: _palette([*BLACK, *RED])), (), "exact"),
    "palette-colour-bmp": ("m.bmp", _save(lambda: _palette([*BLACK, *RED])), (), "8-bit colour"),
    "palette-white-background": (
        "m.png",
        _save(lambda: _palette([255, 255, 255, *RED])),
        (),
        "neither black",
    ),
    "palette-index0-red-black-drawn": (
        "m.png",
        _save(lambda: _palette([*RED, *BLACK], fg_index=0, bg_index=1)),
        (),
        "not black",
    ),
    "gray-jpeg": ("m.jpg", _save(lambda: Image.fromarray(GRAY)), (), "JPEG mask"),
    "gray-jpeg-threshold": (
        "m.jpg",
        _save(lambda: Image.fromarray(GRAY)),
        ("--mask-threshold", "127"),
        "lossy",
    ),
    "0-1-jpeg": ("m.jpg", _save(lambda: Image.fromarray(DISC.astype(np.uint8))), (), "JPEG mask"),
    "0-1-jpeg-threshold": (
        "m.jpg",
        # at amplitude 1, default quality quantises edge pixels away (4% of the disc): the
        # file no longer holds the drawing, whatever the rule
        _save(lambda: Image.fromarray(DISC.astype(np.uint8)), quality=95),
        ("--mask-threshold", "0.5"),
        "lossy",
    ),
    "gray-antialiased": ("m.png", _save(lambda: Image.fromarray(_soft_disc())), (), "not binary"),
    "gray-antialiased-threshold": (
        "m.png",
        _save(lambda: Image.fromarray(_soft_disc())),
        ("--mask-threshold", "127"),
        "lossy",
    ),
    "red-jpeg": ("m.jpg", _save(lambda: Image.fromarray(_colour(RED, BLACK))), (), "JPEG mask"),
    "red-jpeg-threshold": (
        "m.jpg",
        _save(lambda: Image.fromarray(_colour(RED, BLACK))),
        ("--mask-threshold", "127"),
        "lossy",
    ),
    "red-jpeg-red-channel": (
        "m.jpg",
        _save(lambda: Image.fromarray(_colour(RED, BLACK))),
        ("--mask-threshold", "127", "--mask-channel", "red"),
        "lossy",
    ),
    "red-antialiased": (
        "m.png",
        _save(lambda: Image.fromarray(_colour(RED, BLACK, _soft_disc()))),
        (),
        "two colours",
    ),
    "red-antialiased-threshold": (
        "m.png",
        _save(lambda: Image.fromarray(_colour(RED, BLACK, _soft_disc()))),
        ("--mask-threshold", "127"),
        "lossy",
    ),
    "green-on-blue-png": (
        "m.png",
        _save(lambda: Image.fromarray(_colour((0, 255, 0), (0, 0, 255)))),
        (),
        "neither black",
    ),
    "green-on-blue-jpeg-threshold": (
        "m.jpg",
        _save(lambda: Image.fromarray(_colour((0, 255, 0), (0, 0, 255)))),
        ("--mask-threshold", "127"),
        "background is not black",
    ),
    "green-on-blue-jpeg-green": (
        "m.jpg",
        _save(lambda: Image.fromarray(_colour((0, 255, 0), (0, 0, 255)))),
        ("--mask-threshold", "127", "--mask-channel", "green"),
        "lossy",
    ),
    "white-on-red-green-channel": (
        "m.png",
        _save(lambda: Image.fromarray(_colour((255, 255, 255), RED))),
        ("--mask-channel", "green"),
        "exact",
    ),
    "rgba-alpha-only": (
        "m.png",
        _save(lambda: Image.fromarray(_colour((0, 0, 0, 255), (0, 0, 0, 0)))),
        (),
        "alpha channel",
    ),
    "rgba-alpha-only-channel": (
        "m.png",
        _save(lambda: Image.fromarray(_colour((0, 0, 0, 255), (0, 0, 0, 0)))),
        ("--mask-channel", "alpha"),
        "exact",
    ),
    "rgba-soft-alpha-threshold": (
        "m.png",
        _save(lambda: Image.fromarray(_colour((9, 9, 9, 255), (9, 9, 9, 0), _soft_disc()))),
        ("--mask-channel", "alpha", "--mask-threshold", "127"),
        "lossy",
    ),
    "la-gray-opaque": ("m.png", _save(lambda: Image.fromarray(GRAY).convert("LA")), (), "exact"),
    "la-alpha-only": ("m.png", _save(lambda: Image.fromarray(LA_ALPHA, "LA")), (), "alpha channel"),
    "la-alpha-only-channel": (
        "m.png",
        _save(lambda: Image.fromarray(LA_ALPHA, "LA")),
        ("--mask-channel", "alpha"),
        "exact",
    ),
    # an unambiguous mask keeps its own rule whatever the flags (once refused: "no alpha")
    "alpha-channel-on-rgb": (
        "m.png",
        _save(lambda: Image.fromarray(_colour(RED, BLACK))),
        ("--mask-channel", "alpha"),
        "exact",
    ),
    "gray-channel-on-colour": (
        "m.png",
        _save(lambda: Image.fromarray(_colour(RED, BLACK))),
        ("--mask-channel", "gray"),
        "exact",
    ),
    "alpha-channel-on-soft-rgb": (
        "m.png",
        _save(lambda: Image.fromarray(_colour(RED, BLACK, _soft_disc()))),
        ("--mask-channel", "alpha"),
        "no alpha channel",
    ),
    "gray-channel-on-soft-colour": (
        "m.png",
        _save(lambda: Image.fromarray(_colour(RED, BLACK, _soft_disc()))),
        ("--mask-channel", "gray"),
        "not gray",
    ),
    "gray-channel-on-colour-jpeg-threshold": (
        "m.jpg",
        _save(lambda: Image.fromarray(_colour(RED, BLACK))),
        ("--mask-channel", "gray", "--mask-threshold", "127"),
        "lossy",
    ),
    "white-on-red-threshold-only": (
        "m.png",
        _save(lambda: Image.fromarray(_colour((255, 255, 255), RED, _soft_disc()))),
        ("--mask-threshold", "127"),
        "background is not black",
    ),
    "white-on-red-antialiased-green": (
        "m.png",
        _save(lambda: Image.fromarray(_colour((255, 255, 255), RED, _soft_disc()))),
        ("--mask-threshold", "127", "--mask-channel", "green"),
        "lossy",
    ),
    "green-antialiased-threshold": (
        "m.png",
        _save(lambda: Image.fromarray(_colour((0, 255, 0), BLACK, _soft_disc()))),
        ("--mask-threshold", "127"),
        "lossy",
    ),
    "cmyk-jpeg": ("m.jpg", _save(lambda: Image.fromarray(GRAY).convert("CMYK")), (), "CMYK"),
}


def _prepare(root: Path, capsys, flags: tuple[str, ...]) -> tuple[int, str]:
    code = main(["prepare", str(root), "--quiet", *flags])
    out, err = capsys.readouterr()
    return code, out + err


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_recorded_coverage_is_the_drawn_one_or_the_file_is_refused(
    tmp_path: Path, capsys, case: str
) -> None:
    name, save, flags, expected = CASES[case]
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    Image.fromarray(np.full((SIZE, SIZE, 3), 90, np.uint8)).save(tmp_path / "images" / "m.png")
    save(tmp_path / "masks" / name)
    code, text = _prepare(tmp_path, capsys, flags)
    if expected not in ("exact", "lossy"):
        assert code == 2, text
        assert f"masks/{name}" in text and expected in text, text
        assert "Traceback" not in text
        assert not (tmp_path / "segbalance").exists()  # nothing half-written
        return
    assert code == 0, text
    manifest = read_manifest(tmp_path / "segbalance" / "manifest.csv")
    recorded, rule = float(manifest.coverage[0]), manifest.mask_rule[0]
    if expected == "exact":
        assert recorded == pytest.approx(DRAWN, abs=1e-12), rule
    else:
        assert abs(recorded - DRAWN) <= LOSSY_TOL * DRAWN, (rule, recorded / DRAWN)
    # training reads the same foreground: the row's rule through the TF decode path
    _, mask = decode_pair(
        tf.constant(manifest.image_paths()[0]),
        tf.constant(manifest.mask_paths()[0]),
        (SIZE, SIZE),
        tf.constant(rule),
    )
    assert float(tf.reduce_mean(mask)) == pytest.approx(recorded, abs=1e-12), rule


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--mask-channel", "alhpa"), "did you mean 'alpha'"),
        (("--mask-threshold", "255"), "outside 0..255"),
        (("--mask-threshold", "nan"), "outside 0..255"),
        (("--mask-threshold", "-1"), "outside 0..255"),
        (("--mask-threshold", "half"), "not a number"),
    ],
)
def test_rule_flags_are_checked_when_parsed(tmp_path: Path, capsys, flags, message) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["prepare", str(tmp_path), *flags])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def _prepared_red_jpeg(root: Path, capsys) -> Path:
    name, save, flags, _ = CASES["red-jpeg-threshold"]
    (root / "images").mkdir()
    (root / "masks").mkdir()
    Image.fromarray(np.full((SIZE, SIZE, 3), 90, np.uint8)).save(root / "images" / "m.png")
    save(root / "masks" / name)
    assert _prepare(root, capsys, flags)[0] == 0
    return root / "segbalance" / "manifest.csv"


def test_unknown_rule_in_a_manifest_is_refused_with_its_line(tmp_path: Path, capsys) -> None:
    path = _prepared_red_jpeg(tmp_path, capsys)
    path.write_text(path.read_text().replace("any>127", "purple>1"))
    with pytest.raises(InvalidDataError, match="unknown mask rule 'purple>1'"):
        read_manifest(path)


def test_training_dataset_reads_the_rule_of_the_row(tmp_path: Path, capsys) -> None:
    manifest = read_manifest(_prepared_red_jpeg(tmp_path, capsys))
    augment = AugmentConfig(engine="none")
    ds = build_train_dataset(
        manifest, [0], [0], image_size=(SIZE, SIZE), batch_size=1, augment=augment, seed=0, epoch=0
    )
    mask = next(iter(ds))["mask"]
    assert float(tf.reduce_mean(mask)) == pytest.approx(float(manifest.coverage[0]), abs=1e-12)


# Mixed data sets: an unambiguous mask keeps its own rule whatever the flags; the flags read
# only the masks that need a rule, and a rule finding nothing in a mask that is not blank is
# refused for that file. kind: (file name, writer)
def _soft(fg: tuple[int, ...], bg: tuple[int, ...]) -> Save:
    return _save(lambda: Image.fromarray(_colour(fg, bg, _soft_disc())))


ALPHA_ONLY = _save(lambda: Image.fromarray(_colour((0, 0, 0, 255), (0, 0, 0, 0))))
KINDS: dict[str, tuple[str, Save]] = {
    "g255": ("g255.png", _save(lambda: Image.fromarray(GRAY))),
    "g01": ("g01.png", _save(lambda: Image.fromarray(DISC.astype(np.uint8)))),
    "g16": ("g16.png", _save(lambda: Image.fromarray(DISC.astype(np.uint16) * 65535))),
    "jpeg": ("jpeg.jpg", _save(lambda: Image.fromarray(GRAY))),
    "jpeg01": ("jpeg01.jpg", _save(lambda: Image.fromarray(DISC.astype(np.uint8)), quality=95)),
    "alpha": ("alpha.png", ALPHA_ONLY),
    "la": ("la.png", _save(lambda: Image.fromarray(LA_ALPHA, "LA"))),
    "darkred": ("darkred.png", _save(lambda: Image.fromarray(_colour((100, 0, 0), BLACK)))),
    "darkred-soft": ("darkred_soft.png", _soft((100, 0, 0), BLACK)),
    "red-soft": ("red_soft.png", _soft(RED, BLACK)),
    "opaque-soft": ("opaque_soft.png", _soft((*RED, 255), (0, 0, 0, 255))),
    "white-on-red": ("white_red.png", _save(lambda: Image.fromarray(_colour((255,) * 3, RED)))),
    "palette": ("palette.png", _save(lambda: _palette([*BLACK, *RED]))),
    "light": (
        "light.png",
        _save(lambda: Image.fromarray(np.where(DISC, 255, 200).astype(np.uint8))),
    ),
    "g16-low": ("g16_low.png", _save(lambda: Image.fromarray(DISC.astype(np.uint16) * 30000))),
}
T127, ALPHA = ("--mask-threshold", "127"), ("--mask-channel", "alpha")
FOUR_GRAY = {f"g255-{i}": ("exact", "0/255") for i in range(4)}
# name: (flags, {kind[-copy]: ("exact" | "lossy", rule) or ("refused", text in the problem)})
MIXED: dict[str, tuple[tuple[str, ...], dict[str, tuple[str, str]]]] = {
    "0-255+0-1+jpeg-threshold": (
        T127,
        {"g255": ("exact", "0/255"), "g01": ("exact", "0/1"), "jpeg": ("lossy", "gray>127")},
    ),
    "darkred+jpeg-threshold": (
        T127,
        {"darkred": ("exact", "rgb-nonblack"), "jpeg": ("lossy", "gray>127")},
    ),
    "alpha-only+gray-red-channel": (
        ("--mask-channel", "red"),
        {"alpha": ("refused", "red>0 finds no foreground"), **FOUR_GRAY},
    ),
    "alpha-only+gray-alpha-channel": (ALPHA, {"alpha": ("exact", "alpha>0"), **FOUR_GRAY}),
    "alpha+jpeg+gray-alpha-channel": (
        ALPHA,
        {
            "alpha": ("exact", "alpha>0"),
            "jpeg": ("refused", "no alpha"),
            "g255": ("exact", "0/255"),
        },
    ),
    "alpha+jpeg+0-1-alpha-channel-threshold": (
        (*ALPHA, *T127),
        {"alpha": ("exact", "alpha>127"), "jpeg": ("lossy", "gray>127"), "g01": ("exact", "0/1")},
    ),
    "jpeg01+jpeg-threshold": (
        T127,
        {"jpeg01": ("refused", "gray>127 finds no foreground"), "jpeg": ("lossy", "gray>127")},
    ),
    "jpeg01+gray-low-threshold": (
        ("--mask-threshold", "0.5"),
        {"jpeg01": ("lossy", "gray>0.5"), "g255": ("exact", "0/255")},
    ),
    "dark-colours-threshold": (
        T127,
        {
            "darkred-soft": ("refused", "any>127 finds no foreground"),
            "red-soft": ("lossy", "any>127"),
            "darkred": ("exact", "rgb-nonblack"),
        },
    ),
    "dark-soft-low-threshold": (
        ("--mask-threshold", "50"),
        {"darkred-soft": ("lossy", "any>50"), "darkred": ("exact", "rgb-nonblack")},
    ),
    "alpha-only+la-gray-channel": (
        ("--mask-channel", "gray"),
        {
            "alpha": ("refused", "gray>0 finds no foreground"),
            "la": ("refused", "gray>0 finds no foreground"),
            "g255": ("exact", "0/255"),
        },
    ),
    "white-on-red+alpha-green-channel": (
        ("--mask-channel", "green"),
        {"white-on-red": ("exact", "green>0"), "alpha": ("refused", "green>0 finds no fore")},
    ),
    "white-on-red+alpha-alpha-channel": (
        ALPHA,
        {"white-on-red": ("refused", "no alpha"), "alpha": ("exact", "alpha>0")},
    ),
    "soft-colour+gray-alpha-channel": (
        ALPHA,
        {
            "red-soft": ("refused", "no alpha"),
            "opaque-soft": ("refused", "alpha channel is flat"),
            "g01": ("exact", "0/1"),
        },
    ),
    "soft-colour+alpha-alpha-channel-threshold": (
        (*ALPHA, *T127),
        {
            "red-soft": ("lossy", "any>127"),
            "opaque-soft": ("lossy", "any>127"),
            "la": ("exact", "alpha>127"),
        },
    ),
    "every-silent-kind-every-flag": (
        ("--mask-channel", "blue", "--mask-threshold", "200"),
        {
            "g255": ("exact", "0/255"),
            "g01": ("exact", "0/1"),
            "g16": ("exact", "0/255"),
            "darkred": ("exact", "rgb-nonblack"),
            "palette": ("exact", "palette-nonblack"),
        },
    ),
    "light-background-threshold": (
        T127,
        {"light": ("refused", "no background"), "g01": ("exact", "0/1")},
    ),
    "light-background-high-threshold": (
        ("--mask-threshold", "227"),
        {"light": ("exact", "gray>227"), "g01": ("exact", "0/1")},
    ),
    "16bit-low-threshold": (
        T127,
        {"g16-low": ("refused", "values 0..116.7: gray>127 finds no"), "g16": ("exact", "0/255")},
    ),
}


def _build_mixed(root: Path, kinds: dict[str, tuple[str, str]]) -> dict[str, str]:
    """Images and masks for each kind; returns mask path (as the manifest holds it) -> kind."""
    (root / "images").mkdir()
    (root / "masks").mkdir()
    paths = {}
    for key in kinds:
        kind, _, copy = key.partition("-") if key.startswith("g255-") else (key, "", "")
        name, save = KINDS[kind]
        stem, ext = name.rsplit(".", 1)
        stem += copy
        Image.fromarray(np.full((SIZE, SIZE, 3), 90, np.uint8)).save(root / f"images/{stem}.png")
        save(root / f"masks/{stem}.{ext}")
        paths[f"masks/{stem}.{ext}"] = key
    return paths


@pytest.mark.parametrize("case", list(MIXED), ids=list(MIXED))
def test_flags_read_only_masks_that_need_a_rule(tmp_path: Path, capsys, recwarn, case) -> None:
    flags, kinds = MIXED[case]
    paths = _build_mixed(tmp_path, kinds)
    refused = {p for p, k in paths.items() if kinds[k][0] == "refused"}
    code, text = _prepare(tmp_path, capsys, flags)
    assert "Traceback" not in text and "Warning" not in text, text
    assert code == (2 if refused else 0), text
    if refused:
        assert all(p in text for p in refused), text
        assert not any(p in text for p in set(paths) - refused), text
        code, text = _prepare(tmp_path, capsys, (*flags, "--skip-invalid"))
        assert code == 0 and "Traceback" not in text and "Warning" not in text, text
        with open(tmp_path / "segbalance" / "manifest_rejects.csv", newline="") as fh:
            rejects = {row["mask"]: row for row in csv.DictReader(fh)}
        assert set(rejects) == refused
        for path in refused:
            problem, fix = rejects[path]["problem"], rejects[path]["fix"]
            assert kinds[paths[path]][1] in problem, (path, problem)
            # a fix that can be followed: never drop a global flag "for it", never name a
            # second channel next to the one the flag sets for every mask
            assert fix and "drop --mask-channel" not in fix, fix
            others = {c for c in ("red", "green", "blue", "gray", "alpha") if c not in flags}
            assert not any(f"--mask-channel {c}" in fix for c in others) or (
                "finds no foreground" in problem
            ), fix
    manifest = read_manifest(tmp_path / "segbalance" / "manifest.csv")
    columns = (manifest.mask, manifest.coverage, manifest.mask_rule)
    rows = {m: (float(c), r) for m, c, r in zip(*columns, strict=True)}
    assert set(rows) == set(paths) - refused
    for path, (recorded, rule) in rows.items():
        outcome, expected_rule = kinds[paths[path]]
        assert rule == expected_rule, path
        tol = 1e-12 if outcome == "exact" else LOSSY_TOL * DRAWN
        assert abs(recorded - DRAWN) <= tol, (path, rule, recorded / DRAWN)
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]
