from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from segbalance.cli import COMMANDS, main


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_has_help_with_examples(name: str, capsys) -> None:
    importlib.import_module(f"segbalance.cli.{name}")  # every stage must be present
    with pytest.raises(SystemExit) as exc:
        main([name, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "Examples:" in out and f"segbalance {name}" in out


def test_python_m_runs_the_same_cli() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "segbalance", "--help"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0
    assert "synth" in proc.stdout or "COMMAND" in proc.stdout
