"""The README's examples must keep working as the code changes."""

from __future__ import annotations

import re
from pathlib import Path

from segbalance.classes import load_classes
from segbalance.cli import build_parser
from segbalance.config import load_config
from segbalance.pipeline.augment import build_augmenter

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_yaml_config_is_valid_and_builds(tmp_path) -> None:
    blocks = re.findall(r"```yaml\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README lost its YAML example"
    for i, block in enumerate(blocks):
        path = tmp_path / f"block{i}.yaml"
        path.write_text(block)
        if block.startswith("classes:"):  # a classes file (prepare --classes)
            assert load_classes(path).num_classes >= 2
            continue
        cfg = load_config(path)
        assert build_augmenter(cfg.augment, ["0", "1", "2", "3", "4"]) is not None


def test_readme_commands_parse() -> None:
    parser = build_parser()
    text = README.read_text()
    commands = re.findall(r"^segbalance (\w+ [^#>\n]*)", text, flags=re.M)
    assert len(commands) >= 8
    for line in commands:
        args = parser.parse_args(line.split())
        assert callable(args.func), line
