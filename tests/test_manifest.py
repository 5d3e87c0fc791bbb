"""Manifest type, CSV round trip, root resolution, malformed manifests, the split rule."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from segbalance.data.manifest import (
    COLUMNS,
    Manifest,
    natural_sort,
    read_manifest,
    sidecar_path,
    write_manifest,
)
from segbalance.data.paths import path_problem
from segbalance.data.prepare import assign_splits
from segbalance.errors import InvalidDataError, UserError


def _manifest(root: Path, groups: list[str], splits: list[str] | None = None) -> Manifest:
    n = len(groups)
    image = [f"Images/{g}/img{i}.png" for i, g in enumerate(groups)]
    mask = [f"Masks/{g}/img{i}.png" for i, g in enumerate(groups)]
    for rel in image + mask:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    return Manifest(
        root=root,
        image=tuple(image),
        mask=tuple(mask),
        group=tuple(groups),
        split=tuple(splits or ["train"] * n),
        height=np.full(n, 32),
        width=np.arange(n) + 40,
        coverage=np.linspace(0.0, 1.0, n) / 3.0,
        mask_rule=tuple(["0/255"] * n),
    )


def test_natural_sort_orders_numbers_by_value() -> None:
    assert natural_sort(["10", "2", "1", "b", "a10", "a9"]) == ["1", "2", "10", "a9", "a10", "b"]


@given(st.lists(st.integers(0, 10**6), unique=True), st.sampled_from(["", "g", "img_"]))
def test_natural_sort_property(numbers: list[int], prefix: str) -> None:
    names = [f"{prefix}{n}" for n in numbers]
    assert natural_sort(names) == [f"{prefix}{n}" for n in sorted(numbers)]


def test_groups_ids_and_select_keep_the_full_order(tmp_path: Path) -> None:
    m = _manifest(
        tmp_path, ["10", "2", "2", "0", "10"], ["train", "valid", "train", "valid", "valid"]
    )
    assert m.groups == ["0", "2", "10"]
    assert m.group_ids.dtype == np.int32
    assert m.group_ids.tolist() == [2, 1, 1, 0, 2]
    valid = m.select(split="valid")
    assert len(valid) == 3 and valid.groups == m.groups
    assert valid.group_ids.tolist() == [1, 0, 2]
    only10 = m.select(groups=["10"])
    assert only10.groups == ["0", "2", "10"] and only10.group_ids.tolist() == [2, 2]
    assert only10.counts() == {"0": 0, "2": 0, "10": 2}
    assert m.select(split="valid", groups=["2"]).image == ("Images/2/img1.png",)
    with pytest.raises(UserError, match="'?7'? not in the manifest|7 not in the manifest"):
        m.select(groups=["7"])


def test_paths_are_absolute(tmp_path: Path) -> None:
    m = _manifest(tmp_path, ["a", "b"])
    assert m.image_paths()[0] == str(tmp_path.absolute() / "Images/a/img0.png")
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in m.mask_paths())


def test_write_read_round_trip_is_exact(tmp_path: Path) -> None:
    m = _manifest(tmp_path, ["1", "0", "1", "2"], ["train", "valid", "valid", "test"])
    out = tmp_path / "segbalance" / "manifest.csv"
    write_manifest(m, out, {"layout": "a"})
    assert out.read_text().splitlines()[0] == ",".join(COLUMNS)
    back = read_manifest(out)
    assert back.root == tmp_path.absolute()
    for col in ("image", "mask", "group", "split", "mask_rule"):
        assert getattr(back, col) == getattr(m, col)
    for col in ("height", "width", "coverage"):
        np.testing.assert_array_equal(getattr(back, col), getattr(m, col))
    meta = json.loads(sidecar_path(out).read_text())
    assert meta["root"] == ".." and meta["layout"] == "a"
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp left


def test_root_resolution_order(tmp_path: Path) -> None:
    data = tmp_path / "data"
    m = _manifest(data, ["0", "0"])
    elsewhere = tmp_path / "runs" / "m.csv"
    write_manifest(m, elsewhere)
    assert read_manifest(elsewhere).root == data.absolute()  # via the sidecar
    sidecar_path(elsewhere).unlink()
    with pytest.raises(InvalidDataError, match="does not exist"):
        read_manifest(elsewhere)  # falls back to the CSV's folder, where files are missing
    assert read_manifest(elsewhere, root=data).root == data.absolute()
    # no sidecar, CSV in a folder named segbalance: the parent is the root
    default = data / "segbalance" / "manifest.csv"
    write_manifest(m, default)
    sidecar_path(default).unlink()
    assert read_manifest(default).root == data.absolute()
    # no sidecar, CSV directly in the data root
    direct = data / "list.csv"
    write_manifest(m, direct)
    sidecar_path(direct).unlink()
    assert read_manifest(direct).root == data.absolute()


HEADER = ",".join(COLUMNS)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("image,mask,group,split\nImages/0/img0.png,Masks/0/img0.png,0,train\n", "lacks column"),
        (HEADER + "\nImages/0/img0.png,Masks/0/img0.png,0,training,32,40,0.1,0/255\n", ":2"),
        (HEADER + "\nImages/0/img0.png,Masks/0/img0.png,0,train,x,40,0.1,0/255\n", ":2"),
        (HEADER + "\nImages/0/img0.png,Masks/0/img0.png,0,train,32,40,1.5,0/255\n", ":2"),
        (HEADER + "\nImages/0/nope.png,Masks/0/img0.png,0,train,32,40,0.1,0/255\n", "nope.png"),
        (HEADER + "\n", "no rows"),
        (
            HEADER + "\n" + ("Images/0/img0.png,Masks/0/img0.png,0,train,32,40,0.1,0/255\n" * 2),
            ":3",
        ),
    ],
    ids=[
        "missing-column",
        "bad-split",
        "bad-height",
        "bad-coverage",
        "missing-file",
        "empty",
        "repeat",
    ],
)
def test_malformed_manifest_is_a_user_error_naming_file(
    tmp_path: Path, body: str, message: str
) -> None:
    _manifest(tmp_path, ["0"])
    path = tmp_path / "bad.csv"
    path.write_text(body)
    with pytest.raises(UserError) as err:
        read_manifest(path)
    assert message in str(err.value) and "bad.csv" in str(err.value)


def test_missing_manifest_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="segbalance prepare"):
        read_manifest(tmp_path / "none.csv")


def test_split_rule_hand_checked() -> None:
    groups = ["0"] * 10 + ["1"] * 2 + ["2"] + ["3"] * 3
    keys = [f"k{i}" for i in range(len(groups))]
    split = assign_splits(keys, groups, 0.2, seed=0)
    valid = {
        g: sum(s == "valid" for s, gg in zip(split, groups, strict=True) if gg == g) for g in "0123"
    }
    assert valid == {"0": 2, "1": 1, "2": 0, "3": 1}
    assert split == assign_splits(keys, groups, 0.2, seed=0)
    assert any(assign_splits(keys, groups, 0.2, seed=s) != split for s in range(1, 5))
    with pytest.raises(UserError, match="valid-fraction"):
        assign_splits(keys, groups, 1.0, seed=0)


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 30), min_size=1, max_size=6),
    fraction=st.floats(0.01, 0.99),
    seed=st.integers(0, 2**31),
)
def test_split_rule_properties(sizes: list[int], fraction: float, seed: int) -> None:
    groups = [str(g) for g, n in enumerate(sizes) for _ in range(n)]
    keys = [f"{g}/{i}" for i, g in enumerate(groups)]
    split = assign_splits(keys, groups, fraction, seed)
    for g, n in enumerate(sizes):
        n_valid = sum(s == "valid" for s, gg in zip(split, groups, strict=True) if gg == str(g))
        if n >= 2:
            assert 1 <= n_valid <= n - 1
        else:
            assert n_valid == 0
    # adding a group leaves the other groups' draws unchanged
    more = assign_splits([*keys, "new/0", "new/1"], [*groups, "new", "new"], fraction, seed)
    assert more[: len(keys)] == split


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("Images/0/a.png", None),
        ("./Images/0/a.png", None),
        ("Images/0/../1/a.png", None),
        ("a\\b.png", None),  # a backslash in a Linux name stays inside
        ("/etc/passwd", "is absolute"),
        ("\\1\\a.png", "is absolute"),
        ("C:\\data\\a.png", "is absolute"),
        ("c:data", "is absolute"),
        ("..", "climbs out"),
        ("../x.png", "climbs out"),
        ("1/../../etc/passwd", "climbs out"),
        ("..\\..\\etc\\passwd", "climbs out"),
        ("link/a.png", "through a symlink"),
        ("inner/a.png", None),  # a symlink that stays inside the root is fine
    ],
)
def test_path_problem_rule(tmp_path: Path, value: str, reason: str | None) -> None:
    root = tmp_path / "root"
    (root / "Images").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (root / "link").symlink_to(tmp_path / "outside")
    (root / "inner").symlink_to(root / "Images")
    got = path_problem(value, root)
    assert (got is None) if reason is None else (reason in str(got) and value in str(got))


def test_read_manifest_refuses_rows_outside_the_root(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path, ["0", "1"])
    path = write_manifest(manifest, tmp_path / "segbalance" / "m.csv")
    lines = path.read_text().splitlines()
    lines[2] = lines[2].replace("Images/1/img1.png", "../../elsewhere.png", 1)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(InvalidDataError) as err:
        read_manifest(path, check_files=False)
    assert f"{path}:3" in str(err.value) and "../../elsewhere.png" in str(err.value)
    meta = json.loads(sidecar_path(path).read_text())
    sidecar_path(path).write_text(json.dumps({**meta, "allow_outside_root": True}))
    assert read_manifest(path, check_files=False).image[1] == "../../elsewhere.png"
