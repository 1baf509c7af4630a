"""The sbatch templates for hand-written job scripts, shipped with the package.

``aetherium-hpc templates`` lists them, ``aetherium-hpc templates NAME`` prints one, and
``aetherium-hpc templates --copy DIR`` copies them all (executable where they are meant to be
run). In a source checkout they are also reachable as ``slurm/templates/``.

The starter configs ``train.yaml`` (one job) and ``array.yaml`` (an array with a sweep) live here
too, so that pip users get them: ``aetherium-hpc init [--array] PATH`` writes one
(:func:`starter_config`). A checkout's ``configs/train.yaml`` and ``configs/array.yaml`` are links
to these files.
"""

from __future__ import annotations

from importlib import resources

__all__ = ["STARTERS", "names", "starter_config", "text"]

#: One line per template, for the listing.
DESCRIPTIONS = {
    "job.sbatch": "a complete job: sbatch job.sbatch python train.py ...",
    "array.sbatch": "a job array, one task per $SLURM_ARRAY_TASK_ID",
    "merge.sbatch": "merge + report of a run directory, after the array (--dependency=afterany)",
    "chain-merge.sh": "submit an array and its merge + report job in one command",
    "aetherium-include.sh": "functions to source from your own sbatch script",
}


def names() -> list[str]:
    """The template file names, sorted."""
    folder = resources.files(__name__)
    return sorted(p.name for p in folder.iterdir() if p.name.endswith((".sbatch", ".sh")))


def text(name: str) -> str:
    """The text of template ``name`` (KeyError for an unknown one)."""
    if name not in names():
        raise KeyError(name)
    return resources.files(__name__).joinpath(name).read_text(encoding="utf-8")


#: The starter configs: kind -> file name here.
STARTERS = {"train": "train.yaml", "array": "array.yaml"}


def starter_config(kind: str, path: str) -> str:
    """The text of starter config ``kind`` (:data:`STARTERS`), its comments naming ``path`` where
    they show how to submit it."""
    name = STARTERS[kind]
    body = resources.files(__name__).joinpath(name).read_text(encoding="utf-8")
    return body.replace(f"configs/{name}", path)
