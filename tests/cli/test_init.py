"""`aetherium-hpc init`: a starter config that submits and completes as written, from any folder."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from testenv import ROOT


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "AETHERIUM_"))}
    # Python's own folder only on PATH: no Slurm commands, so backend auto runs locally
    env.update(PYTHONPATH=str(ROOT), AETHERIUM_LOCAL_DIR=str(cwd))
    env["PATH"] = os.path.dirname(sys.executable)
    return subprocess.run([sys.executable, "-m", "aetherium_hpc", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)  # fmt: skip


@pytest.mark.parametrize(("args", "name", "tasks"), [([], "train.yaml", 1), (["--array"], "array.yaml", 4)])
def test_the_starter_config_submits_and_completes_as_written(
    tmp_path: Path, args: list[str], name: str, tasks: int
) -> None:
    wrote = _cli(["init", *args], tmp_path)
    assert wrote.returncode == 0, wrote.stderr
    config = tmp_path / name
    assert f"aetherium-hpc submit {name} --wait" in wrote.stderr
    text = config.read_text()
    assert text.startswith(f"# {name} — ") and f"aetherium-hpc submit {name}" in text  # its own name in the comments
    assert text == (ROOT / "configs" / name).read_text().replace(f"configs/{name}", name)
    done = _cli(["submit", name, "--wait"], tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{tasks}/{tasks} task(s) completed" in done.stdout
    run = Path(re.search(r"^run directory: (.+)$", done.stdout, re.M).group(1))  # type: ignore[union-attr]
    assert run.parent == tmp_path / "runs" and len(list(run.glob("db/*/*.db"))) == tasks


def test_init_never_overwrites_or_follows_a_link_unasked(tmp_path: Path) -> None:
    (tmp_path / "train.yaml").write_text("mine\n")
    again = _cli(["init"], tmp_path)
    assert again.returncode == 2 and (tmp_path / "train.yaml").read_text() == "mine\n"
    (line,) = again.stderr.strip().splitlines()
    assert "train.yaml exists" in line and "--force" in line

    forced = _cli(["init", "--force"], tmp_path)
    assert forced.returncode == 0 and "name: demo-train" in (tmp_path / "train.yaml").read_text()

    victim = tmp_path / "victim"
    victim.write_text("keep\n")
    (tmp_path / "planted.yaml").symlink_to(victim)
    for extra in ([], ["--force"]):
        refused = _cli(["init", "planted.yaml", *extra], tmp_path)
        assert refused.returncode == 2 and "a link or not a regular file" in refused.stderr
    assert victim.read_text() == "keep\n"

    missing = _cli(["init", "no/such/folder/a.yaml"], tmp_path)
    assert missing.returncode == 2 and "no such folder" in missing.stderr

    (tmp_path / "cfg").mkdir()
    into = _cli(["init", "--array", "cfg"], tmp_path)
    assert into.returncode == 0 and "name: demo-array" in (tmp_path / "cfg" / "array.yaml").read_text()
