"""Configuration: schema, etc/mabeamd.toml, validation messages, exit 78 from the daemon."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from mabeamd import config as configmod
from mabeamd.config import Config, ConfigError
from mabeamd.testing import ROOT, short_tmpdir

ETC = ROOT / "etc" / "mabeamd.toml"


def test_etc_file_lists_every_option_at_its_default() -> None:
    cfg = configmod.load(ETC)
    assert cfg.to_dict() == Config().to_dict()
    text = ETC.read_text()
    for section, f in configmod.options():
        assert f"[{section}]" in text
        assert f"\n{f.name} = " in text, f"{section}.{f.name} missing from etc/mabeamd.toml"


def test_etc_file_documents_every_managed_key() -> None:
    import dataclasses

    text = ETC.read_text()
    example = text.split("# [managed.example]", 1)[1]
    for f in dataclasses.fields(configmod.ManagedSection):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        line = re.search(rf"^# {f.name} = (.*?)(\s+#.*)?$", example, re.M)
        assert line, f"managed key {f.name} missing from the example in etc/mabeamd.toml"
        if f.name not in ("cmd", "args"):
            assert tomllib.loads(f"v = {line.group(1)}")["v"] == default, f.name


def test_etc_file_has_a_comment_for_every_option() -> None:
    lines = ETC.read_text().splitlines()
    for i, line in enumerate(lines):
        if "=" in line and not line.startswith("#"):
            j = i - 1
            while j >= 0 and not lines[j].startswith("#") and "=" in lines[j]:
                j -= 1  # grouped options share the comment above the group
            assert lines[j].startswith("#"), f"no comment above {line!r}"


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.toml"
    p.write_text(text)
    return p


BAD = [
    ("[workers]\ncont = 2\n", ["[workers]", "unknown key 'cont'", "did you mean 'count'"]),
    ("[worker]\ncount = 2\n", ["unknown section [worker]", "did you mean [workers]"]),
    ('[workers]\ncount = "two"\n', ["[workers] count", "expected an integer", "'two'"]),
    ("[workers]\ncount = -1\n", ["[workers] count", "from 0 to 1024", "-1"]),
    ("[workers]\ncount = true\n", ["[workers] count", "expected an integer", "True"]),
    ("[workers]\nheartbeat_interval = 0\n", ["heartbeat_interval", "from 0.01"]),
    ('[daemon]\nlog_level = "loud"\n', ["[daemon] log_level", "one of 'debug'", "'loud'"]),
    ("[workers]\nwrapper = [1]\n", ["[workers] wrapper", "a list of strings"]),
    ("[workers]\nheartbeat_interval = 2.0\nheartbeat_timeout = 1.0\n",
     ["heartbeat_timeout", "more than heartbeat_interval"]),
    ("[workers]\nbackoff_initial = 5.0\nbackoff_max = 1.0\n", ["backoff_max", "at least"]),
    ('[control]\ngroup = "no-such-group-xyz"\n', ["[control] group", "existing group"]),
    ('[variables]\nshm_group = "no-such-group-xyz"\n',
     ["[variables] shm_group", "existing group", "'no-such-group-xyz'"]),
    ("workers = 3\n", ["[workers] must be a table"]),
    ("[workers\ncount = 2\n", ["invalid TOML"]),
    ("[daemon]\nshutdown_timeout = nan\n", ["shutdown_timeout", "a number"]),
    ('[agents]\nendpoints = ["tcp://0.0.0.0:7700"]\n',
     ["[agents] endpoints", "not on loopback, so it needs CURVE", "curve+tcp://0.0.0.0:7700"]),
    ('[agents]\nendpoints = ["udp://host:1"]\n', ["[agents] endpoints", "tcp://HOST:PORT"]),
    ('[agents]\nendpoints = ["tcp://127.0.0.1:99999"]\n', ["[agents] endpoints"]),
    ("[agents]\nendpoints = []\n", ["[agents] endpoints", "a list of"]),
    ('[agents]\nendpoints = ["curve+tcp://127.0.0.1:7700"]\n', ["[security] server_key"]),
    ('[events]\nendpoint = "tcp://10.1.2.3:7701"\n', ["[events] endpoint", "needs CURVE"]),
    ('[agents]\nshard_endpoint = "tcp://0.0.0.0:7710"\n',
     ["[agents] shard_endpoint", "not on loopback, and shard endpoints are plain"]),
    ('[agents]\nshard_endpoint = "curve+tcp://127.0.0.1:7710"\n',
     ["[agents] shard_endpoint", "CURVE is not served on shard endpoints"]),
    ('[agents]\nshard_endpoint = "udp://x:1"\n', ["[agents] shard_endpoint", "tcp://HOST:PORT"]),
    ("[managed.x]\nargs = []\n", ["[managed.x] cmd", "expected the program"]),
    ('[managed."bad name"]\ncmd = "x"\n', ["[managed.bad name]", "expected a name"]),
    ('[managed.x]\ncmd = "x"\nrestart = "sometimes"\n', ["[managed.x] restart", "'always'"]),
    ('[managed.x]\ncmd = "x"\nenv = { A = 1 }\n', ["[managed.x] env", "string values"]),
    ('[managed.x]\ncmd = "x"\nnumproc = 2\n', ["unknown key 'numproc'", "numprocesses"]),
]


@pytest.mark.parametrize("text, expected", BAD)
def test_bad_config_messages(tmp_path: Path, text: str, expected: list[str]) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        configmod.load(path)
    msg = str(exc.value)
    assert str(path) in msg
    for part in expected:
        assert part in msg, msg


def test_remote_plain_endpoint_allowed_only_when_asked(tmp_path: Path) -> None:
    text = '[agents]\nendpoints = ["tcp://0.0.0.0:7700"]\n'
    cfg = configmod.load(write(tmp_path, text + "[security]\nallow_insecure_remote = true\n"))
    assert cfg.agents.endpoints == ["tcp://0.0.0.0:7700"]


def test_managed_programs_parse(tmp_path: Path) -> None:
    cfg = configmod.load(write(tmp_path, '[managed.pool]\ncmd = "python3"\nnumprocesses = 3\n'
                                         'cwd = "sub"\nenv = { K = "v" }\n'))
    pool = cfg.managed["pool"]
    assert (pool.cmd, pool.numprocesses, pool.env) == ("python3", 3, {"K": "v"})
    assert pool.cwd == str(tmp_path / "sub")
    assert pool.restart == "on-failure"


def test_unreadable_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read configuration"):
        configmod.load(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="cannot read configuration"):
        configmod.load(tmp_path)  # a directory
    p = tmp_path / "bin.toml"
    p.write_bytes(b"\xff\xfe[workers]")
    with pytest.raises(ConfigError, match="not UTF-8"):
        configmod.load(p)


def test_overrides_win_and_are_named_in_errors(tmp_path: Path) -> None:
    path = write(tmp_path, "[workers]\ncount = 3\n")
    cfg = configmod.load(path, {("workers", "count"): (5, "--workers")})
    assert cfg.workers.count == 5
    with pytest.raises(ConfigError, match=r"^--workers: expected an integer from 0 to 1024"):
        configmod.load(path, {("workers", "count"): (-2, "--workers")})


def test_relative_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[daemon]\nruntime_dir = "run"\nstate_dir = "/abs/state"\n')
    cfg = configmod.load(path)
    assert cfg.daemon.runtime_dir == str(tmp_path / "run")
    assert cfg.daemon.state_dir == "/abs/state"


def test_reload_diff_separates_restart_only_keys(tmp_path: Path) -> None:
    old = configmod.load(write(tmp_path, "[workers]\ncount = 2\n"))
    new = configmod.load(write(tmp_path, '[workers]\ncount = 4\n[daemon]\nlog_level = "debug"\n'))
    changed, restart = configmod.reload_diff(old, new)
    assert changed == ["daemon.log_level"]
    assert restart == ["workers.count"]
    merged = configmod.merge_for_reload(old, new)
    assert merged.workers.count == 2
    assert merged.daemon.log_level == "debug"


def test_socket_path_too_long_is_a_config_error() -> None:
    from mabeamd import paths

    cfg = configmod.load(None, {("daemon", "runtime_dir"): ("/tmp/" + "x" * 120, "--runtime-dir")})
    with pytest.raises(ConfigError, match="at most 107"):
        paths.resolve(cfg)


def run_daemon(*args: str) -> subprocess.CompletedProcess[str]:
    d = short_tmpdir()
    return subprocess.run(
        [sys.executable, "-m", "mabeamd", "--runtime-dir", str(d / "r"), "--state-dir",
         str(d / "s"), *args], capture_output=True, text=True, timeout=30, check=False,
        env={k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"})


@pytest.mark.parametrize("text, expected", [BAD[0], BAD[2], BAD[3], BAD[9], BAD[12]])
def test_daemon_exits_78_on_bad_config(tmp_path: Path, text: str, expected: list[str]) -> None:
    path = write(tmp_path, text)
    r = run_daemon("--config", str(path))
    assert r.returncode == 78, r.stderr
    assert str(path) in r.stderr
    for part in expected:
        assert part in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1  # one clear line, no traceback


def test_daemon_exits_78_on_unreadable_config(tmp_path: Path) -> None:
    r = run_daemon("--config", str(tmp_path / "nope.toml"))
    assert r.returncode == 78
    assert "nope.toml: cannot read configuration" in r.stderr


def test_daemon_exits_78_on_bad_flag_value() -> None:
    r = run_daemon("--workers", "-3")
    assert r.returncode == 78
    assert "--workers: expected an integer from 0 to 1024, got -3" in r.stderr


def test_check_config_prints_resolved_paths() -> None:
    r = run_daemon("--config", str(ROOT / "etc" / "mabeamd.toml"), "--check-config")
    assert r.returncode == 0, r.stderr
    assert "configuration OK" in r.stdout
    assert "control_socket" in r.stdout


# --- listeners that would bind the same port or path -----------------------------------------

CURVE_KEYS = '[security]\nserver_key = "/k/server.key_secret"\nauthorized_keys = "/k/auth"\n'
CLASHES = [
    # The CURVE example operations.md once gave: 0.0.0.0:7710 is worker 0's shard port.
    ('[agents]\nendpoints = ["tcp://127.0.0.1:7700", "curve+tcp://0.0.0.0:7710"]\n'
     + CURVE_KEYS,
     ["[agents] endpoints curve+tcp://0.0.0.0:7710", "[agents] shard_endpoint",
      "worker 0 binds port 7710", "TCP port 7710", "one port per worker"]),
    ('[workers]\ncount = 4\n[metrics]\nlisten = "127.0.0.1:7713"\n',
     ["worker 3 binds port 7713", "[metrics] listen 127.0.0.1:7713", "TCP port 7713"]),
    ('[events]\nendpoint = "tcp://localhost:7700"\n',
     ["[agents] endpoints tcp://127.0.0.1:7700", "[events] endpoint tcp://localhost:7700"]),
    ('[metrics]\nlisten = "0.0.0.0:7701"\n[security]\nallow_insecure_remote = true\n',
     ["[events] endpoint tcp://127.0.0.1:7701", "[metrics] listen 0.0.0.0:7701"]),
    ('[agents]\nendpoints = ["tcp://[::]:7700"]\nshard_endpoint = ""\n'
     '[events]\nendpoint = "tcp://127.0.0.1:7700"\n[security]\nallow_insecure_remote = true\n',
     ["tcp://[::]:7700", "[events] endpoint", "TCP port 7700"]),
    ('[agents]\nendpoints = ["tcp://127.0.0.1:7700", "curve+tcp://127.0.0.1:7700"]\n'
     + CURVE_KEYS, ["[agents] endpoints tcp://127.0.0.1:7700", "curve+tcp://127.0.0.1:7700"]),
    ('[workers]\ncount = 2\n[agents]\nendpoints = ["ipc:///tmp/mb/a-1"]\n'
     'shard_endpoint = "ipc:///tmp/mb/a"\n',
     ["worker 1 binds /tmp/mb/a-1", "the ipc path /tmp/mb/a-1", "another path"]),
    ('[workers]\ncount = 3\n[agents]\nshard_endpoint = "tcp://127.0.0.1:65534"\n',
     ["[agents] shard_endpoint", "3 workers needs ports up to 65536"]),
]


@pytest.mark.parametrize("text, expected", CLASHES)
def test_listeners_on_one_port_or_path_are_refused(tmp_path: Path, text: str,
                                                   expected: list[str]) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        configmod.load(path)
    for part in expected:
        assert part in str(exc.value), str(exc.value)


SIDE_BY_SIDE = [
    '[workers]\ncount = 4\n[metrics]\nlisten = "127.0.0.1:7714"\n',  # just past the range
    '[events]\nendpoint = "tcp://[::1]:7700"\n',  # another address family
    '[events]\nendpoint = "tcp://127.0.0.2:7700"\n',  # another loopback address
    '[agents]\nshard_endpoint = ""\n[metrics]\nlisten = "127.0.0.1:7710"\n',  # no shard ports
]


@pytest.mark.parametrize("text", SIDE_BY_SIDE)
def test_listeners_that_can_live_side_by_side_pass(tmp_path: Path, text: str) -> None:
    configmod.load(write(tmp_path, text))


def test_default_worker_count_sets_the_shard_range(tmp_path: Path) -> None:
    """workers.count = 0 is one worker per CPU: the range is checked with that count."""
    n = configmod.worker_count(Config())
    assert n >= 1
    clash = write(tmp_path, f'[metrics]\nlisten = "127.0.0.1:{7710 + n - 1}"\n')
    with pytest.raises(ConfigError, match=f"worker {n - 1} binds port {7710 + n - 1}"):
        configmod.load(clash)
    configmod.load(write(tmp_path, f'[metrics]\nlisten = "127.0.0.1:{7710 + n}"\n'))


def test_an_endpoint_on_the_control_socket_is_refused(tmp_path: Path) -> None:
    from mabeamd import paths

    run = short_tmpdir()
    path = write(tmp_path, f'[daemon]\nruntime_dir = "{run}"\n'
                           f'[events]\nendpoint = "ipc://{run}/control.sock"\n')
    with pytest.raises(ConfigError, match=r"\[control\] socket and \[events\] endpoint"):
        paths.resolve(configmod.load(path))


def docs_curve_example() -> str:
    text = (ROOT / "docs" / "operations.md").read_text()
    section = text.split("### Securing remote agents with CURVE", 1)[1]
    return section.split("```toml\n", 1)[1].split("```", 1)[0]


def test_check_config_refuses_a_clash_and_passes_the_docs_curve_example(tmp_path: Path) -> None:
    bad = write(tmp_path, CLASHES[0][0])
    r = run_daemon("--config", str(bad), "--check-config")
    assert r.returncode == 78, r.stdout + r.stderr
    assert "TCP port 7710" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    example = tmp_path / "curve.toml"
    example.write_text(docs_curve_example())
    r = run_daemon("--config", str(example), "--check-config")
    assert r.returncode == 0, r.stderr
    assert "configuration OK" in r.stdout
