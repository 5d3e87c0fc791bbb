"""Augmentation op lists are typed config: every op error is raised by load_config.

Nothing here builds a dataset or imports TensorFlow: the op schemas (segbalance.augment_ops)
are pure pydantic, so a typo fails before the strategy, the model or a checkpoint restore.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from segbalance.augment_ops import OPS, Affine, Blur, Flip, Noise
from segbalance.config import AugmentConfig, config_from_dict, config_to_yaml, load_config
from segbalance.errors import UserError


def _load(ops: Any, key: str = "augment.default") -> None:
    load_config(None, {key: ops})


@pytest.mark.parametrize(
    ("ops", "match"),
    [
        # unknown op: its key path, a suggestion and the valid names
        (
            [{"type": "flip"}, {"type": "rotat"}],
            r"augment\.default\.1\.type='rotat': unknown augmentation op 'rotat'; "
            r"did you mean 'rotate'\? Valid: affine, blur, .*translate",
        ),
        ([{"p": 0.5}], r"augment\.default\.0\.type: every op needs a 'type': one of flip"),
        ([3], r"augment\.default\.0=3: an op is a mapping"),
        ("defualt", r"augment\.default='defualt': use 'default', 'none' or a list of ops"),
        # unknown parameter, with a suggestion when one is close
        (
            [{"type": "rotate", "degres": 3}],
            r"augment\.default\.0\.degres=3: unknown parameter of op 'rotate': 'degres'; "
            r"did you mean 'degrees'\? Valid: degrees, fill_mode, p",
        ),
        ([{"type": "flip", "xla": False}], r"augment\.default\.0\.xla=False: .*Valid: mode, p"),
        # out-of-range or ill-formed parameters
        ([{"type": "flip", "p": 1.5}], r"augment\.default\.0\.p=1\.5: .*less than or equal to 1"),
        ([{"type": "affine", "scale": 1.0}], r"augment\.default\.0\.scale=1\.0: .*less than 1"),
        ([{"type": "noise", "std": -1}], r"augment\.default\.0\.std=-1: .*greater than or equal"),
        ([{"type": "blur", "kernel_size": 4}], r"augment\.default\.0\.kernel_size=4: use an odd"),
        ([{"type": "blur", "sigma": [2, 1]}], r"augment\.default\.0\.sigma: .*0 < low <= high"),
        ([{"type": "flip", "mode": "diag"}], r"augment\.default\.0\.mode='diag': .*'vertical'"),
        ([{"type": "rotate", "fill_mode": "mirror"}], r"\.fill_mode='mirror': .*'reflect'"),
    ],
)
def test_bad_op_is_a_user_error_at_load(ops: Any, match: str) -> None:
    with pytest.raises(UserError, match=match):
        _load(ops)


def test_every_bad_op_of_a_list_is_reported_once() -> None:
    ops = [{"type": "rotat"}, {"type": "flip"}, {"type": "blur", "p": 2, "sigmas": 1}]
    with pytest.raises(UserError) as err:
        _load(ops)
    lines = str(err.value).splitlines()[1:]
    assert [line.split(":")[0].split("=")[0].strip() for line in lines] == [
        "augment.default.0.type",
        "augment.default.2.sigmas",
    ]


def test_group_op_errors_name_the_group() -> None:
    groups = {"4": [{"type": "flip"}, {"type": "affine", "degrees": 200}], "1": "non"}
    with pytest.raises(UserError) as err:
        _load(groups, "augment.groups")
    assert "augment.groups.4.1.degrees=200" in str(err.value)
    assert "augment.groups.1='non'" in str(err.value)


def test_a_typo_in_a_yaml_file_fails_at_load(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("augment:\n  groups:\n    '4': [{type: flip}, {type: blurr, p: 0.5}]\n")
    with pytest.raises(UserError, match=r"run\.yaml.*\n.*groups\.4\.1\.type.*'blur'"):
        load_config(path)


def test_albumentations_engine_needs_a_file_at_load() -> None:
    with pytest.raises(UserError, match="albumentations_file"):
        load_config(None, {"augment.engine": "albumentations"})


def test_ops_are_typed_models_and_keep_the_yaml_format() -> None:
    cfg = load_config(
        None,
        {
            "augment.default": [{"type": "flip", "p": 0.5}, {"type": "blur", "sigma": [0.5]}],
            "augment.groups": {"3": "none", "4": [{"type": "noise", "std": 4}]},
        },
    )
    assert cfg.augment.default == [Flip(p=0.5), Blur(sigma=(0.5, 0.5))]
    assert cfg.augment.groups == {"3": "none", "4": [Noise(std=4.0)]}
    saved = yaml.safe_load(config_to_yaml(cfg))
    assert saved["augment"]["default"][0] == {"type": "flip", "p": 0.5, "mode": "horizontal"}
    assert config_from_dict(saved) == cfg
    assert AugmentConfig.model_validate_json(cfg.augment.model_dump_json()) == cfg.augment
    assert config_from_dict(yaml.safe_load(config_to_yaml(load_config(None)))) == load_config(None)


def test_every_op_declares_what_it_moves_and_whether_it_compiles() -> None:
    for name, cls in OPS.items():
        op = cls()
        assert op.type == name
        assert cls.targets in ("image", "image+mask") and isinstance(cls.xla, bool), name
    assert Affine.targets == "image+mask" and Affine.xla
    assert Noise.targets == "image" and not Noise.xla


def test_config_validation_does_not_import_tensorflow() -> None:
    code = (
        "import sys\n"
        "from segbalance.config import load_config\n"
        "load_config(None, {'augment.default': [{'type': 'affine', 'degrees': 10}]})\n"
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
