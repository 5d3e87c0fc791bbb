"""Train/eval tf.data datasets: contract, seeding, resume, sharding, groups, weights."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from segbalance.config import AugmentConfig
from segbalance.data.check import default_workers
from segbalance.data.manifest import Manifest
from segbalance.errors import UserError
from segbalance.pipeline import build_eval_dataset, build_train_dataset
from segbalance.pipeline.dataset import release_iterator
from segbalance.pipeline.decode import decode_pair

SIZE = (32, 32)
N = 9  # three groups of three


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Manifest:
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    images, masks, groups = [], [], []
    for i in range(N):
        group = ["g0", "g1", "g10"][i % 3]
        (root / "Images" / group).mkdir(parents=True, exist_ok=True)
        (root / "Masks" / group).mkdir(parents=True, exist_ok=True)
        h, w = 40 + 2 * i, 36  # sizes differ: the resize makes them batchable
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(img).save(root / "Images" / group / f"{i}.png")
        Image.fromarray(((img[..., 1] > 127) * 255).astype(np.uint8)).save(
            root / "Masks" / group / f"{i}.png"
        )
        images.append(f"Images/{group}/{i}.png")
        masks.append(f"Masks/{group}/{i}.png")
        groups.append(group)
    return Manifest(
        root=root,
        image=images,
        mask=masks,
        group=groups,
        split=["train"] * N,
        height=[40 + 2 * i for i in range(N)],
        width=[36] * N,
        coverage=[0.5] * N,
        mask_rule=["0/255"] * N,
    )


def _train(manifest: Manifest, indices: Any, positions: Any, **kw: Any) -> tf.data.Dataset:
    args: dict[str, Any] = {
        "image_size": SIZE,
        "batch_size": 2,
        "augment": AugmentConfig(),
        "seed": 0,
        "epoch": 0,
    }
    args.update(kw)
    return build_train_dataset(manifest, indices, positions, **args)


def _samples(ds: tf.data.Dataset) -> list[dict[str, np.ndarray]]:
    """Unbatched samples as numpy dicts."""
    return [{k: v.numpy() for k, v in el.items()} for el in ds.unbatch()]


PLAN = np.array([4, 0, 8, 1, 1, 5, 3, 7, 2, 6, 0])  # repeats allowed, any order
POS = np.arange(len(PLAN))


def test_train_dataset_contract_and_plan_order(manifest: Manifest) -> None:
    ds = _train(manifest, PLAN, POS)
    spec = ds.element_spec
    assert spec["image"].shape.as_list() == [None, 32, 32, 3]
    assert spec["image"].dtype == tf.float32 and spec["mask"].dtype == tf.float32
    assert spec["mask"].shape.as_list() == [None, 32, 32, 1]
    assert spec["group"].dtype == tf.int32 and spec["index"].dtype == tf.int64
    batches = list(ds)
    assert [int(b["image"].shape[0]) for b in batches] == [2, 2, 2, 2, 2, 1]
    samples = _samples(ds)
    np.testing.assert_array_equal([s["index"] for s in samples], PLAN)
    np.testing.assert_array_equal([s["group"] for s in samples], manifest.group_ids[PLAN])
    for s in samples:
        assert set(np.unique(s["mask"])) <= {0.0, 1.0}
        assert s["image"].min() >= 0 and s["image"].max() <= 255
        assert s["image"].max() > 1  # 0..255 scale, not 0..1


def test_train_and_eval_datasets_run_on_their_own_pool_of_twice_the_cores(
    manifest: Manifest,
) -> None:
    # The shared pool left ~8 % of 2 cores idle (README, "Streaming, every core busy").
    cores = default_workers()
    for ds in (
        _train(manifest, PLAN, POS),
        build_eval_dataset(manifest, image_size=(32, 32), batch_size=2),
    ):
        threading_options = ds.options().threading
        assert threading_options.private_threadpool_size == 2 * cores
        assert threading_options.max_intra_op_parallelism == 1


def test_same_seed_same_batches_other_epoch_other_augmentation(manifest: Manifest) -> None:
    a = _samples(_train(manifest, PLAN, POS))
    b = _samples(_train(manifest, PLAN, POS))
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["mask"], y["mask"])
    c = _samples(_train(manifest, PLAN, POS, epoch=1))
    differ = [not np.array_equal(x["image"], y["image"]) for x, y in zip(a, c, strict=True)]
    assert sum(differ) >= len(PLAN) - 2


def test_resume_and_shards_match_the_uninterrupted_run(manifest: Manifest) -> None:
    full = _samples(_train(manifest, PLAN, POS, epoch=3))
    k = 5
    tail = _samples(_train(manifest, PLAN[k:], POS[k:], epoch=3))
    for x, y in zip(full[k:], tail, strict=True):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["mask"], y["mask"])
    # Replica 1 of 2 reads every other position: same samples as the single run.
    odd = _samples(_train(manifest, PLAN[1::2], POS[1::2], epoch=3))
    for x, y in zip(full[1::2], odd, strict=True):
        np.testing.assert_array_equal(x["image"], y["image"])


def test_no_augmentation_equals_eval_decode(manifest: Manifest) -> None:
    eval_samples = _samples(build_eval_dataset(manifest, image_size=SIZE, batch_size=4))
    np.testing.assert_array_equal([s["index"] for s in eval_samples], np.arange(N))
    for s in eval_samples:
        i = int(s["index"])
        img, msk = decode_pair(
            tf.constant(manifest.image_paths()[i]), tf.constant(manifest.mask_paths()[i]), SIZE
        )
        np.testing.assert_array_equal(s["image"], img.numpy())
        np.testing.assert_array_equal(s["mask"], msk.numpy())
    # The train stream rounds resized pixels to uint8 (as the cache does), eval does not.
    plain = _samples(_train(manifest, PLAN, POS, augment=AugmentConfig(engine="none")))
    for s in plain:
        want = np.clip(np.rint(eval_samples[int(s["index"])]["image"]), 0, 255)
        np.testing.assert_array_equal(s["image"], want)


def test_group_pipelines_inside_one_dataset(manifest: Manifest) -> None:
    flip = [{"type": "flip", "p": 1.0}]
    cfg = AugmentConfig(default="none", groups={"g10": flip})
    ref = _samples(build_eval_dataset(manifest, image_size=SIZE, batch_size=4))
    for s in _samples(_train(manifest, PLAN, POS, augment=cfg)):
        want = dict(ref[int(s["index"])])
        want["image"] = np.rint(want["image"])  # the stream's uint8 pixels
        if manifest.group[int(s["index"])] == "g10":
            np.testing.assert_array_equal(s["image"], want["image"][:, ::-1])
            np.testing.assert_array_equal(s["mask"], want["mask"][:, ::-1])
        else:
            np.testing.assert_array_equal(s["image"], want["image"])


def test_sample_weights_follow_the_plan(manifest: Manifest) -> None:
    weights = np.arange(N, dtype=np.float32) / 2
    ds = _train(manifest, PLAN, POS, sample_weights=weights, augment=AugmentConfig(engine="none"))
    got = np.concatenate([b["weight"].numpy() for b in ds])
    np.testing.assert_array_equal(got, weights[PLAN])


@pytest.mark.parametrize(
    ("indices", "positions", "kw", "match"),
    [
        ([0, 9], [0, 1], {}, "row 9, outside the manifest's 9 rows"),
        ([0, 1], [0], {}, "differ in length"),
        ([0], [0], {"sample_weights": [1.0, 2.0]}, "one per manifest row"),
        ([0], [0], {"sample_weights": [-1.0] * N}, ">= 0"),
    ],
)
def test_bad_inputs_are_user_errors(
    manifest: Manifest, indices: list[int], positions: list[int], kw: dict[str, Any], match: str
) -> None:
    with pytest.raises(UserError, match=match):
        _train(manifest, indices, positions, **kw)


def test_unreadable_file_names_it(manifest: Manifest, tmp_path: Path) -> None:
    bad = Manifest(
        root=tmp_path,
        image=["gone.png"],
        mask=["gone_mask.png"],
        group=["g0"],
        split=["train"],
        height=[32],
        width=[32],
        coverage=[0.0],
        mask_rule=["0/255"],
    )
    with pytest.raises(tf.errors.NotFoundError, match=r"gone(_mask)?\.png"):
        list(_train(bad, [0], [0], augment=AugmentConfig(engine="none")))


def test_release_iterator_drops_it_on_its_own_thread_without_waiting() -> None:
    """A slow destructor (an epoch's iterator, sometimes) no longer holds the caller up."""
    dropped: dict[str, Any] = {}

    class SlowToDrop:
        def __del__(self) -> None:
            time.sleep(0.5)
            dropped["on"] = threading.current_thread()

    box: list[Any] = [SlowToDrop()]
    began = time.perf_counter()
    thread = release_iterator(box)
    assert time.perf_counter() - began < 0.4 and "on" not in dropped
    thread.join(10)
    assert dropped["on"] is thread and box == []


def test_release_iterator_drops_a_dataset_iterator() -> None:
    box: list[Any] = [iter(tf.data.Dataset.range(10).map(lambda x: x + 1).prefetch(2))]
    assert int(next(box[0])) == 1
    release_iterator(box).join(30)
    assert box == []
