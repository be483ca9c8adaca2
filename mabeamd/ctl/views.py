"""What mabeamctl prints for each reply (the --json output is the reply itself)."""

from __future__ import annotations

import json
from typing import Any

from mabeamd.ctl import render


def show_status(s: dict[str, Any]) -> str:
    w = s["workers"]
    head = f"mabeamd {s['version']} (pid {s['pid']}) {s['state']}: {s['summary']}"
    ready = (f" (ready after {s['ready_after']:.2f}s)" if s.get("ready_after") is not None
             else "")
    c = s["control"]
    items: list[tuple[str, Any]] = [
        ("uptime", render.duration(s["uptime"]) + ready),
        ("config", s["config"]),
        ("runtime_dir", s["runtime_dir"]),
        ("state_dir", s["state_dir"]),
        ("control", f"{s['control_socket']} (requests {c['requests']}, errors {c['errors']}, "
                    f"undeliverable {c['undeliverable']})"),
        ("log", f"{s['log_level']} -> {s['log_target']}"),
        ("systemd", "notify" if s["systemd_notify"] else "not under systemd"),
        ("workers", ", ".join(f"{w[k]} {k}" for k in
                              ("running", "starting", "backoff", "stopping", "stopped", "failed")
                              ) + f" (of {w['total']})"),
        ("plugins", ", ".join(f"{v} {k}" for k, v in s["plugins"].items())),
    ]
    t = s.get("agent_traffic")
    if t:  # the agent endpoint's refusals, beside its volume
        items.append(("agent endpoint", ", ".join(
            f"{k} {t.get(k, 0)}" for k in ("requests", "errors", "busy", "rate_limited"))
            + ("" if s.get("rate_limit_buckets") is None else " (limits on)")))
    items += [(f"plugin {k}", json.dumps(v, sort_keys=True)) for k, v in
              sorted(s.get("extensions", {}).items())]
    return head + "\n" + render.pairs(items)


def show_workers(ws: list[dict[str, Any]]) -> str:
    rows = []
    for w in ws:
        last = w["last_exit"] or "-"
        if w["state"] == "backoff" and w["restart_in"] is not None:
            last += f" (restart in {w['restart_in']:.1f}s)"
        traffic = w.get("shard_traffic") or {}
        rows.append([w["index"], w["state"].upper() if w["state"] == "failed" else w["state"],
                     w["pid"], w["cpu_percent"], render.size(w["rss"]),
                     render.duration(w["uptime"]), w["restarts"], w["crashes"],
                     w["start_failures"] + w["spawn_failures"],
                     traffic.get("requests", "-") if w.get("shard_endpoint") else "-", last])
    # DIRECT: requests served on the worker's shard endpoint (--json has its address).
    return render.table(["WORKER", "STATE", "PID", "CPU%", "RSS", "UPTIME", "RESTARTS",
                         "CRASHES", "START_FAIL", "DIRECT", "LAST EXIT"], rows)


def show_cluster(s: dict[str, Any]) -> str:
    lease = s["lease"]
    head = [f"cluster {s['cluster']}: node {s['node']}, {s['shards']} shards, etcd revision "
            f"{s.get('revision', '?')}",
            f"lease {lease['id'] or '-'}: {lease['state']} (TTL {lease['ttl']} s, last "
            f"keepalive {render.duration(lease['since_keepalive'])} ago)"
            if lease["since_keepalive"] is not None else f"lease: {lease['state']}"]
    if s.get("error"):
        head.append(f"etcd: {s['error']}")
    nodes = render.table(["NODE", "HOST", "PID", "VERSION", "ADVERTISE", "EVENTS", "LEASE"],
                         [[n["node"], n["host"], n["pid"], n["version"], n["advertise"],
                           n.get("events") or "-", n["lease"]] for n in s.get("nodes", [])])
    members = render.table(
        ["ETCD ENDPOINT", "HEALTHY", "LEADER", "VERSION", "DB", "RAFT INDEX", "MS/ERROR"],
        [[e["endpoint"], "yes" if e["healthy"] else "NO",
          ("*" if e.get("is_leader") else "") + (e.get("leader") or "-"),
          e.get("version", "-"), render.size(e["db_size"]) if e.get("db_size") else "-",
          e.get("raft_index", "-"), e.get("ms", e.get("error", ""))]
         for e in s["endpoints"]])
    caches = render.table(
        ["SHARD", "STATE", "REVISION", "WATCH", "EVENTS", "LAG P50", "LAG MAX"],
        [[c["shard"], c["state"], c.get("revision", "-"),
          "open" if c.get("watch") else "CLOSED" if "watch" in c else "-",
          c.get("watch_events", "-"), _secs(c.get("lag_p50")), _secs(c.get("lag_max"))]
         for c in s["caches"]])
    return "\n".join([*head, "", nodes, "", members, "", caches])


