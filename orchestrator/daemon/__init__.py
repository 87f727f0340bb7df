"""The orchestrator daemon: a reconcile loop that keeps the plan optimal while the network moves.

- `settings`: every interval, threshold and bound, with defaults.
- `estimate`: link bandwidth/latency and node slowdown from samples (pure).
- `snapshot`: the network as measured now, an `aiflow.network/v1` value (pure).
- `decide`: whether a candidate plan should replace the plan in force (pure).
- `service`: the Daemon itself (workers, jobs, migration, requests), `api`: its HTTP API,
  `metrics`: what it exports to Prometheus.
"""
