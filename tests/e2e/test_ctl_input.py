"""mabeamctl's arguments from outside: strict JSON values (also from stdin and @FILE),
--timeout and --version as usage, and one-line errors instead of tracebacks."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

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
    assert r.returncode == 2 and "cannot read" in r.stderr and "Traceback" not in r.stderr


def test_usage_errors_and_local_failures_are_one_line(daemon: Daemon) -> None:
    for bad in ("0", "-1", "nan", "soon"):
        r = ctl(daemon, "status", "--timeout", bad)
        assert r.returncode == 2 and "--timeout" in r.stderr, (bad, r.returncode, r.stderr)
    r = run_ctl("--version")
    assert r.returncode == 0 and r.stdout.startswith("mabeamctl "), r
    r = run_ctl("keys", "generate", "k", "--dir", "/proc/nope")
    assert r.returncode == 1 and "cannot write into /proc/nope" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
