from __future__ import annotations

import pytest

from segbalance.config import Config, config_from_dict, config_to_yaml, load_config
from segbalance.errors import UserError, unknown_name_error


def test_defaults_and_overrides() -> None:
    cfg = load_config(None, {"train.epochs": 3, "data.image_size": 64, "model.name": None})
    assert cfg.train.epochs == 3
    assert cfg.data.image_size == (64, 64)
    assert cfg.model.name == Config().model.name


def test_unknown_key_suggests(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epoch: 3\n")
    with pytest.raises(UserError, match=r"train\.epoch'.*Did you mean 'epochs'"):
        load_config(path)


def test_invalid_value_names_key(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  image_size: 50\n")
    with pytest.raises(UserError, match="data.image_size"):
        load_config(path)


def test_yaml_round_trip() -> None:
    import yaml

    cfg = load_config(None, {"sampling.balance": "power:0.5", "train.batch_size": 4})
    assert config_from_dict(yaml.safe_load(config_to_yaml(cfg))) == cfg


def test_unknown_name_error_lists_valid() -> None:
    err = unknown_name_error("loss", "dise", ["dice", "bce"])
    assert "did you mean 'dice'" in str(err) and "bce, dice" in str(err)
