"""Every command and every argument of the CLI says what it is for (`--help` is the manual)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest
from testenv import ROOT

from aetherium_hpc.cli import build_parser
from aetherium_hpc.monitors.selection import GPU_VARIABLES


def _walk(parser: argparse.ArgumentParser, prefix: str) -> list[tuple[str, argparse.ArgumentParser]]:
    out = [(prefix, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                assert helps.get(name), f"`{prefix} {name}` has no help line in `{prefix} --help`"
                out += _walk(sub, f"{prefix} {name}")
    return out


def _undocumented(parser: argparse.ArgumentParser, prog: str) -> list[str]:
    """Every command without a help line in its parent's list and every argument without help text,
    at any depth under ``parser`` (what its --help would leave unexplained)."""
    missing = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                if not helps.get(name) or helps[name] == argparse.SUPPRESS:
                    missing.append(f"{prog} {name}")
                missing += _undocumented(sub, f"{prog} {name}")
        elif not action.help or action.help == argparse.SUPPRESS:
            missing.append(f"{prog} {'/'.join(action.option_strings) or action.dest}")
    return missing


def test_every_argument_has_help() -> None:
    missing = _undocumented(build_parser(), "aetherium-hpc")
    assert not missing, f"arguments without help text: {missing}"


def test_the_help_check_finds_what_lacks_help() -> None:
    """The check itself: a command, a nested command, an option and a positional without help are named."""
    parser = argparse.ArgumentParser(prog="tool")
    parser.add_argument("--shown", help="has help")
    parser.add_argument("--bare")
    sub = parser.add_subparsers(dest="command")
    quiet = sub.add_parser("quiet")
    quiet.add_argument("target")
    nested = quiet.add_subparsers(dest="what").add_parser("deep", help="has help")
    nested.add_argument("--flag", action="store_true")
    assert _undocumented(parser, "tool") == ["tool --bare", "tool quiet", "tool quiet target", "tool quiet deep --flag"]


def test_the_help_check_reaches_the_analysis_commands() -> None:
    """The commands registered by analysis/commands.py are walked as part of the CLI (no list kept here)."""
    from aetherium_hpc.analysis import commands

    alone = argparse.ArgumentParser(prog="aetherium-hpc")
    commands.register(alone.add_subparsers(dest="command"))
    registered = {prog for prog, _ in _walk(alone, "aetherium-hpc")} - {"aetherium-hpc"}
    walked = {prog for prog, _ in _walk(build_parser(), "aetherium-hpc")}
    assert registered and registered <= walked


def test_analyze_module_is_the_report_command(monkeypatch: pytest.MonkeyPatch) -> None:
    """`python -m aetherium_hpc.analyze` (the original pipeline's usage) takes the arguments of `report`."""
    monkeypatch.setenv("COLUMNS", "100")  # the same line width here and in the child
    proc = subprocess.run([sys.executable, "-m", "aetherium_hpc.analyze", "--help"], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = dict(_walk(build_parser(), "aetherium-hpc"))["aetherium-hpc report"]
    assert proc.stdout == report.format_help()


def test_help_examples_use_the_real_run_folder_naming() -> None:
    """Run folders are <name>-<YYYYmmdd-HHMMSS>-<4 hex> (paths.RunLayout.new), not 2024-05-01_train."""
    for prog, parser in _walk(build_parser(), "aetherium-hpc"):
        text = parser.format_help()
        assert "2024-05-01_train" not in text, prog


def test_gpu_notice_of_run_says_how_to_turn_it_off(tmp_path: Path) -> None:
    """`aetherium-hpc run` has no gpu=False: its notice names --no-gpu, which silences it."""

    def run(*extra: str, gpus: str = "0") -> str:
        """stderr of a run that was given GPUs ``gpus`` (a node without NVML says so only then)."""
        env = {k: v for k, v in os.environ.items() if k not in GPU_VARIABLES}
        proc = subprocess.run([sys.executable, "-m", "aetherium_hpc", "run", *extra, "--db-dir", str(tmp_path / "db"),
                               "--", sys.executable, "-c", "pass"], capture_output=True, text=True, timeout=120,
                              cwd=ROOT, env={**env, "CUDA_VISIBLE_DEVICES": gpus})  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        return proc.stderr

    notice = [line for line in run().splitlines() if "GPU" in line and "skipped" in line]
    if notice:  # a machine without GPUs (on a GPU machine there is nothing to say)
        assert "add --no-gpu to aetherium-hpc run" in notice[0] and "gpu=False" not in notice[0]
        if "libnvidia-ml" in notice[0]:  # a CPU node (no NVIDIA library): quiet when given no GPU
            assert "GPU metrics skipped" not in run(gpus="")
    assert "GPU metrics skipped" not in run("--no-gpu")


def test_export_help_explains_every_format_and_its_output() -> None:
    from aetherium_hpc.analysis.export import FORMATS

    text = dict(_walk(build_parser(), "aetherium-hpc"))["aetherium-hpc export"].format_help()
    for fmt in FORMATS:
        assert f"\n  {fmt} " in text, fmt  # one paragraph per format
    for extra in ("parquet", "tensorboard"):
        assert f"pip install 'aetherium-hpc[{extra}]'" in text
    assert "tensorboard --logdir" in text and "DIR/<run>/events.out.tfevents" in text


def test_every_command_help_ends_with_exit_codes_then_examples() -> None:
    """Every subcommand's --help, nested ones too, ends the same way: an ``exit codes:`` paragraph,
    then ``examples:`` with one indented example of that command per line (kept as written)."""
    for prog, parser in _walk(build_parser(), "aetherium-hpc")[1:]:
        text = parser.format_help()
        assert "\nexit codes: " in text, f"`{prog} --help` gives no exit codes"
        assert "\nexamples:\n  " in text, f"`{prog} --help` gives no examples"
        assert text.index("\nexit codes: ") < text.index("\nexamples:\n"), prog
        examples = text.split("\nexamples:\n", 1)[1].splitlines()
        assert all(line.startswith("  ") for line in examples), f"`{prog} --help`: {examples}"
        first_lines = [line for line in examples if not line.startswith("   ")]  # (deeper: a note's next line)
        assert first_lines and all(prog in line for line in first_lines), f"`{prog} --help`: {first_lines}"


def test_help_keeps_the_lines_of_an_epilog_and_wraps_a_description(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "60")
    text = dict(_walk(build_parser(), "aetherium-hpc"))["aetherium-hpc submit"].format_help()
    assert (
        "\n  aetherium-hpc submit configs/train.yaml --dry-run   (the resolved config and the sbatch script)\n" in text
    )
    description = text.split("\n\n")[1]
    assert description.startswith("Validate CONFIG") and max(len(line) for line in description.splitlines()) <= 60


def test_run_help_says_what_usr2_does() -> None:
    """job.sbatch sends its readers to `run --help` about USR2: it is there."""
    from aetherium_hpc import templates

    assert "aetherium-hpc run --help" in templates.text("job.sbatch") and "USR2" in templates.text("job.sbatch")
    text = dict(_walk(build_parser(), "aetherium-hpc"))["aetherium-hpc run"].format_help()
    usr2 = text.split("\n  USR2 ", 1)[1].split("\n  SIGTERM ", 1)[0]
    for said in ("--signal=USR2@120", "status timeout", "COMMAND gets USR2", "copied to --db-dir", "140"):
        assert said in " ".join(usr2.split()), said
