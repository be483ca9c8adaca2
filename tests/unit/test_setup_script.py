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


def run(tree: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(tree / "scripts" / "setup"), *args], cwd=tree,
                          capture_output=True, text=True, timeout=30, check=False,
                          env={**os.environ, "PYTHON": "python3", **env})


def test_fresh_clone_says_it_installs_and_prints_no_error(tmp_path: Path) -> None:
    tree = checkout(tmp_path)
    r = run(tree, "--test")
    assert r.returncode == 0, r.stderr
    assert "No such file" not in r.stderr, r.stderr
    assert "installing mabeamd[markets,milp,cluster,bench,test" in r.stderr
    assert "(first time: about a minute)" in r.stderr
    calls = (tree / ".venv" / "calls").read_text().splitlines()
    assert len(calls) == 1 and calls[0].startswith("-m pip install")
    extras = (tree / ".venv" / ".mabeamd-setup").read_text().split()[1]
    assert extras.startswith("markets,milp,cluster,bench,test")


def test_bench_setup_after_test_setup_is_silent(tmp_path: Path) -> None:
    """scripts/bench runs `scripts/setup --bench`: after `--test` (which includes the bench
    extra) nothing is left to install."""
    tree = checkout(tmp_path)
    assert run(tree, "--test").returncode == 0
    r = run(tree, "--bench")
    assert r.returncode == 0 and "installing" not in r.stderr and "updating" not in r.stderr
    assert len((tree / ".venv" / "calls").read_text().splitlines()) == 1


def test_second_run_is_silent_and_skips_pip(tmp_path: Path) -> None:
    tree = checkout(tmp_path)
    assert run(tree, "--test").returncode == 0
    r = run(tree)  # the smaller set is already in
    assert r.returncode == 0
    assert "installing" not in r.stderr and "updating" not in r.stderr
    assert len((tree / ".venv" / "calls").read_text().splitlines()) == 1


def test_a_host_without_libsystemd_is_told_once_and_the_second_run_is_silent(
        tmp_path: Path) -> None:
    # PKG_CONFIG_LIBDIR pointing nowhere: pkg-config finds no libsystemd, as on a bare host
    # (a full run on one failed here: the note was printed on every run).
    tree = checkout(tmp_path)
    nowhere = {"PKG_CONFIG_LIBDIR": str(tmp_path / "none"), "PKG_CONFIG_PATH": ""}
    first = run(tree, "--test", **nowhere)
    assert first.returncode == 0 and "systemd-python left out" in first.stderr, first.stderr
    assert ",systemd" not in (tree / ".venv" / ".mabeamd-setup").read_text()
    again = run(tree, **nowhere)
    assert again.returncode == 0 and again.stderr == "", again.stderr
