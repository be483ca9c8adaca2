"""mabeamctl's arguments from outside: strict JSON values (also from stdin and @FILE),
--timeout and --version as usage, and one-line errors instead of tracebacks."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from mabeamd.testing import Daemon, run_ctl


def ctl(daemon: Daemon, *args: str, stdin: str | None = None,
        ) -> subprocess.CompletedProcess[str]:
    return run_ctl(*args, "--socket", str(daemon.socket), stdin=stdin)


def test_values_are_strict_json_and_nothing_is_written_otherwise(daemon: Daemon) -> None:
    assert ctl(daemon, "vars", "create", "in/x", "1").returncode == 0
    for bad, says in (("99999999999999999999999", "outside the 64-bit integers"),
                      ("NaN", "NaN is not JSON"), ("Infinity", "Infinity is not JSON"),
                      ("1e400", "does not fit in a double"), ("[1, -Infinity]", "not JSON")):
        r = ctl(daemon, "vars", "set", "in/x", bad)
        assert r.returncode == 2 and says in r.stderr, (bad, r.returncode, r.stderr)
        assert "Traceback" not in r.stderr
    out = json.loads(ctl(daemon, "vars", "get", "in/x", "--json").stdout)
    assert out["value"] == 1 and out["version"] == 1  # nothing was written
    assert ctl(daemon, "vars", "set", "in/x", "18446744073709551615").returncode == 0


def test_values_from_stdin_and_files(daemon: Daemon, tmp_path: Path) -> None:
    big = {"blob": "v" * 900_000}
    path = tmp_path / "value.json"
    path.write_text(json.dumps(big))
    assert ctl(daemon, "vars", "create", "in/big", f"@{path}").returncode == 0
    got = json.loads(ctl(daemon, "vars", "get", "in/big", "--json").stdout)
    assert got["value"] == big
    r = ctl(daemon, "vars", "set", "in/big", "-", stdin='{"from": "stdin"}')
    assert r.returncode == 0, r.stderr
    got = json.loads(ctl(daemon, "vars", "get", "in/big", "--json").stdout)
    assert got["value"] == {"from": "stdin"}
    r = ctl(daemon, "vars", "set", "in/big", f"@{tmp_path / 'missing.json'}")
    assert r.returncode == 66 and "cannot read" in r.stderr and "Traceback" not in r.stderr


def test_usage_errors_and_local_failures_are_one_line(daemon: Daemon) -> None:
    for bad in ("0", "-1", "nan", "soon"):
        r = ctl(daemon, "status", "--timeout", bad)
        assert r.returncode == 2 and "--timeout" in r.stderr, (bad, r.returncode, r.stderr)
    r = run_ctl("--version")
    assert r.returncode == 0 and r.stdout.startswith("mabeamctl "), r
    r = run_ctl("keys", "generate", "k", "--dir", "/proc/nope")
    assert r.returncode == 1 and "cannot write into /proc/nope" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_protocols_eval_exit_statuses(tmp_path: Path) -> None:
    r = run_ctl("protocols", "eval", "no_such_protocol", "-", stdin="{}")
    assert r.returncode == 2 and "unknown protocol 'no_such_protocol'" in r.stderr, r
    assert "vote" in r.stderr  # what is installed
    r = run_ctl("protocols", "eval", "vote", str(tmp_path / "missing.json"))
    assert r.returncode == 66 and "cannot read" in r.stderr, r
    r = run_ctl("protocols", "eval", "vote", str(tmp_path))  # a directory
    assert r.returncode == 66, r
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe\x00")
    r = run_ctl("protocols", "eval", "vote", str(tmp_path / "bin.json"))
    assert r.returncode == 65 and "not UTF-8" in r.stderr, r
    r = run_ctl("protocols", "eval", "vote", "-", stdin="[1, 2]")
    assert r.returncode == 65, r  # refused input stays 65
    r = run_ctl("protocols", "eval", "--help")
    assert r.returncode == 0 and "docs/protocols.md" in r.stdout, r
    assert "--params JSON" in r.stdout
    assert re.search(r"^  vote +\S", r.stdout, re.M) and "sealed_bid" in r.stdout, r.stdout


def test_protocols_eval_params_lay_over_the_file_key_by_key(tmp_path: Path) -> None:
    f = tmp_path / "tie.json"
    f.write_text(json.dumps({
        "params": {"options": ["x", "y"], "rule": "plurality"},
        "participants": [{"id": "a"}, {"id": "b"}],
        "responses": [{"agent": "a", "value": {"vote": "y"}},
                      {"agent": "b", "value": {"vote": "x"}}]}))
    r = run_ctl("protocols", "eval", "vote", str(f))
    assert r.returncode == 0 and json.loads(r.stdout)["reason"] == "tie", r
    r = run_ctl("protocols", "eval", "vote", str(f), "--params", '{"tie_break": "option_order"}')
    out = json.loads(r.stdout)
    assert r.returncode == 0 and (out["decision"], out["reason"]) == ("x", "decided"), r
    # the file's rule stays: plurality, not the default majority (which nobody reaches here)
    for bad, says in (("[1]", "must be a JSON object"), ("{nope", "not JSON")):
        r = run_ctl("protocols", "eval", "vote", str(f), "--params", bad)
        assert r.returncode == 2 and says in r.stderr and "Traceback" not in r.stderr, r
    r = run_ctl("protocols", "eval", "vote", str(f), "--params", '{"bogus": 1}')
    assert r.returncode == 65 and "unknown key(s) 'bogus'" in r.stderr, r
    assert json.loads(f.read_text())["params"] == {"options": ["x", "y"], "rule": "plurality"}


def test_big_values_are_cut_in_human_output_only(daemon: Daemon, tmp_path: Path) -> None:
    path = tmp_path / "v.json"
    path.write_text(json.dumps("z" * 100_000))
    r = ctl(daemon, "vars", "create", "big/v", f"@{path}")
    assert r.returncode == 0 and len(r.stdout) < 2000, len(r.stdout)
    assert "100002 characters" in r.stdout
    r = ctl(daemon, "vars", "set", "big/v", f"@{path}")
    assert r.returncode == 0 and len(r.stdout) < 1000 and "(version 2)" in r.stdout, r.stdout
    r = ctl(daemon, "vars", "get", "big/v", "--json")
    assert json.loads(r.stdout)["value"] == "z" * 100_000


def test_limits_stay_integers_and_choices_are_listed(daemon: Daemon) -> None:
    r = ctl(daemon, "vars", "create", "lim/n", "5", "--type", "int", "--min", "0",
            "--max", "10", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["constraints"] == {"min": 0, "max": 10}
    assert '"max": 10,' in r.stdout or '"max": 10\n' in r.stdout  # not 10.0
    r = ctl(daemon, "vars", "create", "lim/f", "0.5", "--min", "0.25")
    assert r.returncode == 0 and '{"min": 0.25}' in r.stdout, r
    r = ctl(daemon, "vars", "create", "lim/x", "1", "--type", "integer")
    assert r.returncode == 2 and "invalid choice" in r.stderr, r
    r = run_ctl("vars", "create", "--help")
    for word in ("int", "float", "map", "owner_only", "coordinated", "cas_required",
                 "first_write_wins", "session"):
        assert word in r.stdout, (word, r.stdout)


def test_workers_list_takes_no_index(daemon: Daemon) -> None:
    r = ctl(daemon, "workers", "list", "0")
    assert r.returncode == 2 and "takes no worker index" in r.stderr, r
    assert ctl(daemon, "workers", "list").returncode == 0


def test_every_command_help_has_a_description() -> None:
    from mabeamd.ctl.manual import _subcommands
    from mabeamd.ctl.parser import build_parser

    for path, sub in _subcommands(build_parser()):
        assert sub.description and sub.description.strip(), path
    r = run_ctl("vars", "--help")
    assert "Universal variables: typed, versioned" in r.stdout, r.stdout


def test_completion_and_man_page_come_from_the_parser(tmp_path: Path) -> None:
    r = run_ctl("completion", "bash")
    assert r.returncode == 0, r.stderr
    script = tmp_path / "mabeamctl.bash"
    script.write_text(r.stdout)
    probe = (f"source {script}; COMP_WORDS=(mabeamctl ev); COMP_CWORD=1; _shtab_mabeamctl; "
             'echo "${COMPREPLY[@]}"; COMP_WORDS=(mabeamctl vars create x --access ""); '
             'COMP_CWORD=5; _shtab_mabeamctl; echo "${COMPREPLY[@]}"')
    out = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, check=False)
    first, second = out.stdout.splitlines()[:2]
    assert first == "events", out
    assert second.split() == ["public", "restricted", "owner_only", "coordinated"], out
    r = run_ctl("completion", "zsh")
    assert r.returncode == 0 and r.stdout.startswith("#compdef mabeamctl"), r.stdout[:100]
    r = run_ctl("manpage")
    assert r.returncode == 0 and r.stdout.startswith(".TH MABEAMCTL 1"), r.stdout[:100]
    for section in (".SH SYNOPSIS", ".SS events", ".SS vars create", ".SH EXIT STATUS",
                    "op vars.create:", "\\-\\-interval"):
        assert section in r.stdout, section
    if shutil.which("man"):
        page = tmp_path / "mabeamctl.1"
        page.write_text(r.stdout)
        shown = subprocess.run(["man", "-l", str(page)], capture_output=True, text=True,
                               env={**os.environ, "MANPAGER": "cat", "MANWIDTH": "100"},
                               check=False)
        assert shown.returncode == 0 and "mabeamctl events" in shown.stdout, shown.stderr


def test_socket_found_in_the_system_runtime_dir(daemon: Daemon, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """A non-root member of [control] group: the defaults resolve to its own XDG runtime
    directory, where nothing listens; the system daemon's socket is found next. (The
    daemon's runtime directory stands in for /run/mabeamd; its config names none.)"""
    from mabeamd import paths
    from mabeamd.ctl import main as ctlmain

    own = tmp_path / "xdg"
    own.mkdir()
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(own))
    monkeypatch.delenv("MABEAM_SOCKET", raising=False)
    monkeypatch.setattr(paths, "SYSTEM_RUNTIME_DIR", daemon.run_dir)
    cfg = ["--config", str(daemon.config_path)]
    assert ctlmain.main([*cfg, "ping", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["pong"] is True
    monkeypatch.setattr(paths, "SYSTEM_RUNTIME_DIR", tmp_path / "nowhere")
    assert ctlmain.main([*cfg, "ping"]) == 69
    err = capsys.readouterr().err
    assert f"{own}/mabeamd/control.sock or {tmp_path}/nowhere/control.sock" in err, err
    explicit = tmp_path / "explicit.toml"  # a configured directory is the only place
    explicit.write_text(daemon.config_path.read_text()
                        + f'\n[daemon]\nruntime_dir = "{own}/x"\n')
    monkeypatch.setattr(paths, "SYSTEM_RUNTIME_DIR", daemon.run_dir)
    assert ctlmain.main(["--config", str(explicit), "ping"]) == 69
    assert "no control socket at " + str(own / "x" / "control.sock") in capsys.readouterr().err
