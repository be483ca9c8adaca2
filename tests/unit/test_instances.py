"""The CATS-style instance generator (mabeam_auctions.instances): deterministic per seed,
exact sizes, valid CATS text that the combinatorial auction decides (branch and bound and
HiGHS agreeing), each distribution's structure, and the CLI's errors."""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
from collections import defaultdict
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from mabeam_auctions.cats import parse_cats
from mabeam_auctions.combinatorial import Combinatorial
from mabeam_auctions.instances import DISTRIBUTIONS, generate, generate_input, layout, main
from mabeam_auctions.wdp import milp_available

XOR_DISTS = ("arbitrary", "regions", "paths", "matching", "scheduling")


def parsed_lines(text: str) -> tuple[dict[str, int], list[tuple[int, float, list[int]]]]:
    """Header and (id, price, goods) per bid, read independently of parse_cats."""
    header: dict[str, int] = {}
    bids = []
    for line in text.splitlines():
        w = line.split()
        if not w or w[0].startswith("%"):
            continue
        if w[0] in ("goods", "bids", "dummy"):
            header[w[0]] = int(w[1])
            continue
        assert w[-1] == "#"
        price = w[1]
        assert len(price.split(".")[-1]) == 2, line  # 2 decimals
        bids.append((int(w[0]), float(price), [int(g) for g in w[2:-1]]))
    return header, bids


def check_valid(text: str, goods: int, n_bids: int) -> list[tuple[int, float, list[int]]]:
    header, bids = parsed_lines(text)
    assert header["goods"] == goods and header["bids"] == n_bids == len(bids)
    assert [b[0] for b in bids] == list(range(n_bids))
    uses: dict[int, int] = defaultdict(int)
    for _, price, gs in bids:
        assert price > 0
        assert len(set(gs)) == len(gs)
        real = [g for g in gs if g < goods]
        dummies = [g for g in gs if g >= goods]
        assert real and len(dummies) <= 1
        assert all(0 <= g < goods + header["dummy"] for g in gs)
        for d in dummies:
            uses[d] += 1
    # every dummy good is used, and by at least two bids (one XOR bidder's)
    assert sorted(uses) == list(range(goods, goods + header["dummy"]))
    assert all(n >= 2 for n in uses.values())
    inputs = parse_cats(text)
    assert sum(len(r["value"]["bids"]) for r in inputs["responses"]) == n_bids
    return bids


@pytest.mark.parametrize("dist", DISTRIBUTIONS)
def test_deterministic_exact_and_valid(dist: str) -> None:
    a = generate(dist, 12, 40, 3)
    assert a == generate(dist, 12, 40, 3)
    assert a != generate(dist, 12, 40, 4)
    check_valid(a, 12, 40)
    assert a.startswith("% ")  # the comment line says what made it


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(DISTRIBUTIONS), st.integers(8, 24), st.integers(1, 60),
       st.integers(0, 2**32))
def test_any_small_instance_is_valid(dist: str, goods: int, n_bids: int, seed: int) -> None:
    # L3 has one bid per 3-good set at most (and says so: test_l3_refuses_more_bids...)
    assume(dist != "L3" or n_bids <= math.comb(goods, 3))
    check_valid(generate(dist, goods, n_bids, seed), goods, n_bids)


@pytest.mark.skipif(not milp_available(), reason="scipy not installed")
@pytest.mark.parametrize("dist", DISTRIBUTIONS)
def test_combinatorial_decides_and_solvers_agree(dist: str) -> None:
    proto = Combinatorial()
    for seed in range(2):
        inputs: dict[str, Any] = generate_input(dist, 10, 30, seed)
        results = {}
        for solver in ("bnb", "milp"):
            inputs["params"] = {**inputs["params"], "solver": solver, "time_limit": 20}
            results[solver] = proto.decide(inputs)
        bnb, milp = results["bnb"], results["milp"]
        assert bnb["optimal"] and milp["optimal"]
        assert bnb["bids"] == milp["bids"] == 30
        assert bnb["surplus"] == pytest.approx(milp["surplus"], abs=0.011)
        assert bnb["surplus"] > 0 and bnb["winners"]


def bidders_of(text: str, goods: int) -> dict[Any, list[tuple[float, list[int]]]]:
    """Bids grouped by bidder (the dummy good, or the bid's own id), real goods only."""
    out: dict[Any, list[tuple[float, list[int]]]] = defaultdict(list)
    for bid_id, price, gs in parsed_lines(text)[1]:
        dummy = [g for g in gs if g >= goods]
        out[dummy[0] if dummy else ("own", bid_id)].append(
            (price, sorted(g for g in gs if g < goods)))
    return out


def connected(nodes: set[int], adj: dict[int, set[int]]) -> bool:
    start = next(iter(nodes))
    seen, todo = {start}, [start]
    while todo:
        for v in adj[todo.pop()] & nodes:
            if v not in seen:
                seen.add(v)
                todo.append(v)
    return seen == nodes


@pytest.mark.parametrize("seed", range(3))
def test_paths_bids_are_simple_paths(seed: int) -> None:
    goods = 20
    text = generate("paths", goods, 60, seed)
    roads = layout("paths", goods, 60, seed)
    assert len(roads) == goods and all(len(ends) == 2 for ends in roads.values())
    n_bidders_with_choice = 0
    for bids in bidders_of(text, goods).values():
        ends_of_bidder = set()
        for _, gs in bids:
            degree: dict[int, int] = defaultdict(int)
            for g in gs:
                for city in roads[g]:
                    degree[city] += 1
            ends = frozenset(c for c, k in degree.items() if k == 1)
            # a simple path: two ends of degree 1, every other city degree 2, connected
            assert len(ends) == 2 and all(k in (1, 2) for k in degree.values())
            city_adj: dict[int, set[int]] = defaultdict(set)
            for g in gs:
                a, b = sorted(roads[g])
                city_adj[a].add(b)
                city_adj[b].add(a)
            assert connected(set(degree), city_adj)
            ends_of_bidder.add(ends)
        assert len(ends_of_bidder) == 1  # all of a bidder's paths join the same two cities
        n_bidders_with_choice += len(bids) > 1
    assert n_bidders_with_choice > 0


