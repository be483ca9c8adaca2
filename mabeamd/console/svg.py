"""The console's charts, drawn on the server as SVG text. Pure: data in, markup out.

Why on the server: the console must work offline and without a build step, and a chart
drawn here is one more string in the page -- no charting library to vendor and keep up to
date, nothing for the browser to run before it shows, and the same markup the tests read.
Every mark carries a class (and data-* attributes) naming what it shows, so a test asserts
on the DOM ("one arrow per message", "one bar per price level") rather than on pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape
from typing import NamedTuple

W, H = 720, 260  # a chart's viewBox; CSS scales it to the page
PAD_L, PAD_R, PAD_T, PAD_B = 56, 16, 16, 36


def _num(x: float) -> str:
    """A coordinate: two decimals at most, no "-0"."""
    text = f"{x:.2f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _label(v: float, step: float = 0.01) -> str:
    """A tick's text, with as many decimals as the ticks' spacing needs."""
    if v != 0 and not 1e-6 <= abs(v) < 1e9:
        return f"{v:.3g}"
    decimals = min(6, max(0, -math.floor(math.log10(step)))) if step > 0 else 2
    text = f"{v:,.{decimals}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def _ticks(lo: float, hi: float, n: int = 5, whole: bool = False) -> list[float]:
    """About n round tick values covering [lo, hi] (`whole`: integers only)."""
    if hi <= lo:
        return [lo]
    raw = max((hi - lo) / n, 1.0) if whole else (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [first + k * step for k in range(int((hi - first) / step) + 1)]


def _spacing(ticks: Sequence[float]) -> float:
    return ticks[1] - ticks[0] if len(ticks) > 1 else 1.0


class Scale(NamedTuple):
    lo: float
    hi: float
    a: float  # pixel of lo
    b: float  # pixel of hi

    def __call__(self, v: float) -> float:
        if self.hi == self.lo:
            return (self.a + self.b) / 2
        return self.a + (v - self.lo) / (self.hi - self.lo) * (self.b - self.a)


def _bounds(values: Sequence[float], floor0: bool = False) -> tuple[float, float]:
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    if floor0:
        lo = min(lo, 0.0)
    if hi == lo:
        hi, lo = hi + 1, lo - (0 if floor0 else 1)
    return lo, hi


def _frame(x: Scale, y: Scale, xlabel: str, ylabel: str) -> list[str]:
    """Axes with ticks and labels: the axis lines first, as one complete element (a chart
    with ticks of its own takes only that)."""
    out = [f'<g class="axes"><line x1="{PAD_L}" y1="{H - PAD_B}" x2="{W - PAD_R}" '
           f'y2="{H - PAD_B}"/><line x1="{PAD_L}" y1="{PAD_T}" x2="{PAD_L}" y2="{H - PAD_B}"/>'
           '</g>', '<g class="ticks">']
    xt, yt = _ticks(x.lo, x.hi), _ticks(y.lo, y.hi)
    for t in xt:
        px = _num(x(t))
        out.append(f'<text x="{px}" y="{H - PAD_B + 16}" text-anchor="middle">'
                   f'{_label(t, _spacing(xt))}</text>')
    for t in yt:
        py = _num(y(t))
        out.append(f'<text x="{PAD_L - 6}" y="{py}" text-anchor="end" '
                   f'dominant-baseline="middle">{_label(t, _spacing(yt))}</text>')
    out.append(f'<text class="axis-label" x="{(PAD_L + W - PAD_R) / 2}" y="{H - 4}" '
               f'text-anchor="middle">{escape(xlabel)}</text>')
    out.append(f'<text class="axis-label" x="12" y="{(PAD_T + H - PAD_B) / 2}" '
               f'transform="rotate(-90 12 {(PAD_T + H - PAD_B) / 2})" '
               f'text-anchor="middle">{escape(ylabel)}</text></g>')
    return out


def _svg(kind: str, body: list[str], title: str, height: int = H) -> str:
    return (f'<svg class="chart {kind}" viewBox="0 0 {W} {height}" role="img" '
            f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">'
            f'<title>{escape(title)}</title>{"".join(body)}</svg>')


def empty(title: str, why: str) -> str:
    return _svg("empty", [f'<text x="{W / 2}" y="{H / 2}" text-anchor="middle">'
                          f'{escape(why)}</text>'], title)


# --- market charts ----------------------------------------------------------------------------

def depth(bids: Sequence[Sequence[float]], asks: Sequence[Sequence[float]],
          title: str = "order book depth") -> str:
    """An order book's depth: cumulative quantity against price, bids left of the spread
    and asks right of it. One `rect.level` per price level (data-side, data-price,
    data-quantity: the level's own quantity) under the cumulative step line."""
    if not bids and not asks:
        return empty(title, "the book is empty")
    levels = [("bid", float(p), float(q)) for p, q in bids] + \
             [("ask", float(p), float(q)) for p, q in asks]
    prices = [p for _, p, _ in levels]
    cum: dict[tuple[str, float], float] = {}
    for side, book in (("bid", sorted(bids, key=lambda lv: -lv[0])),
                       ("ask", sorted(asks, key=lambda lv: lv[0]))):
        total = 0.0
        for p, q in book:
            total += float(q)
            cum[(side, float(p))] = total
    width = max(2.0, min(24.0, (W - PAD_L - PAD_R) / (2 * max(1, len(levels)))))
    # Inset by half a bar, so the outermost levels do not cover the axes.
    x = Scale(*_bounds(prices), PAD_L + width / 2 + 6, W - PAD_R - width / 2 - 6)
    y = Scale(0.0, max(cum.values()) * 1.1, H - PAD_B, PAD_T)
    body = _frame(x, y, "price", "cumulative quantity")
    if len(levels) <= 24:  # few levels: label each level's price, not round ticks
        body = [b for b in body if 'text-anchor="middle">' not in b or "axis-label" in b
                or f'y="{H - PAD_B + 16}"' not in b]
        body += [f'<text class="level-price" x="{_num(x(p))}" y="{H - PAD_B + 16}" '
                 f'text-anchor="middle">{p:g}</text>' for p in sorted(set(prices))]
    body.append(f'<text class="legend bid" x="{PAD_L + 8}" y="{PAD_T + 4}">bids</text>'
                f'<text class="legend ask" x="{W - PAD_R - 8}" y="{PAD_T + 4}" '
                'text-anchor="end">asks</text>')
    for side, p, q in levels:
        top = y(cum[(side, p)])
        body.append(f'<rect class="level {side}" data-side="{side}" data-price="{p:g}" '
                    f'data-quantity="{q:g}" x="{_num(x(p) - width / 2)}" y="{_num(top)}" '
                    f'width="{_num(width)}" height="{_num(H - PAD_B - top)}">'
                    f'<title>{side} {p:g}: {q:g} (cumulative {cum[(side, p)]:g})</title></rect>')
    return _svg("depth", body, title)


def curves(demand: Sequence[Sequence[float]], supply: Sequence[Sequence[float]],
           price: float | None, quantity: float | None,
           title: str = "supply and demand") -> str:
    """Aggregate step curves: `demand` and `supply` as [price, quantity] steps (any order);
    demand is drawn falling from the highest price, supply rising from the lowest, and the
    clearing point (price, quantity) as `circle.clearing`."""
    d = sorted(((float(p), float(q)) for p, q in demand), key=lambda s: -s[0])
    s = sorted(((float(p), float(q)) for p, q in supply), key=lambda s: s[0])
    if not d and not s:
        return empty(title, "no orders")

    def steps(side: list[tuple[float, float]]) -> list[tuple[float, float]]:
        pts, total = [], 0.0
        for p, q in side:
            pts.append((total, p))
            total += q
            pts.append((total, p))
        return pts

    dp, sp = steps(d), steps(s)
    qs = [q for q, _ in dp + sp] + ([quantity] if quantity else [])
    ps = [p for _, p in dp + sp] + ([price] if price is not None else [])
    x = Scale(0.0, max(qs) * 1.05 or 1.0, PAD_L, W - PAD_R)
    y = Scale(*_bounds(ps), H - PAD_B, PAD_T)
    body = _frame(x, y, "quantity", "price")
    for name, pts in (("demand", dp), ("supply", sp)):
        if pts:
            path = " ".join(f"{_num(x(q))},{_num(y(p))}" for q, p in pts)
            body.append(f'<polyline class="curve {name}" data-steps="{len(pts) // 2}" '
                        f'points="{path}"><title>{name}</title></polyline>')
    if price is not None and quantity is not None:
        body.append(f'<circle class="clearing" data-price="{price:g}" '
                    f'data-quantity="{quantity:g}" cx="{_num(x(quantity))}" '
                    f'cy="{_num(y(price))}" r="5"><title>clearing: {quantity:g} at '
                    f'{price:g}</title></circle>')
    return _svg("curves", body, title)


def series(points: Sequence[tuple[float, float]], title: str, xlabel: str, ylabel: str,
           *, kind: str = "series", labels: Sequence[str] = ()) -> str:
    """A line through (x, y) points, each a `circle.point` (data-x, data-y; its label, if
    given, as its tooltip): prices per round, trades over time."""
    if not points:
        return empty(title, "nothing yet")
    x = Scale(*_bounds([p[0] for p in points]), PAD_L + 8, W - PAD_R - 8)
    y = Scale(*_bounds([p[1] for p in points]), H - PAD_B, PAD_T)
    body = _frame(x, y, xlabel, ylabel)
    body.append('<polyline class="line" points="' + " ".join(
        f"{_num(x(a))},{_num(y(b))}" for a, b in points) + '"/>')
    for k, (a, b) in enumerate(points):
        tip = escape(labels[k]) if k < len(labels) else f"{a:g}: {b:g}"
        body.append(f'<circle class="point" data-x="{a:g}" data-y="{b:g}" '
                    f'cx="{_num(x(a))}" cy="{_num(y(b))}" r="3"><title>{tip}</title></circle>')
    return _svg(kind, body, title)


def bars(items: Sequence[tuple[str, float]], title: str, ylabel: str) -> str:
    """One `rect.bar` per (label, value): a market's prices per good."""
    if not items:
        return empty(title, "nothing to show")
    y = Scale(*_bounds([v for _, v in items], floor0=True), H - PAD_B, PAD_T)
    x = Scale(0, len(items), PAD_L, W - PAD_R)
    body = _frame(Scale(0, 0, PAD_L, PAD_L), y, "", ylabel)[:1]
    body += [f'<text x="{PAD_L - 6}" y="{_num(y(t))}" text-anchor="end" '
             f'dominant-baseline="middle">{_label(t, _spacing(_ticks(y.lo, y.hi)))}</text>'
             for t in _ticks(y.lo, y.hi)]
    width = (W - PAD_L - PAD_R) / len(items) * 0.7
    for k, (label, v) in enumerate(items):
        top, base = y(max(v, 0.0)), y(min(v, 0.0))
        cx = x(k + 0.5)
        body.append(f'<rect class="bar" data-label="{escape(label)}" data-value="{v:g}" '
                    f'x="{_num(cx - width / 2)}" y="{_num(top)}" width="{_num(width)}" '
                    f'height="{_num(max(1.0, base - top))}"><title>{escape(label)}: {v:g}'
                    f'</title></rect><text x="{_num(cx)}" y="{H - PAD_B + 16}" '
                    f'text-anchor="middle">{escape(label[:12])}</text>')
    return _svg("bars", body, title)


# --- a session's messages ---------------------------------------------------------------------

class Message(NamedTuple):
    at: float  # seconds since the session started
    src: str
    dst: str
    kind: str  # "start", "invite", "answer", "result", ...
    label: str


LANE_W, ROW_H, TOP = 120, 22, 46
MAX_LANES = 24  # participants drawn as lanes; the rest share one "others" lane


def sequence(lanes: Sequence[str], messages: Sequence[Message],
             title: str = "messages") -> str:
    """A sequence diagram, as JADE's Sniffer draws one: a lifeline per lane (the initiator,
    the daemon, the participants), one `line.msg` arrow per message in time order, each
    with its time since the start (data-kind, data-from, data-to, data-at). Past MAX_LANES
    participants, the rest share a lane named "others (N)"."""
    shown = list(lanes[:MAX_LANES + 2])
    rest = len(lanes) - len(shown)
    if rest > 0:
        shown.append(f"others ({rest})")
    col = {name: k for k, name in enumerate(shown)}
    other = len(shown) - 1

    def lane(name: str) -> int:
        return col.get(name, other)

    width = max(W, LANE_W * len(shown) + 40)
    height = TOP + ROW_H * (len(messages) + 1) + 10
    body = ['<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
            'markerHeight="7" orient="auto-start-reverse"><path d="M0,0L10,5L0,10z"/>'
            '</marker></defs>']
    for k, name in enumerate(shown):
        cx = 20 + LANE_W * k + LANE_W / 2
        body.append(f'<g class="lane" data-lane="{escape(name)}"><text x="{_num(cx)}" y="20" '
                    f'text-anchor="middle">{escape(name[:18])}</text><line x1="{_num(cx)}" '
                    f'y1="28" x2="{_num(cx)}" y2="{height - 6}"/></g>')
    for k, m in enumerate(messages):
        y = TOP + ROW_H * k + ROW_H / 2
        x1 = 20 + LANE_W * lane(m.src) + LANE_W / 2
        x2 = 20 + LANE_W * lane(m.dst) + LANE_W / 2
        if x1 == x2:  # to itself (or two grouped lanes): a short hook
            x2 = x1 + 30
        tx = min(x1, x2) + abs(x2 - x1) / 2
        body.append(f'<g class="message"><line class="msg {escape(m.kind)}" '
                    f'data-kind="{escape(m.kind)}" data-from="{escape(m.src)}" '
                    f'data-to="{escape(m.dst)}" data-at="{m.at:.6f}" x1="{_num(x1)}" '
                    f'y1="{_num(y)}" x2="{_num(x2)}" y2="{_num(y)}" marker-end="url(#arrow)">'
                    f'<title>{m.at * 1000:.3f} ms: {escape(m.src)} → {escape(m.dst)}: '
                    f'{escape(m.label)}</title></line><text x="{_num(tx)}" '
                    f'y="{_num(y - 4)}" text-anchor="middle">{escape(m.label[:28])}</text>'
                    f'<text class="at" x="4" y="{_num(y + 4)}">{m.at * 1000:.1f}</text></g>')
    return (f'<svg class="chart sequence" viewBox="0 0 {width} {height}" width="{width}" '
            f'height="{height}" role="img" aria-label="{escape(title)}" '
            f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>'
            f'{"".join(body)}</svg>')


def timeline(points: Sequence[tuple[float, int, str]], title: str = "history") -> str:
    """A variable's versions along wall-clock time: one `circle.version` per (time,
    version, label)."""
    if not points:
        return empty(title, "no history")
    x = Scale(*_bounds([p[0] for p in points]), PAD_L + 8, W - PAD_R - 8)
    y = Scale(*_bounds([float(p[1]) for p in points]), H - PAD_B, PAD_T)
    body = _frame(Scale(0.0, 0.0, PAD_L, PAD_L), y, "time", "version")[:1]
    body += [f'<text x="{PAD_L - 6}" y="{_num(y(t))}" text-anchor="end" '
             f'dominant-baseline="middle">{int(t)}</text>'
             for t in _ticks(y.lo, y.hi, whole=True) if t == int(t)]
    body.append('<polyline class="line" points="' + " ".join(
        f"{_num(x(t))},{_num(y(v))}" for t, v, _ in points) + '"/>')
    for t, v, label in points:
        body.append(f'<circle class="version" data-version="{v}" data-time="{t:.6f}" '
                    f'cx="{_num(x(t))}" cy="{_num(y(v))}" r="4"><title>v{v}: '
                    f'{escape(label)}</title></circle>')
    return _svg("timeline", body, title)


def spark(values: Sequence[float], title: str) -> str:
    """A small trend line (overview: rates over the last minute)."""
    w, h = 160, 36
    if len(values) < 2:
        return f'<svg class="spark" viewBox="0 0 {w} {h}"><title>{escape(title)}</title></svg>'
    hi = max(values) or 1.0
    step = w / (len(values) - 1)
    pts = " ".join(f"{_num(k * step)},{_num(h - 2 - v / hi * (h - 4))}"
                   for k, v in enumerate(values))
    return (f'<svg class="spark" viewBox="0 0 {w} {h}"><title>{escape(title)}</title>'
            f'<polyline points="{pts}"/></svg>')
