"""`scripts/cluster`: three etcd members and three mabeamd nodes on loopback, for trying
cluster mode by hand (docs/cluster.md "Try it"). Not for production: no TLS, no auth.

Each node gets DIR/NODE/mabeamd.toml (printed, so it can be read and reused), its runtime
and state directories, an agent endpoint on a free loopback port and its own shard-endpoint
and metrics ports. The script stays in the foreground; Ctrl-C (or SIGTERM) stops the nodes
(each leaves the cluster at once) and then etcd. Everything it started dies with it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from mabeamd.cluster.local import LocalEtcd, etcd_binary
from mabeamd.testing import free_port, free_ports

NODE_CONFIG = """\
# Node {node} of the loopback cluster that scripts/cluster started.
[workers]
count = {workers}

[agents]
endpoints = ["tcp://127.0.0.1:{agent_port}"]
shard_endpoint = "tcp://127.0.0.1:{shard_port}"

[events]
endpoint = "tcp://127.0.0.1:{event_port}"

[metrics]
listen = "127.0.0.1:{metrics_port}"

[cluster]
etcd = {etcd}
node = "{node}"
name = "loopback"
lease_ttl = {ttl}
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/cluster", description=__doc__.split("\n")[0])
    p.add_argument("--nodes", type=int, default=3, help="mabeamd nodes (default 3)")
    p.add_argument("--etcd", type=int, default=3, help="etcd members (default 3)")
    p.add_argument("--workers", type=int, default=2, help="workers (shards) per node")
    p.add_argument("--ttl", type=int, default=10, help="each node's lease TTL, seconds")
    p.add_argument("--dir", type=Path, default=Path(".mabeamd/cluster"),
                   help="where configs, data and logs go (emptied first)")
    args = p.parse_args(argv)
    if not 1 <= args.nodes <= 26 or args.etcd not in (1, 3, 5) or not 1 <= args.workers <= 64:
        p.error("--nodes 1..26, --etcd 1, 3 or 5, --workers 1..64")
    if args.ttl < 2:
        p.error("--ttl must be at least 2 seconds")
    if etcd_binary() is None:
        print("scripts/cluster: etcd not found: install Debian's etcd-server "
              "(apt-get install etcd-server) or set MABEAM_ETCD", file=sys.stderr)
        return 1
    root = args.dir.absolute()
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    etcd = LocalEtcd(root / "etcd", size=args.etcd)
    procs: list[tuple[str, subprocess.Popen[bytes]]] = []
    stopping = False

    def stop(*_: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        print(f"etcd: starting {args.etcd} members ...", file=sys.stderr)
        etcd.start()
        rows = []
        for k in range(args.nodes):
            node = chr(ord("a") + k)
            d = root / node
            d.mkdir()
            ports = {"agent_port": free_port(), "shard_port": free_ports(args.workers),
                     "event_port": free_port(), "metrics_port": free_port()}
            cfg = d / "mabeamd.toml"
            cfg.write_text(NODE_CONFIG.format(node=node, workers=args.workers, ttl=args.ttl,
                                              etcd=json.dumps(etcd.endpoints), **ports))
            log = open(d / "mabeamd.log", "ab")  # noqa: SIM115 (the child keeps it)
            proc = subprocess.Popen(
                [sys.executable, "-m", "mabeamd", "--config", str(cfg), "--runtime-dir",
                 str(d / "run"), "--state-dir", str(d / "state")], stdout=log, stderr=log,
                stdin=subprocess.DEVNULL)
            log.close()
            procs.append((node, proc))
            rows.append((node, ports, d))
        for (node, proc), (_, _, d) in zip(procs, rows, strict=True):
            sock = d / "run" / "control.sock"
            deadline = time.monotonic() + 60
            while not _ready(sock):
                if proc.poll() is not None or time.monotonic() > deadline or stopping:
                    print(f"node {node} did not start; its log:\n"
                          f"{(d / 'mabeamd.log').read_text()[-3000:]}", file=sys.stderr)
                    return 1
                time.sleep(0.2)
        print(f"\ncluster 'loopback' is up: etcd {', '.join(etcd.endpoints)}\n")
        for node, ports, d in rows:
            print(f"  node {node}: agents tcp://127.0.0.1:{ports['agent_port']}  events "
                  f"tcp://127.0.0.1:{ports['event_port']}  metrics "
                  f"http://127.0.0.1:{ports['metrics_port']}/metrics")
            print(f"          control {d / 'run' / 'control.sock'}  config "
                  f"{d / 'mabeamd.toml'}  log {d / 'mabeamd.log'}")
        first = rows[0][2] / "run" / "control.sock"
        endpoints = ",".join(f"tcp://127.0.0.1:{r[1]['agent_port']}" for r in rows)
        print(f"\ntry:  .venv/bin/mabeamctl --socket {first} cluster status\n"
              f"      MABEAM_ENDPOINT={endpoints} .venv/bin/python  (an SDK client that fails "
              "over between the nodes)\nCtrl-C stops the cluster.", flush=True)
        while not stopping:
            for node, proc in procs:
                if proc.poll() is not None:
                    print(f"node {node} exited ({proc.returncode}); see "
                          f"{root / node / 'mabeamd.log'}", file=sys.stderr)
                    procs.remove((node, proc))
                    break
            time.sleep(0.5)
        return 0
    finally:
        for _, proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for _, proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        etcd.stop()
        print("cluster stopped", file=sys.stderr)


def _ready(sock: Path) -> bool:
    if not sock.exists():
        return False
    r = subprocess.run([sys.executable, "-m", "mabeamd.ctl.main", "--socket", str(sock),
                        "status", "--json"], capture_output=True, text=True, check=False,
                       timeout=10)
    return r.returncode == 0 and json.loads(r.stdout).get("state") == "running"


if __name__ == "__main__":
    sys.exit(main())
