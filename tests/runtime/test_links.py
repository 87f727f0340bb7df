"""Emulated links (rate, latency, FIFO sharing, traces, dilation), stage plans and routes."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from orchestrator.network import parse_network
from profiler.adapters.base import EdgeInfo, PhaseInfo, UnitInfo
from profiler.errors import InputError
from runtime.links import EmulatedLink, EmulatedNetwork, load_trace, network_traces, parse_trace
from runtime.stages import (
    LinkSpec,
    NodeSpec,
    Segment,
    StagePlan,
    build_stage_plan,
    contiguous_segments,
    dilation_factor,
    links_from_network,
    route,
)


def test_a_message_costs_latency_plus_size_over_rate() -> None:
    link = EmulatedLink(8e6, 0.02)                     # 1 MB/s
    t0 = 100.0
    done, arrival = link.reserve(50_000, now=t0)
    assert done == pytest.approx(t0 + 0.05) and arrival == pytest.approx(t0 + 0.07)
    # a second message queues behind the first (FIFO), its latency overlaps nothing
    done2, arrival2 = link.reserve(10_000, now=t0 + 0.01)
    assert done2 == pytest.approx(t0 + 0.06) and arrival2 == pytest.approx(t0 + 0.08)
    # an idle link starts at once
    done3, _ = link.reserve(1_000, now=t0 + 1.0)
    assert done3 == pytest.approx(t0 + 1.001)


def test_dilation_stretches_rate_and_latency() -> None:
    link = EmulatedLink(8e6, 0.02, dilation=3.0)
    done, arrival = link.reserve(50_000, now=0.0)
    assert done == pytest.approx(0.15) and arrival == pytest.approx(0.21)
    with pytest.raises(ValueError):
        EmulatedLink(1e6, dilation=0.5)


def test_transmit_takes_the_emulated_time() -> None:
    link = EmulatedLink(8e6, 0.01)

    async def go() -> float:
        t0 = time.perf_counter()
        await asyncio.gather(link.transmit(20_000), link.transmit(20_000))
        return time.perf_counter() - t0

    took = asyncio.run(go())
    assert 0.05 - 0.001 <= took < 0.05 + 0.02       # two 20 ms messages back to back, then 10 ms latency


def test_trace_rate_follows_the_samples() -> None:
    # samples are the rate over the interval ENDING at their time: 0-1 s at 8 Mbit/s, 1-2 s at 0.8 Mbit/s
    tr = parse_trace([(0.0, 99.0), (1.0, 8.0), (2.0, 0.8)])
    assert tr.period == 2.0 and tr.rate_at(0.5) == 8e6 and tr.rate_at(1.5) == 0.8e6 and tr.rate_at(2.5) == 8e6
    assert tr.mean_bps() == pytest.approx(4.4e6)
    link = EmulatedLink(1.0, trace=tr)
    start = link._origin + 0.5
    # 0.5 s left at 1 MB/s carries 500 kB; 100 kB more take 1 s at 0.1 MB/s
    assert link.serialise_time(start, 500_000) == pytest.approx(0.5)
    assert link.serialise_time(start, 600_000) == pytest.approx(1.5)
    k3 = EmulatedLink(1.0, trace=tr, dilation=3.0)
    # wall 1.5 s is trace time 0.5 s: the same bytes take 3x the wall time
    assert k3.serialise_time(k3._origin + 1.5, 500_000) == pytest.approx(1.5)
    assert k3.serialise_time(k3._origin + 1.5, 600_000) == pytest.approx(4.5)


def test_trace_replay_can_start_inside_the_trace() -> None:
    tr = parse_trace([(0.0, 99.0), (1.0, 8.0), (2.0, 0.8)])        # 0-1 s at 8 Mbit/s, 1-2 s at 0.8
    late = EmulatedLink(1.0, trace=tr, trace_start_s=1.0, dilation=2.0)
    # at wall 0 the replay is 1 s into the trace: 100 kB at 0.1 MB/s take 1 s, stretched by K = 2
    assert late.serialise_time(late._origin, 100_000) == pytest.approx(2.0)
    assert EmulatedLink(1.0, trace=tr).serialise_time(0.0, 100_000) != pytest.approx(2.0)
    spec = LinkSpec("a", "b", 1e6, 0.0, False, ((0.0, 99.0), (1.0, 8.0)), 0.75)
    assert LinkSpec.__dataclass_fields__["trace_start_s"].default == 0.0
    net = parse_network({"format": "aiflow.network/v1", "source": "a", "nodes": [
        {"name": n, "hardware": "x", "mem_bytes": 1e9} for n in ("a", "b")], "links": [
        {"a": "a", "b": "b", "bandwidth_bps": 1e6, "trace": "t.tsv", "trace_start_s": 0.75}]})
    assert links_from_network(net, {"t.tsv": spec.trace}) == (spec,)
    with pytest.raises(InputError, match="trace_start_s"):
        parse_network(net.model_dump() | {"links": [net.links[0].model_dump() | {"trace_start_s": -1}]})


def test_trace_files(tmp_path: Path) -> None:
    f = tmp_path / "t.tsv"
    f.write_text("# a comment\n0\t1.0\n1\t2.0\n\n2\t4.0\n")
    assert load_trace(f).rate_bps == (2e6, 4e6)
    bad = tmp_path / "bad.tsv"
    bad.write_text("0\tfast\n")
    with pytest.raises(InputError, match="line 1"):
        load_trace(bad)
    for samples, msg in (([], "no samples"), ([(0, 0), (1, 0)], "every sample is 0"),
                         ([(1, 1), (1, 2)], "increase"), ([(0, -1)], "Mbit/s >= 0")):
        with pytest.raises(InputError, match=msg):
            parse_trace(samples)
    net = SimpleNamespace(links=[SimpleNamespace(trace="t.tsv"), SimpleNamespace(trace=None)])
    assert network_traces(net, tmp_path)["t.tsv"][1] == (1.0, 2.0)
    shipped = Path(__file__).resolve().parents[2] / "data" / "traces" / "norway-3g" / "norway_bus_1.tsv"
    if shipped.is_file():
        assert load_trace(shipped).mean_bps() > 0


def test_routes_match_the_planning_model() -> None:
    net = parse_network({"format": "aiflow.network/v1", "source": "p", "nodes": [
        {"name": n, "hardware": "x", "mem_bytes": 1e9} for n in ("p", "e", "c", "d")], "links": [
        {"a": "p", "b": "e", "bandwidth_bps": 1e7, "latency_s": 0.01},
        {"a": "e", "b": "c", "bandwidth_bps": 1e9, "latency_s": 0.02},
        {"a": "p", "b": "c", "bandwidth_bps": 1e6, "latency_s": 0.001},
        {"a": "c", "b": "d", "bandwidth_bps": 1e8, "latency_s": 0.0, "directed": True}]})
    nodes = tuple(NodeSpec(n.name) for n in net.nodes)
    links = tuple(LinkSpec(lk.a, lk.b, lk.bandwidth_bps, lk.latency_s, lk.directed) for lk in net.links)
    for nbytes in (10, 1e4, 1e6):
        for a in net.node_names:
            for b in net.node_names:
                try:
                    want = net.route(a, b, nbytes)
                except ValueError:
                    with pytest.raises(ValueError):
                        route(nodes, links, a, b, nbytes)
                    continue
                assert route(nodes, links, a, b, nbytes) == want


def test_a_multi_hop_message_pays_every_hop() -> None:
    nodes = (NodeSpec("a"), NodeSpec("b"), NodeSpec("c"))
    links = (LinkSpec("a", "b", 8e6, 0.005), LinkSpec("b", "c", 8e7, 0.01))
    net = EmulatedNetwork(nodes, links)
    spent = asyncio.run(net.carry("a", "c", 10_000))
    assert set(spent) == {"a->b", "b->c"}
    # never early; late only by the event loop's wake-up (generous bound: the test machine is shared)
    assert 0.015 - 1e-4 <= spent["a->b"] < 0.015 + 0.02
    assert 0.011 - 1e-4 <= spent["b->c"] < 0.011 + 0.02


def test_segments_and_stage_plan_round_trip() -> None:
    asg = ["A", "A", "B", "B", "A", "A", "C"]
    S = Segment
    assert contiguous_segments(asg, 0, 6) == (S("A", 0, 1), S("B", 2, 3), S("A", 4, 5), S("C", 6, 6))
    assert contiguous_segments(asg, 2, 4) == (S("B", 2, 3), S("A", 4, 4))
    units = [UnitInfo(f"u{i}", ("encode",) if i < 3 else ("prefill", "decode"), reads_edge=i in (4, 6))
             for i in range(7)]
    phases = [PhaseInfo("encode", 0, 2, 1, "source"), PhaseInfo("prefill", 3, 6, 1, "none"),
              PhaseInfo("decode", 3, 6, 5, "loop")]
    net = SimpleNamespace(nodes=[SimpleNamespace(name=n, hardware="h", slowdown=2.0, address=None) for n in "ABC"],
                          links=[SimpleNamespace(a="A", b="B", bandwidth_bps=1e6, latency_s=0.1, directed=False,
                                                 trace=None)], source="A", sink=None)
    sp = build_stage_plan(version=4, model="m", units=units, phases=phases, edges=[EdgeInfo(2, (4, 6))],
                          assignment=asg, network=net, emulate=True, dilation=2.5, compression="fp16")
    assert StagePlan.from_dict(sp.to_dict()) == sp
    assert sp.segment_at("decode", 4).node == "A" and sp.segment_at("decode", 4).first == 4
    assert sp.next_segment("encode", 1).node == "B" and sp.next_segment("decode", 6) is None
    assert sp.edge_readers(2) == ["A", "C"]
    assert sp.segments_of("A") == [("encode", S("A", 0, 1)), ("prefill", S("A", 4, 5)), ("decode", S("A", 4, 5))]
    assert sp.hosting_nodes() == ["A", "B", "C"] and sp.sink == "A"
    with pytest.raises(ValueError, match="assigns 2 units"):
        build_stage_plan(version=1, model="m", units=units, phases=phases, edges=[], assignment=["A", "B"],
                         network=net)
    with pytest.raises(ValueError, match="malformed"):
        StagePlan.from_dict({"version": 1})


def test_dilation_factor_lets_the_fastest_node_run_at_this_machines_speed() -> None:
    unit = SimpleNamespace(latency_s={"cpu": {"p": 0.010}, "gpu": {"p": 0.001}, "phone": {"p": 0.05}})
    profile = SimpleNamespace(units=[unit, unit], phases=[SimpleNamespace(name="p", first=0, last=1, repeat=3)])
    nodes = [SimpleNamespace(hardware="phone", slowdown=1.0), SimpleNamespace(hardware="gpu", slowdown=2.0)]
    k = dilation_factor(profile, SimpleNamespace(nodes=nodes), "cpu", headroom=1.0)
    assert k == pytest.approx(5.0)                    # gpu * slowdown 2 is 5x faster than this cpu
    assert dilation_factor(profile, SimpleNamespace(nodes=nodes[:1]), "cpu", headroom=1.0) == 1.0
    assert dilation_factor(profile, SimpleNamespace(nodes=nodes), "cpu") == pytest.approx(6.25)
    # one unit much faster on the gpu sets K, although the model as a whole is only 5x faster
    fast = SimpleNamespace(latency_s={"cpu": {"p": 0.010}, "gpu": {"p": 0.0001}})
    mixed = SimpleNamespace(units=[unit, fast], phases=profile.phases)
    assert dilation_factor(mixed, SimpleNamespace(nodes=nodes), "cpu", headroom=1.0) == pytest.approx(50.0)


def test_arrival_stamps_with_kernel_rates_count_latency_from_receipt() -> None:
    from runtime.links import arrival_stamp, stamped_arrival

    # emulated rates: the whole route is booked at send; the receiver waits for that moment
    assert arrival_stamp(10.5, 10.0, kernel_rate=False) == {"not_before": 10.5}
    assert stamped_arrival({"not_before": 10.5}, received_at=12.0) == 10.5
    # kernel rates: the bytes take their real time; the latency is added after they are in
    assert arrival_stamp(10.5, 10.0, kernel_rate=True) == {"delay_s": 0.5}
    assert stamped_arrival({"delay_s": 0.5}, received_at=12.0) == 12.5
    for bad in ({}, {"delay_s": "soon"}, {"not_before": float("nan")}, {"delay_s": True}):
        assert stamped_arrival(bad, received_at=1.0) is None
    kernel = EmulatedNetwork((NodeSpec("a"), NodeSpec("b")), (LinkSpec("a", "b", 8e6, 0.02, kernel_rate=True),))
    arrival, spent = kernel.schedule("a", "b", 1_000_000, now=5.0)
    assert kernel.kernel_rate and arrival == pytest.approx(5.02) and spent == {"a->b": pytest.approx(0.02)}


def test_a_rate_change_reaches_a_message_going_out() -> None:
    """The rate is read while a message goes out: cut 10-fold halfway, the second half takes 10x as long;
    a stall (no rate) holds the message until the link moves again. Booked at send (the old emulation),
    the message kept its first pace whatever happened to the link."""
    nodes = (NodeSpec("a"), NodeSpec("b"))
    fast, slow = LinkSpec("a", "b", 8e6, 0.0), LinkSpec("a", "b", 8e5, 0.0)     # 1 MB/s, 0.1 MB/s
    net = EmulatedNetwork(nodes, (fast,))

    async def cut_at(delay: float, *changes: tuple[float, LinkSpec]) -> float:
        t0 = time.perf_counter()
        go = asyncio.create_task(net.carry("a", "b", 400_000))          # 0.4 s at 1 MB/s
        for at, spec in ((delay, None), *changes):
            await asyncio.sleep(max(0.0, at - (time.perf_counter() - t0)))
            if spec is not None:
                assert net.retune(nodes, (spec,), 1.0) is net                  # the same links, retuned
        await go
        return time.perf_counter() - t0

    # 0.2 s at 1 MB/s carries 200 kB; the other 200 kB at 0.1 MB/s take 2 s: 2.2 s in all (not 0.4 s)
    took = asyncio.run(cut_at(0.0, (0.2, slow)))
    assert 1.6 < took < 3.5, took
    # a stall of 1.5 s in the middle (1 bit/s: nothing moves), then the link comes back: 0.4 + 1.5 s
    net = EmulatedNetwork(nodes, (fast,))
    took = asyncio.run(cut_at(0.0, (0.2, LinkSpec("a", "b", 1.0, 0.0)), (1.7, fast)))
    assert 1.7 < took < 3.0, took


def test_a_stalled_link_holds_a_message_until_its_caller_gives_up() -> None:
    link = EmulatedLink(1.0, 0.0)                         # 1 bit/s: 10 kB would take a day

    async def send() -> float:
        t0 = time.perf_counter()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(link.transmit(10_000), timeout=0.3)
        # the link is free again for the next message once the stalled one was given up
        link.retune(LinkSpec("a", "b", 8e6, 0.0), None)
        await asyncio.wait_for(link.transmit(10_000), timeout=5.0)
        return time.perf_counter() - t0

    assert asyncio.run(send()) < 5.0


def test_retune_rebuilds_when_the_links_are_not_the_same() -> None:
    nodes = (NodeSpec("a"), NodeSpec("b"))
    net = EmulatedNetwork(nodes, (LinkSpec("a", "b", 8e6, 0.0),))
    assert net.retune(nodes, (LinkSpec("a", "b", 8e6, 0.0),), 2.0) is not net              # another K
    assert net.retune(nodes, (LinkSpec("b", "a", 8e6, 0.0, True),), 1.0) is not net        # another link