def test_regions_bundles_are_connected_without_jumps() -> None:
    goods, n = 25, 80
    kw = {"jump_prob": 0.0, "remove_neighbor": 0.0}  # a connected map, no jumps
    for seed in range(3):
        text = generate("regions", goods, n, seed, **kw)
        adj = layout("regions", goods, n, seed, **kw)
        bids = check_valid(text, goods, n)
        for _, _, gs in bids:
            assert connected({g for g in gs if g < goods}, adj)
        # the grid: 5 x 5, every horizontal and vertical neighbour joined
        assert {1, 5} <= adj[0] and {1, 3, 7} <= adj[2]
    # with the default jump probability some bundle eventually jumps (not all connected)
    text = generate("regions", 100, 500, 0)
    adj = layout("regions", 100, 500, 0)
    assert not all(connected({g for g in gs if g < 100}, adj)
                   for _, _, gs in parsed_lines(text)[1])


def test_scheduling_bids_are_contiguous_intervals_of_one_length() -> None:
    goods = 16
    for seed in range(4):
        for bids in bidders_of(generate("scheduling", goods, 60, seed), goods).values():
            lengths = {len(gs) for _, gs in bids}
            assert len(lengths) == 1  # one job, one length
            for _, gs in bids:
                assert gs == list(range(gs[0], gs[0] + len(gs)))
            # later deadlines are worth no more (d1 / d with d >= d1)
            prices = [price for _, price in sorted((gs[-1], price) for price, gs in bids)]
            assert all(a >= b for a, b in itertools.pairwise(prices))


def test_matching_bids_take_off_and_land() -> None:
    goods = 40  # 10 time slots at 4 airports
    for seed in range(4):
        for bids in bidders_of(generate("matching", goods, 60, seed), goods).values():
            routes = set()
            for _, gs in bids:
                assert len(gs) == 2
                a, b = gs
                routes.add(frozenset((a % 4, b % 4)))
                assert a % 4 != b % 4 and {a % 4, b % 4} != {2, 3}  # no JFK-LGA flights
            assert len(routes) == 1  # one flight per bidder


def test_legacy_sizes() -> None:
    for _, _, gs in parsed_lines(generate("L3", 20, 100, 1))[1]:
        assert len(gs) == 3
    sizes = [len(gs) for _, _, gs in parsed_lines(generate("L2", 20, 100, 1))[1]]
    assert min(sizes) >= 1 and max(sizes) <= 20 and len(set(sizes)) > 5
    for price, gs in [(p, g) for _, p, g in parsed_lines(generate("L2", 20, 100, 1))[1]]:
        assert price <= 1000 * len(gs)
    # legacy bids are single bids: no dummies
    assert parsed_lines(generate("L2", 20, 100, 1))[0]["dummy"] == 0


@pytest.mark.parametrize("dist", XOR_DISTS)
def test_xor_bidders_share_a_dummy_good(dist: str) -> None:
    goods = 20
    text = generate(dist, goods, 100, 5)
    header, _ = parsed_lines(text)
    assert header["dummy"] > 0
    xor = [b for who, b in bidders_of(text, goods).items() if not isinstance(who, tuple)]
    assert xor and all(len(b) >= 2 for b in xor)
    # parse_cats makes one bidder of each dummy good
    agents = {r["agent"] for r in parse_cats(text)["responses"]}
    assert sum(a.startswith("d") for a in agents) == header["dummy"]


def test_cli_prints_cats_or_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["regions", "--goods", "10", "--bids", "20", "--seed", "7"]) == 0
    text = capsys.readouterr().out
    assert text == generate("regions", 10, 20, 7)
    assert main(["l3", "--goods", "10", "--bids", "20", "--seed", "7", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == parse_cats(generate("L3", 10, 20, 7))


@pytest.mark.parametrize("argv", [
    ["nonsense"], ["regions", "--goods", "x"], ["regions", "--goods", "0"],
    ["paths", "--goods", "2"], ["matching", "--goods", "7"], ["L2", "--bids", "0"],
    ["L2", "--seed", "1.5"], [], ["L2", "--frobnicate"], ["L3", "--goods", "8", "--bids", "57"]])
def test_cli_errors_exit_2_with_one_line(argv: list[str],
                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err.count("\n") == 1 and out.err.startswith("instances: ")


def test_cli_as_a_module() -> None:
    ok = subprocess.run([sys.executable, "-m", "mabeam_auctions.instances", "L3", "--goods",
                         "5", "--bids", "4"], capture_output=True, text=True, check=False)
    assert ok.returncode == 0 and ok.stdout == generate("L3", 5, 4, 0)
    bad = subprocess.run([sys.executable, "-m", "mabeam_auctions.instances", "L9"],
                         capture_output=True, text=True, check=False)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "unknown distribution" in bad.stderr


def test_l3_refuses_more_bids_than_3_good_sets() -> None:
    with pytest.raises(ValueError, match="L3 on 8 goods has at most 56 bids"):
        generate("L3", 8, 57, 0)
    check_valid(generate("L3", 8, 56, 0), 8, 56)
