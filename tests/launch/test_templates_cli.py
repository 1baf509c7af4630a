"""`aetherium-hpc templates`: the sbatch templates come with the package (pip users have no slurm/ folder)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest
from testenv import ROOT

from aetherium_hpc import templates
from aetherium_hpc.cli import cmd_templates
from aetherium_hpc.errors import AetheriumError


def args(name: str | None = None, copy: Path | None = None, force: bool = False) -> argparse.Namespace:
    return argparse.Namespace(name=name, copy=None if copy is None else str(copy), force=force)


def test_templates_are_package_data() -> None:
    assert {"job.sbatch", "array.sbatch", "merge.sbatch", "chain-merge.sh", "aetherium-include.sh"} <= set(
        templates.names()
    )
    assert templates.text("job.sbatch").startswith("#!/bin/bash") and "aetherium-hpc run" in templates.text(
        "job.sbatch"
    )
    # The source checkout's slurm/templates is the same folder.
    assert (ROOT / "slurm" / "templates" / "job.sbatch").read_text() == templates.text("job.sbatch")


def test_list_print_copy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cmd_templates(args()) == 0
    assert "job.sbatch" in capsys.readouterr().out
    assert cmd_templates(args("array.sbatch")) == 0
    assert capsys.readouterr().out == templates.text("array.sbatch")
    assert cmd_templates(args(copy=tmp_path / "mine")) == 0
    copied = {p.name for p in (tmp_path / "mine").iterdir()}
    assert copied == set(templates.names())
    assert os.access(tmp_path / "mine" / "chain-merge.sh", os.X_OK)
    with pytest.raises(AetheriumError, match="--force"):
        cmd_templates(args(copy=tmp_path / "mine"))
    assert cmd_templates(args(copy=tmp_path / "mine", force=True)) == 0
    with pytest.raises(AetheriumError, match="no template 'nope.sbatch'; choose one of: "):
        cmd_templates(args("nope.sbatch"))
