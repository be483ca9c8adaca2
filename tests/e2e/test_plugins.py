"""Plugins found through real entry points (a .dist-info on the daemon's PYTHONPATH)."""

from __future__ import annotations

import signal
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from mabeamd.plugins import PluginHost
from mabeamd.testing import Daemon, short_tmpdir

GOOD = """
from mabeamd.hookspecs import hookimpl

events = []
configured = []

@hookimpl
def mabeamd_configure(config):
    configured.append(config.daemon.log_level)

@hookimpl
def mabeamd_worker_event(index, event):
    events.append((index, event))

@hookimpl
def mabeamd_status():
    return {"events": len(events), "running": sum(1 for _, e in events if e == "running"),
            "configured": configured}
"""

RAISES = """
from mabeamd.hookspecs import hookimpl

@hookimpl
def mabeamd_status():
    raise RuntimeError("boom in status")
"""

BAD_IMPORT = "raise ImportError('missing dependency frob')\n"

UNKNOWN_HOOK = """
from mabeamd.hookspecs import hookimpl

@hookimpl
def mabeamd_no_such_hook():
    pass
"""

WRAPPER = """
from mabeamd.hookspecs import hookimpl

@hookimpl(wrapper=True)
def mabeamd_status():
    return (yield)
"""


def install(site: Path, dist: str, entries: dict[str, str], modules: dict[str, str]) -> None:
    """Write modules and a dist-info with entry points: what `pip install` would leave."""
    for name, code in modules.items():
        (site / f"{name}.py").write_text(textwrap.dedent(code))
    info = site / f"{dist}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    lines = "".join(f"{k} = {v}\n" for k, v in entries.items())
    (info / "entry_points.txt").write_text(f"[mabeamd.plugins]\n{lines}")


@pytest.fixture
def site() -> Path:
    return short_tmpdir()


def plugins_of(d: Daemon) -> dict[str, dict[str, object]]:
    return {p["name"]: p for p in d.call("plugins")["plugins"]}


def test_good_and_broken_plugins(make_daemon: Callable[..., Daemon], site: Path) -> None:
    install(site, "goodplug", {"good": "goodplug"}, {"goodplug": GOOD})
    install(site, "brokenplugs", {"raises": "raisesplug", "badimport": "badimportplug",
                                  "unknown": "unknownplug", "wrapper": "wrapperplug"},
            {"raisesplug": RAISES, "badimportplug": BAD_IMPORT, "unknownplug": UNKNOWN_HOOK,
             "wrapperplug": WRAPPER})
    d = make_daemon(env={"PYTHONPATH": str(site)}).start()
    ps = plugins_of(d)
    assert ps["good"]["state"] == "active"
    assert ps["good"]["dist"] == "goodplug" and ps["good"]["version"] == "1.0"
    assert "mabeamd_worker_event" in ps["good"]["hooks"]  # type: ignore[operator]
    assert ps["badimport"]["state"] == "failed"
    assert "missing dependency frob" in str(ps["badimport"]["error"])
    assert ps["unknown"]["state"] == "failed"
    assert "mabeamd_no_such_hook" in str(ps["unknown"]["error"])
    assert ps["wrapper"]["state"] == "failed"
    assert "wrappers are not supported" in str(ps["wrapper"]["error"])
    assert ps["raises"]["state"] == "active"  # until its hook runs

    status = d.call("status")  # runs mabeamd_status: `raises` blows up and is disabled
    assert status["extensions"]["good"]["running"] == 2
    assert status["extensions"]["good"]["configured"] == ["info"]
    ps = plugins_of(d)
    assert ps["raises"]["state"] == "failed"
    assert "boom in status" in str(ps["raises"]["error"])
    # The built-in protocol plugins are active too; count from the listing, not a constant.
    states = [str(p["state"]) for p in ps.values()]
    assert d.call("status")["plugins"] == {s: states.count(s)
                                           for s in ("active", "failed", "disabled")}
    assert states.count("failed") == 4
    assert {n for n, p in ps.items() if p["state"] == "active"} >= {"good", "voting"}

    out = d.ctl("plugins", "--socket", str(d.socket))
    assert out.returncode == 0
    assert "boom in status" in out.stdout
    assert d.stop() == 0


def test_disable_and_reload_pick_up_changes(make_daemon: Callable[..., Daemon],
                                            site: Path) -> None:
    install(site, "goodplug", {"good": "goodplug"}, {"goodplug": GOOD})
    d = make_daemon('\n[plugins]\ndisabled = ["good"]\n', env={"PYTHONPATH": str(site)}).start()
    assert plugins_of(d)["good"]["state"] == "disabled"
    assert "good" not in d.call("status")["extensions"]

    # Enable it and add a second plugin; SIGHUP loads both without a restart.
    install(site, "laterplug", {"later": "laterplug"}, {"laterplug": GOOD})
    d.config_path.write_text(d.config_path.read_text().replace('disabled = ["good"]',
                                                               "disabled = []"))
    pid = d.pid
    d.signal(signal.SIGHUP)
    d.wait_until(lambda: plugins_of(d).get("later", {}).get("state") == "active",
                 what="new plugin loaded")
    assert plugins_of(d)["good"]["state"] == "active"
    assert d.call("status")["pid"] == pid


def test_host_calls_newest_first_and_isolates_failures() -> None:
    host = PluginHost(group="mabeamd.test-no-such-group")
    order: list[str] = []

    from mabeamd.hookspecs import hookimpl

    def make(name: str, fail: bool = False) -> object:
        class Impl:
            @hookimpl
            def mabeamd_status(self) -> dict[str, str]:
                order.append(name)
                if fail:
                    raise ValueError(name)
                return {"n": name}
        return Impl()

    host.register("a", make("a"))
    host.register("b", make("b", fail=True))
    host.register("c", make("c"))
    results = host.call("mabeamd_status")
    assert order == ["c", "b", "a"]
    assert results == [("c", {"n": "c"}), ("a", {"n": "a"})]
    assert host.records["b"].state == "failed"


def test_a_call_missing_an_argument_raises_and_disables_no_plugin() -> None:
    """The daemon's own calling error (an argument the spec names, not given) used to raise
    KeyError inside the per-plugin guard: every plugin implementing the hook was disabled and
    blamed. It is pluggy's HookCallError now, raised to the caller; the plugins stay."""
    import pluggy

    from mabeamd.hookspecs import hookimpl

    class Impl:
        @hookimpl
        def mabeamd_worker_event(self, index: int, event: str) -> None:
            pass

    host = PluginHost(group="mabeamd.test-none")
    host.register("a", Impl())
    with pytest.raises(pluggy.HookCallError, match=r"without argument\(s\) \['details'\]"):
        host.call("mabeamd_worker_event", index=0, event="exited")
    assert host.records["a"].state == "active"
    assert host.call("mabeamd_worker_event", index=0, event="exited", details={}) == []


def test_a_firstresult_hook_stops_at_the_first_answer() -> None:
    host = PluginHost(group="mabeamd.test-none")
    order: list[str] = []

    from mabeamd.hookspecs import hookimpl

    def make(name: str, reason: str | None) -> object:
        class Impl:
            @hookimpl
            def mabeamd_authorize(self, actor: str, op: str) -> str | None:
                order.append(name)
                return reason
        return Impl()

    host.register("a", make("a", "a says no"))
    host.register("b", make("b", "b says no"))
    host.register("c", make("c", None))
    assert host.refusal("mabeamd_authorize", actor="x", op="var.set", details={}) == \
        "b says no (plugin b)"
    assert order == ["c", "b"]
