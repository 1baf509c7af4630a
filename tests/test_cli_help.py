"""Every command and every argument of the CLI says what it is for (`--help` is the manual)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from aetherium_hpc.cli import build_parser


def _walk(parser: argparse.ArgumentParser, prefix: str) -> list[tuple[str, argparse.ArgumentParser]]:
    out = [(prefix, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                assert helps.get(name), f"`{prefix} {name}` has no help line in `{prefix} --help`"
                out += _walk(sub, f"{prefix} {name}")
    return out


def test_every_argument_has_help() -> None:
    missing = []
    for prog, parser in _walk(build_parser(), "aetherium-hpc"):
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            if not action.help or action.help == argparse.SUPPRESS:
                missing.append(f"{prog} {'/'.join(action.option_strings) or action.dest}")
    assert not missing, f"arguments without help text: {missing}"


def test_help_examples_use_the_real_run_folder_naming() -> None:
    """Run folders are <name>-<YYYYmmdd-HHMMSS>-<4 hex> (paths.RunLayout.new), not 2024-05-01_train."""
    for prog, parser in _walk(build_parser(), "aetherium-hpc"):
        text = parser.format_help()
        assert "2024-05-01_train" not in text, prog


def test_gpu_notice_of_run_says_how_to_turn_it_off(tmp_path: Path) -> None:
    """`aetherium-hpc run` has no gpu=False: its notice names --no-gpu, which silences it."""

    def run(*extra: str) -> str:
        proc = subprocess.run([sys.executable, "-m", "aetherium_hpc", "run", *extra, "--db-dir", str(tmp_path / "db"),
                               "--", sys.executable, "-c", "pass"], capture_output=True, text=True, timeout=120,
                              cwd=Path(__file__).parent.parent)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        return proc.stderr

    notice = [line for line in run().splitlines() if "GPU" in line and "skipped" in line]
    if notice:  # a machine without GPUs (on a GPU machine there is nothing to say)
        assert "add --no-gpu to aetherium-hpc run" in notice[0] and "gpu=False" not in notice[0]
    assert "GPU metrics skipped" not in run("--no-gpu")
