"""orchestrator.daemon.emulation: changes the API makes to the emulated network, kept as overrides and
applied again to the declared network by a daemon that takes over after a crash."""

from __future__ import annotations

import pytest

from orchestrator.daemon.emulation import apply_overrides, no_overrides, note_link, note_node, with_link, with_node
from runtime.links import Emulation
from runtime.stages import LinkSpec, NodeSpec

DECLARED = Emulation(nodes=(NodeSpec("phone", "a"), NodeSpec("edge", "b"), NodeSpec("cloud", "c")),
                     links=(LinkSpec("phone", "edge", 20e6, 0.01, trace=((0.0, 5.0), (1.0, 2.0))),
                            LinkSpec("edge", "cloud", 1e9, 0.025)),
                     dilation=2.0)


def test_a_changed_link_and_node_come_back_on_the_declared_network() -> None:
    changes = no_overrides()
    now = with_link(DECLARED, "edge", "phone", 1e6, None)            # either direction; latency kept
    note_link(changes, now, "edge", "phone")
    now = with_node(now, "cloud", 3.0)
    note_node(changes, "cloud", 3.0)
    phone_edge = now.links[0]
    assert (phone_edge.bandwidth_bps, phone_edge.latency_s, phone_edge.trace) == (1e6, 0.01, None)  # trace stops
    restored, kept, skipped = apply_overrides(DECLARED, changes)
    assert restored == now and kept == changes and skipped == []
    assert restored.dilation == DECLARED.dilation and restored.links[1] == DECLARED.links[1]


def test_unknown_names_and_malformed_values_are_skipped_not_fatal() -> None:
    changes = {"links": {"edge~phone": {"a": "phone", "b": "edge", "bandwidth_bps": 2e6, "latency_s": 0.03},
                         "cloud~phone": {"a": "phone", "b": "cloud", "bandwidth_bps": 1e6, "latency_s": 0.0},
                         "bad": {"a": "phone", "b": "edge", "bandwidth_bps": float("nan"), "latency_s": 0.0},
                         "neg": {"a": "edge", "b": "cloud", "bandwidth_bps": -5, "latency_s": 0.0},
                         "short": {"a": "edge"}},
               "nodes": {"gone": {"slowdown": 2.0}, "edge": {"slowdown": "fast"}, "phone": {"slowdown": 0}}}
    restored, kept, skipped = apply_overrides(DECLARED, changes)
    assert list(kept["links"]) == ["edge~phone"] and kept["nodes"] == {}
    assert restored.links[0].bandwidth_bps == 2e6 and restored.links[1] == DECLARED.links[1]
    assert restored.nodes == DECLARED.nodes
    assert len(skipped) == 7 and any("no link between 'phone' and 'cloud'" in s for s in skipped)
    assert apply_overrides(DECLARED, None) == (DECLARED, no_overrides(), [])
    assert apply_overrides(DECLARED, ["x"])[2] == ["emulation: not an object"]


def test_unknown_link_or_node_is_a_key_error() -> None:
    with pytest.raises(KeyError, match="no link"):
        with_link(DECLARED, "phone", "cloud", 1e6, None)
    with pytest.raises(KeyError, match="no node"):
        with_node(DECLARED, "moon", 2.0)
