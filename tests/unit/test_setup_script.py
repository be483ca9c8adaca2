"""scripts/setup against a stand-in .venv: what a fresh clone and a second run print.

The stand-in python records its arguments instead of running pip, so the script's own logic
(the stamp, the first-time message) is what is tested, in milliseconds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from mabeamd.testing import ROOT

FAKE_PYTHON = """#!/bin/sh
echo "$@" >> "$(dirname "$0")/../calls"
"""


def checkout(tmp_path: Path) -> Path:
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "setup", tmp_path / "scripts" / "setup")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").write_text(FAKE_PYTHON)
    (bin_dir / "python").chmod(0o755)
    return tmp_path


def run(tree: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(tree / "scripts" / "setup"), *args], cwd=tree,
                          capture_output=True, text=True, timeout=30, check=False,
                          env={**os.environ, "PYTHON": "python3"})


def test_fresh_clone_says_it_installs_and_prints_no_error(tmp_path: Path) -> None:
    tree = checkout(tmp_path)
    r = run(tree, "--test")
    assert r.returncode == 0, r.stderr
    assert "No such file" not in r.stderr, r.stderr
    assert "installing mabeamd[markets,cluster,test" in r.stderr
    assert "(first time: about a minute)" in r.stderr
    calls = (tree / ".venv" / "calls").read_text().splitlines()
    assert len(calls) == 1 and calls[0].startswith("-m pip install")
    extras = (tree / ".venv" / ".mabeamd-setup").read_text().split()[1]
    assert extras.startswith("markets,cluster,test")


def test_second_run_is_silent_and_skips_pip(tmp_path: Path) -> None:
    tree = checkout(tmp_path)
    assert run(tree, "--test").returncode == 0
    r = run(tree)  # the smaller set is already in
    assert r.returncode == 0
    assert "installing" not in r.stderr and "updating" not in r.stderr
    assert len((tree / ".venv" / "calls").read_text().splitlines()) == 1
