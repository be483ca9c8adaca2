"""Anomaly detection in a real daemon: steady load leaves every series in its band; a burst
of errors fires anomaly.error_rate (event, metric, log line) and clears after it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from mabeamd.client import Client
from mabeamd.client.errors import UnknownOp
from mabeamd.testing import Daemon, free_port
from tests.e2e.test_agents import Events
from tests.e2e.test_monitoring import samples

# Samples every 0.25 s, ten to learn from. The band is wider than the default (sigmas 6,
# relative 1.0) because this machine is shared: a test must not fire on the machine's own
# hiccups; an error burst is thousands of times its quiet rate either way.
ANOMALY = """
[anomaly]
interval = 0.25
warmup = 10
sigmas = 6.0
relative = 1.0
"""


def steady(endpoint: str, stop: threading.Event) -> None:
    """About 100 reads a second, paced by sleeps (not by how fast the machine is)."""
    with Client(endpoint) as c:
        c.register("steady")
        c.create_var("steady", "s/x", 1)
        while not stop.is_set():
            c.get_var("s/x", local=False)
            time.sleep(0.01)


def test_steady_load_is_quiet_and_an_error_burst_fires(
        make_daemon: Callable[..., Daemon]) -> None:
    port = free_port()
    d = make_daemon(ANOMALY + f'[metrics]\nlisten = "127.0.0.1:{port}"\n', workers=1)
    d.start()
    events = Events(d.event_endpoint, "anomaly.")
    stop = threading.Event()
    load = threading.Thread(target=steady, args=(d.agent_endpoint, stop), daemon=True)
    load.start()
    try:
        # Warm-up plus twenty more samples of steady load: nothing fires.
        d.wait_until(lambda: samples(port).get(("mabeamd_agents", (("status", "healthy"),)))
                     == 1, timeout=15)
        time.sleep(0.25 * 30)
        assert events.items == [], events.items
        assert all(not f["fired"] for f in d.call("status")["anomaly"].values())
        start = events.mark()
        with Client(d.agent_endpoint) as c:
            for _ in range(400):  # an error burst: unknown ops, as a broken client sends
                with pytest.raises(UnknownOp):
                    c.request("no.such.op", {})
        fired = events.wait("anomaly.error_rate", timeout=10, start=start)
        assert fired["state"] == "entered" and fired["direction"] == "high"
        assert fired["value"] > fired["band"] > 0
        cleared = d.wait_until(lambda: any(
            t == "anomaly.error_rate" and b["state"] == "cleared"
            for t, b in events.items[start:]), timeout=15)
        assert cleared >= 0
        m = samples(port)
        assert m[("mabeamd_anomalies_total", (("series", "error_rate"),))] == 1
        assert m[("mabeamd_anomaly_active", (("series", "error_rate"),))] == 0
        assert "anomaly: error_rate is high" in d.log()
    finally:
        stop.set()
        load.join(10)
        events.close()