def _secs(v: Any) -> str:
    return "-" if v is None else f"{v * 1000:.1f} ms"


def show_plugins(ps: list[dict[str, Any]]) -> str:
    if not ps:
        return "no plugins installed (entry-point group mabeamd.plugins)"
    rows = [[p["name"], p["state"], f"{p['dist'] or '-'} {p['version'] or ''}".strip(),
             p["value"], ",".join(h.removeprefix("mabeamd_") for h in p["hooks"]) or "-",
             p["error"] or ""] for p in ps]
    return render.table(["NAME", "STATE", "DIST", "TARGET", "HOOKS", "ERROR"], rows)


def show_agents(agents: list[dict[str, Any]]) -> str:
    if not agents:
        return "no agents registered"
    rows = [[a["id"], a["status"], ",".join(a["capabilities"]) or "-", a["weight"],
             a["priority"], a["principal"] or "-", a["managed"] or "-",
             render.duration(a["last_seen_age"])] for a in agents]
    return render.table(["AGENT", "STATUS", "CAPABILITIES", "WEIGHT", "PRIORITY", "KEY",
                         "MANAGED", "LAST SEEN"], rows)


def show_agent(a: dict[str, Any]) -> str:
    conn = a.get("connection", {})
    return render.pairs([
        ("agent", a["id"]), ("status", a["status"]),
        ("capabilities", ", ".join(a["capabilities"]) or "-"),
        ("metadata", json.dumps(a["metadata"], sort_keys=True)),
        ("weight", a["weight"]), ("priority", a["priority"]),
        ("key", a["principal"] or "- (unauthenticated)"), ("managed", a["managed"] or "-"),
        ("last seen", render.duration(a["last_seen_age"]) + " ago"),
        ("endpoint", conn.get("endpoint", "-")),
    ])


def show_programs(programs: list[dict[str, Any]]) -> str:
    if not programs:
        return "no managed programs configured ([managed.NAME] in the config)"
    rows = [[p["name"], q["agent"], q["state"], q["pid"], render.duration(q["uptime"]),
             q["restarts"], q["last_exit"] or "-"]
            for p in programs for q in p["processes"]]
    return render.table(["PROGRAM", "AGENT", "STATE", "PID", "UPTIME", "RESTARTS",
                         "LAST EXIT"], rows)


def _value(v: Any) -> str:
    return render.abbrev(v, 60)


def show_var(v: dict[str, Any]) -> str:
    cons = json.dumps(v.get("constraints") or {}, sort_keys=True)
    return render.pairs([
        ("name", v["name"]), ("value", render.abbrev(v["value"], 200)),
        ("version", v["version"]), ("type", v["type"]), ("owner", v["owner"]),
        ("modified by", v["modified_by"]), ("access", v["access"] + (
            f" (writers: {', '.join(v['writers'])})" if v.get("writers") else "")),
        ("policy", v["policy"]), ("constraints", cons),
    ])


def show_vars(out: dict[str, Any]) -> str:
    if not out["vars"]:
        return "no variables"
    rows = [[v["name"], v["version"], v["type"], v["modified_by"], _value(v["value"])]
            for v in out["vars"]]
    text = render.table(["NAME", "VERSION", "TYPE", "MODIFIED BY", "VALUE"], rows)
    if out.get("next"):
        text += f"\n(more: --after {out['next']})"
    return text


def show_history(out: dict[str, Any]) -> str:
    rows = [[h["version"], h["modified_by"], _value(h["value"])] for h in out["history"]]
    head = f"{out['name']}: now at version {out['version']}"
    return head + ("\n" + render.table(["VERSION", "MODIFIED BY", "VALUE"], rows)
                   if rows else "\n(no earlier versions kept)")
