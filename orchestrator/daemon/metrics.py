"""What the daemon exports at /metrics (prometheus-client, one registry per daemon)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.latency = Histogram("aiflow_request_latency_seconds",
                                 "Request latency on the (emulated) network, per plan version", ["plan_version"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.requests = Counter("aiflow_requests", "Requests by outcome (ok, failed, retried, refused)", ["outcome"],
                                registry=r)
        self.solve_seconds = Histogram("aiflow_solve_seconds", "Wall time of one re-solve", registry=r,
                                       buckets=(0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30))
        self.solves = Counter("aiflow_solves", "Re-solves by solver status", ["status"], registry=r)
        self.decisions = Counter("aiflow_decisions", "Decisions on a candidate plan", ["applied"], registry=r)
        self.switches = Counter("aiflow_plan_switches", "Plan switches by outcome", ["outcome"], registry=r)
        self.switch_seconds = Histogram("aiflow_switch_seconds", "Wall time of a switch's prepare and commit",
                                        registry=r, buckets=(0.001, 0.01, 0.05, 0.1, 0.5, 1, 5))
        self.plan_version = Gauge("aiflow_plan_version", "The plan version in force", registry=r)
        self.link_bandwidth = Gauge("aiflow_link_bandwidth_bps", "Estimated link bandwidth (bit/s)", ["link"],
                                    registry=r)
        self.link_latency = Gauge("aiflow_link_latency_seconds", "Estimated one-way link latency", ["link"],
                                  registry=r)
        self.node_slowdown = Gauge("aiflow_node_slowdown", "Estimated node slowdown (1 = as profiled)", ["node"],
                                   registry=r)
        self.node_up = Gauge("aiflow_node_up", "1 when the node answers its health check", ["node"], registry=r)
        self.probe_seconds = Histogram("aiflow_probe_seconds", "Wall time of one probe round", registry=r,
                                       buckets=(0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10))
        self.restarts = Counter("aiflow_worker_restarts", "Local workers restarted after they died", ["node"],
                                registry=r)
        self.verifier_restarts = Counter("aiflow_verifier_restarts", "Verifiers (cooperative mode) restarted after "
                                         "they died", ["node"], registry=r)
        self.history_errors = Counter("aiflow_history_errors", "History writes that failed", registry=r)
        self.history_dropped = Counter("aiflow_history_dropped", "Buffered history records dropped (buffer full)",
                                       registry=r)
        self.job_errors = Counter("aiflow_job_errors", "Scheduled job runs that failed", ["job"], registry=r)

    def observe_snapshot(self, links: Mapping[str, Any], slowdown: Mapping[str, float],
                         nodes: Mapping[str, Any]) -> None:
        for key, est in links.items():
            self.link_bandwidth.labels(link=key).set(est.bandwidth_bps)
            self.link_latency.labels(link=key).set(est.latency_s)
        for name, s in slowdown.items():
            self.node_slowdown.labels(node=name).set(s)
        for name, st in nodes.items():
            self.node_up.labels(node=name).set(1 if st.state == "up" else 0)

    def render(self) -> bytes:
        return generate_latest(self.registry)
