"""The web console over plain HTTP: every page of a daemon that ran a vote, a sealed-bid
auction and a continuous double auction with live SDK agents; the live stream; refusals of
bad requests; off by default. Real daemon, real sockets. (In a real browser:
test_console_browser.py.)"""

from __future__ import annotations

import http.client
import json
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from urllib.parse import quote

from mabeamd.client import Client
from mabeamd.testing import Daemon, free_port
from tests.e2e.console_scenario import console_daemon, hold_streams, run_scenario


def get(port: int, path: str, method: str = "GET") -> tuple[int, dict[str, str], str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read().decode()
    finally:
        conn.close()


def arrows(html: str) -> list[str]:
    return re.findall(r'<line class="msg [a-z_]+" data-kind="([a-z_]+)"', html)


def test_every_page_of_a_daemon_that_ran_sessions(make_daemon: Callable[..., Daemon]) -> None:
    d, port = console_daemon(make_daemon)
    with run_scenario(d, port) as s:
        status, headers, html = get(port, "/console/")
        assert status == 200 and headers["content-type"].startswith("text/html")
        assert "default-src 'self'" in headers["content-security-policy"]
        assert 'data-live="workers"' in html and 'data-stream="/console/"' in html
        assert re.search(r'data-field="agents">(\d+)<', html).group(1) == "9"  # type: ignore[union-attr]  # boss said bye

        status, _, html = get(port, "/console/agents?q=bidder")
        assert status == 200
        assert html.count("<tr><td>bidder-") == 3 and "voter-0" not in html
        assert html.count(d.agent_endpoint) == 3  # the endpoint each is connected through

        status, _, html = get(port, "/console/sessions")
        assert status == 200
        for out in s.sessions.values():
            assert out["session"] in html

        vote = s.sessions["vote"]["session"]
        status, _, html = get(port, f"/console/sessions/{vote}")
        assert status == 200
        # start, 3 invitations, 3 answers, the result: one arrow per message
        assert sorted(arrows(html)) == sorted(["start", *["invite"] * 3, *["answer"] * 3,
                                               "result"])
        rounds = re.search(r'<table class="rounds">.*?</table>', html)
        assert rounds is not None and "<td>1</td><td>ballot</td>" in rounds.group(0)
        bids = s.sessions["sealed_bid"]["session"]
        status, _, html = get(port, f"/console/sessions/{bids}")
        assert status == 200 and len(arrows(html)) == 8
        assert '{&quot;bid&quot;:50}' in html  # show_answers: the bids, after the close

        cda = s.sessions["cda"]["session"]
        status, _, html = get(port, f"/console/sessions/{cda}")
        assert status == 200
        levels = re.findall(r'<rect class="level (bid|ask)" data-side="\w+" '
                            r'data-price="([\d.]+)" data-quantity="([\d.]+)"', html)
        assert sorted(levels) == [("ask", "11", "3"), ("ask", "12", "3"), ("bid", "8", "3"),
                                  ("bid", "9", "2")]
        assert len(re.findall(r'<circle class="point"', html)) == 2  # two trades

        status, _, html = get(port, "/console/markets")
        assert status == 200 and cda in html and 'class="chart depth"' in html

        status, _, html = get(port, "/console/variables?prefix=%7Bcon%7D")
        assert status == 200 and html.count("/console/variables/%7Bcon%7D") == 3
        status, _, html = get(port, "/console/variables/" + quote("{con}colour", safe=""))
        assert status == 200
        assert len(re.findall(r'<circle class="version"', html)) == 2  # v1 (null) and v2

        status, headers, body = get(port, "/console/static/console.js")
        assert status == 200 and headers["content-type"].startswith("text/javascript")
        assert "EventSource" in body


def test_the_live_stream_sends_a_section_when_it_changes(
        make_daemon: Callable[..., Daemon]) -> None:
    d, port = console_daemon(make_daemon)
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        sock.sendall(b"GET /console/live?page=%2Fconsole%2F HTTP/1.1\r\nHost: x\r\n\r\n")
        buf = b""

        def until(pred: Callable[[bytes], bool]) -> None:
            nonlocal buf
            deadline = time.monotonic() + 15
            while not pred(buf):
                assert time.monotonic() < deadline, buf[-2000:]
                buf += sock.recv(65536)

        until(lambda b: b"text/event-stream" in b and b'"name": "agents"' in b)
        buf = b""
        with Client(d.agent_endpoint) as c:
            c.register("newcomer")

            def counted(b: bytes) -> bool:
                for chunk in b.split(b"\n\n"):
                    if chunk.startswith(b"event: section") and b'"name": "agents"' in chunk:
                        data = json.loads(chunk.split(b"data: ", 1)[1])
                        if 'data-field="agents">1<' in data["html"]:
                            return True
                return False
            until(counted)
    finally:
        sock.close()


def test_bad_requests_are_refused_and_change_nothing(
        make_daemon: Callable[..., Daemon]) -> None:
    d, port = console_daemon(make_daemon)
    for path, code in (("/console/nowhere", 404), ("/console/sessions/nope", 404),
                       ("/console/sessions?state=bogus", 400),
                       ("/console/sessions?state=queued", 200),
                       ("/console/sessions?state=starting", 200),
                       ("/console/sessions/%ff", 400), ("/console/variables/%c3", 400),
                       ("/console/agents?q=" + "x" * 300, 400),
                       ("/console/variables/" + quote("a\x01b", safe=""), 400),
                       ("/console/variables/" + quote("{x}nope", safe=""), 404),
                       ("/console/static/../../etc/passwd", 404),
                       ("/console/live?page=%2Fmetrics", 200)):
        status, _, body = get(port, path)
        assert status == code, (path, status, body[:300])
    status, _, _ = get(port, "/console/", method="POST")
    assert status == 405
    status, headers, body = get(port, "/console/live?page=%2Fconsole%2F", method="HEAD")
    assert status == 200 and headers["content-type"] == "text/event-stream" and body == ""
    assert "Traceback" not in d.log()
    # Markup from an agent (its metadata) is shown as text.
    with Client(d.agent_endpoint) as c:
        c.register("mallory", metadata={"note": "<script>alert(1)</script>"})
        _, _, html = get(port, "/console/agents")
    assert "mallory" in html and "<script>alert" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert get(port, "/readyz")[0] == 200  # the listener serves on
    assert all(w["crashes"] == 0 for w in d.workers())


def test_live_streams_are_bounded(make_daemon: Callable[..., Daemon]) -> None:
    _, port = console_daemon(make_daemon)
    socks = hold_streams(port, 8, "%2Fconsole%2Fagents")
    try:
        status, _, body = get(port, "/console/live?page=%2Fconsole%2F")
        assert status == 503 and "too many live streams" in body
        assert get(port, "/console/")[0] == 200  # pages still served
    finally:
        for s in socks:
            s.close()
    # Closed streams free their places.
    deadline = time.monotonic() + 20
    while True:
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(b"GET /console/live?page=%2Fconsole%2F HTTP/1.1\r\n\r\n")
        head = s.recv(4096)
        s.close()
        if b"200 OK" in head:
            break
        assert time.monotonic() < deadline, head


def test_off_by_default(make_daemon: Callable[..., Daemon]) -> None:
    port = free_port()
    d = make_daemon(f'[metrics]\nlisten = "127.0.0.1:{port}"\n').start()
    status, _, body = get(port, "/console/")
    assert status == 404 and "/console" not in body
    assert d.stop() == 0


def test_console_without_a_listener_is_a_config_error(
        make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon('[metrics]\nlisten = ""\n[console]\nenabled = true\n')
    r = subprocess.run([sys.executable, "-m", "mabeamd", "--config", str(d.config_path),
                        "--check-config"], capture_output=True, text=True, timeout=60,
                       check=False)
    assert r.returncode != 0 and "[console] enabled" in r.stderr, r.stderr


def test_slow_clients_cannot_lock_out_the_health_checks(
        make_daemon: Callable[..., Daemon]) -> None:
    """40 connections that never finish their request head (a slowloris), reopened as they
    are dropped: /readyz, /metrics and the console still answer."""
    _, port = console_daemon(make_daemon)
    slow: list[socket.socket] = []

    def fill() -> None:
        while len(slow) < 40:
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(b"GET /console/ HTTP/1.1\r\nX-a: b")
            s.settimeout(None)  # with a timeout, recv waits for it despite MSG_DONTWAIT
            slow.append(s)

    try:
        fill()
        for path in ("/readyz", "/metrics", "/console/") * 3:
            assert get(port, path)[0] == 200, path
            for s in list(slow):  # reopen what the listener dropped, as an attacker would
                try:
                    gone = s.recv(1, socket.MSG_DONTWAIT) == b""
                except BlockingIOError:
                    gone = False
                except OSError:  # reset
                    gone = True
                if gone:
                    slow.remove(s)
                    s.close()
            fill()
        samples = get(port, "/metrics")[2]
        dropped = re.search(r"^mabeamd_http_dropped_slow_total (\S+)", samples, re.M)
        assert dropped is not None and float(dropped.group(1)) >= 1
    finally:
        for s in slow:
            s.close()
