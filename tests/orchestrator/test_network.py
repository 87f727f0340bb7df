"""NetworkState copies: fresh route caches, and with_link for what-if networks."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest

from orchestrator.network import NetworkState, load_network

NETWORK = Path(__file__).resolve().parents[2] / "examples" / "three-tier.network.yaml"
MB = 1_000_000


def _net() -> NetworkState:
    return load_network(NETWORK)


def _link(net: NetworkState, a: str, b: str):  # noqa: ANN202 - a Link
    return next(link for link in net.links if {link.a, link.b} == {a, b})


def test_model_copy_does_not_reuse_cached_routes() -> None:
    """Regression: a copy with other links used to answer from the original's route cache."""
    net = _net()
    before = net.transfer_time("phone", "edge", MB)          # fills the original's cache for 1 MB
    assert before == pytest.approx(0.010 + 8 * MB / 2e7)
    links = [link.model_copy(update={"bandwidth_bps": 2e8}) if {link.a, link.b} == {"phone", "edge"} else link
             for link in net.links]
    copy = net.model_copy(update={"links": links})
    assert copy.transfer_time("phone", "edge", MB) == pytest.approx(0.010 + 8 * MB / 2e8)
    assert copy.transfer_time("phone", "edge", MB) != before
    assert net.transfer_time("phone", "edge", MB) == before   # the original is untouched
    # the cheapest path is cached too: a slow phone-edge link sends phone -> cloud direct in the copy only
    assert net.route("phone", "cloud", MB) == [("phone", "edge"), ("edge", "cloud")]
    slow = net.model_copy(update={"links": [link.model_copy(update={"bandwidth_bps": 1e5})
                                            if {link.a, link.b} == {"phone", "edge"} else link for link in net.links]})
    assert slow.route("phone", "cloud", MB) == [("phone", "cloud")]
    deep = net.model_copy(deep=True)
    assert deep.transfer_time("phone", "edge", MB) == before


def test_with_link_changes_the_link_in_either_order() -> None:
    net = _net()
    net.transfer_time("edge", "cloud", MB)
    for a, b in (("edge", "cloud"), ("cloud", "edge")):
        changed = net.with_link(a, b, bandwidth_bps=5e6, latency_s=0.1)
        link = _link(changed, "edge", "cloud")
        assert (link.a, link.b, link.bandwidth_bps, link.latency_s) == ("edge", "cloud", 5e6, 0.1)
        assert changed.transfer_time("edge", "cloud", MB) == pytest.approx(0.1 + 8 * MB / 5e6)
        # the other links and the original stay as they were
        assert _link(changed, "phone", "edge") == _link(net, "phone", "edge")
        assert _link(net, "edge", "cloud").bandwidth_bps == 1e8
        assert net.transfer_time("edge", "cloud", MB) == pytest.approx(0.025 + 8 * MB / 1e8)


def test_with_link_validates_and_needs_an_existing_link() -> None:
    net = _net()
    with pytest.raises(pydantic.ValidationError, match="bandwidth_bps"):
        net.with_link("phone", "edge", bandwidth_bps=-1.0)
    with pytest.raises(pydantic.ValidationError):
        net.with_link("phone", "edge", latency_s=-0.5)
    only_two = NetworkState.model_validate(net.model_dump() | {"links": [net.links[0].model_dump()]})
    with pytest.raises(KeyError, match="edge and cloud"):
        only_two.with_link("edge", "cloud", bandwidth_bps=1e9)
    with pytest.raises(KeyError):
        net.with_link("phone", "nowhere", bandwidth_bps=1e9)


def test_with_constraints_changes_only_the_named_constraint() -> None:
    net = _net().with_constraints(pins={"vision.embed": ["phone"]})
    private = net.with_constraints(raw_input_stays_on_source=True)
    assert private.constraints.raw_input_stays_on_source and not net.constraints.raw_input_stays_on_source
    assert private.constraints.pins == {"vision.embed": ["phone"]} and private.links == net.links
    with pytest.raises(pydantic.ValidationError):
        net.with_constraints(pins={"vision.embed": ["moon"]})


def test_with_node_changes_one_node_and_validates() -> None:
    net = _net()
    changed = net.with_node("phone", mem_bytes=16e6)
    assert changed.node("phone").mem_bytes == 16e6
    assert net.node("phone").mem_bytes != 16e6                       # the original stays as it was
    assert [n.model_dump() for n in changed.nodes if n.name != "phone"] == \
        [n.model_dump() for n in net.nodes if n.name != "phone"]
    with pytest.raises(pydantic.ValidationError):
        net.with_node("phone", mem_bytes=-1.0)
    with pytest.raises(KeyError, match="nowhere"):
        net.with_node("nowhere", mem_bytes=1e9)
