"""The history store's tables as SQLAlchemy 2 declarative models.

These classes describe the schema as the code sees it; the schema in a database is made only by the
Alembic revisions in `migrations/versions/` (a test checks that the two agree). Types are chosen to
work on SQLite and PostgreSQL alike: JSON documents in `sqlalchemy.JSON`, timestamps stored in UTC
and always returned timezone-aware, integer autoincrement ids.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Explicit constraint names, so later migrations can drop or alter them by name (SQLite batch mode
# needs names too). The migrations use the same names.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and read back timezone-aware (SQLite keeps no zone of its own)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: the history store keeps timezone-aware UTC times")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON, list[Any]: JSON}


# -- revision 0001: what the profiler stores ----------------------------------------------------


class HardwareClass(Base):
    __tablename__ = "hardware_classes"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    # CPU model, cores, torch threads, CUDA device: what the profiler saw (empty when not known).
    fingerprint: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Model(Base):
    __tablename__ = "models"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(300), unique=True)
    family: Mapped[str | None] = mapped_column(String(100))
    # Where the weights came from ("random-init", a file, a checkpoint digest), as the profile says.
    weights: Mapped[str | None] = mapped_column(String(1000))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ProfileRow(Base):
    __tablename__ = "profiles"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), index=True)
    format: Mapped[str] = mapped_column(String(50))
    # The whole `aiflow.profile/v1` document: the source of truth for get_profile.
    document: Mapped[dict[str, Any]]
    input_spec: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # sha256 of the canonical document: storing the same profile twice gives one row.
    digest: Mapped[str] = mapped_column(String(64), index=True)
    n_units: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class ProfileHardware(Base):
    """Which hardware classes a profile has latencies for."""

    __tablename__ = "profile_hardware"
    profile_id: Mapped[int] = mapped_column(ForeignKey("profiles.id", ondelete="CASCADE"), primary_key=True)
    hardware_class_id: Mapped[int] = mapped_column(ForeignKey("hardware_classes.id"), primary_key=True)


class ProfileUnit(Base):
    """One unit of a stored profile, as a row, so costs can be queried with SQL."""

    __tablename__ = "profile_units"
    __table_args__ = (UniqueConstraint("profile_id", "unit_index"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    profile_id: Mapped[int] = mapped_column(ForeignKey("profiles.id", ondelete="CASCADE"))
    unit_index: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(300))
    param_bytes: Mapped[int] = mapped_column(BigInteger)
    mem_bytes: Mapped[int] = mapped_column(BigInteger)
    flops: Mapped[dict[str, Any]] = mapped_column(default=dict)
    out_bytes: Mapped[dict[str, Any]] = mapped_column(default=dict)
    latency_s: Mapped[dict[str, Any]] = mapped_column(default=dict)


# -- revision 0002: what the planner, the runtime and the daemon record -------------------------


class NetworkRow(Base):
    __tablename__ = "networks"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    # Where the snapshot came from: a file name, "probe", "daemon" (free text, may be empty).
    origin: Mapped[str | None] = mapped_column(String(1000))
    source_node: Mapped[str] = mapped_column(String(200))
    # The whole `aiflow.network/v1` document.
    document: Mapped[dict[str, Any]]
    digest: Mapped[str] = mapped_column(String(64), index=True)
    n_nodes: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class PlanRow(Base):
    """One solve: the plan a solver or baseline produced, with the inputs it was solved from."""

    __tablename__ = "plans"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), index=True)
    profile_id: Mapped[int | None] = mapped_column(ForeignKey("profiles.id", ondelete="SET NULL"), index=True)
    network_id: Mapped[int | None] = mapped_column(ForeignKey("networks.id", ondelete="SET NULL"), index=True)
    objective: Mapped[str] = mapped_column(String(50))
    solver: Mapped[str] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(50))
    predicted_latency_s: Mapped[float] = mapped_column(Float)
    solve_time_s: Mapped[float] = mapped_column(Float)
    gap: Mapped[float | None] = mapped_column(Float)
    bottleneck_s: Mapped[float | None] = mapped_column(Float)
    # "split" or "cooperative" (a draft proposes k tokens per round, the target verifies); k for cooperative plans
    mode: Mapped[str] = mapped_column(String(20), default="split", server_default="split")
    k: Mapped[int | None] = mapped_column(Integer)
    # The whole `aiflow.plan/v1` document.
    document: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class RunRow(Base):
    """One executed request: what came out, how long it took, and what the plan predicted."""

    __tablename__ = "runs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    plan_id: Mapped[int | None] = mapped_column(ForeignKey("plans.id", ondelete="SET NULL"), index=True)
    model_id: Mapped[int | None] = mapped_column(ForeignKey("models.id"), index=True)
    strategy: Mapped[str] = mapped_column(String(100))
    output: Mapped[str] = mapped_column(Text)
    measured_s: Mapped[float] = mapped_column(Float)
    predicted_s: Mapped[float | None] = mapped_column(Float)
    breakdown: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    # The daemon's plan version the request ran on (revision 0003).
    plan_version: Mapped[int | None] = mapped_column(Integer)
    # revision 0004: `history requests --plan V` reads one version over a time range
    __table_args__ = (Index("ix_runs_plan_version_created_at", "plan_version", "created_at"),)


class ProbeRow(Base):
    """One measurement of a link: bandwidth, latency or both."""

    __tablename__ = "probes"
    __table_args__ = (Index("ix_probes_link_measured_at", "link", "measured_at"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    link: Mapped[str] = mapped_column(String(300))
    bandwidth_bps: Mapped[float | None] = mapped_column(Float)
    latency_s: Mapped[float | None] = mapped_column(Float)
    # revision 0004 indexes it alone too: time-range queries over every link, and the retention roll-up
    measured_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    # revision 0003: "estimate" (the daemon's estimate from samples), "active", "passive"; samples behind it
    kind: Mapped[str | None] = mapped_column(String(50))
    samples: Mapped[int | None] = mapped_column(Integer)


class PlanApplication(Base):
    """A plan put into service, and the one it replaced."""

    __tablename__ = "plan_applications"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    plan_id: Mapped[int] = mapped_column(ForeignKey("plans.id"), index=True)
    previous_plan_id: Mapped[int | None] = mapped_column(ForeignKey("plans.id"))
    applied_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    # revision 0003: the daemon's plan version, the decision behind it, and when the switch finished
    # (revision 0004 indexes version and decision_id: `--plan V` and the solves -> applied join)
    version: Mapped[int | None] = mapped_column(Integer, index=True)
    decision_id: Mapped[int | None] = mapped_column(ForeignKey("decisions.id"), index=True)
    finished_at: Mapped[datetime | None] = mapped_column()
    outcome: Mapped[str | None] = mapped_column(String(200))


# -- revision 0003: what the daemon decides and measures ----------------------------------------


class DecisionRow(Base):
    """A candidate plan weighed against the plan in force: applied or not, and why."""

    __tablename__ = "decisions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    # revision 0004 indexes it: `history solves` joins each solve to its decision
    candidate_plan_id: Mapped[int] = mapped_column(ForeignKey("plans.id"), index=True)
    current_plan_id: Mapped[int | None] = mapped_column(ForeignKey("plans.id"))
    network_id: Mapped[int | None] = mapped_column(ForeignKey("networks.id"))
    trigger: Mapped[str] = mapped_column(String(100))        # scheduled, node-down, node-up, manual, start
    applied: Mapped[bool] = mapped_column(Boolean)
    reason: Mapped[str] = mapped_column(Text)
    current_s: Mapped[float | None] = mapped_column(Float)   # None: no plan in force, or it cannot run
    candidate_s: Mapped[float] = mapped_column(Float)
    gain_s: Mapped[float | None] = mapped_column(Float)
    migration_s: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class NodeSample(Base):
    """A node's state (up, down) and estimated slowdown at one probe."""

    __tablename__ = "node_samples"
    __table_args__ = (Index("ix_node_samples_node_measured_at", "node", "measured_at"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    node: Mapped[str] = mapped_column(String(200))
    state: Mapped[str] = mapped_column(String(50))
    slowdown: Mapped[float | None] = mapped_column(Float)
    measured_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)  # index: revision 0004


# -- revision 0004: hourly roll-ups that replace raw rows older than the retention period -------
# One row per hour and key; the percentiles are exact for that hour (computed from the raw rows before
# they were deleted). Queries over windows longer than an hour combine them (see store/rollup.py).


class ProbeHour(Base):
    __tablename__ = "probe_hours"
    __table_args__ = (UniqueConstraint("link", "hour"), Index("ix_probe_hours_hour", "hour"))
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    link: Mapped[str] = mapped_column(String(300))
    hour: Mapped[datetime] = mapped_column()
    samples: Mapped[int] = mapped_column(Integer)
    bandwidth_samples: Mapped[int] = mapped_column(Integer)
    bandwidth_mean_bps: Mapped[float | None] = mapped_column(Float)
    bandwidth_p10_bps: Mapped[float | None] = mapped_column(Float)
    bandwidth_p50_bps: Mapped[float | None] = mapped_column(Float)
    bandwidth_p90_bps: Mapped[float | None] = mapped_column(Float)
    latency_samples: Mapped[int] = mapped_column(Integer)
    latency_mean_s: Mapped[float | None] = mapped_column(Float)
    latency_p50_s: Mapped[float | None] = mapped_column(Float)
    latency_p90_s: Mapped[float | None] = mapped_column(Float)


class NodeSampleHour(Base):
    __tablename__ = "node_sample_hours"
    __table_args__ = (UniqueConstraint("node", "hour"), Index("ix_node_sample_hours_hour", "hour"))
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    node: Mapped[str] = mapped_column(String(200))
    hour: Mapped[datetime] = mapped_column()
    samples: Mapped[int] = mapped_column(Integer)
    down_samples: Mapped[int] = mapped_column(Integer)
    slowdown_samples: Mapped[int] = mapped_column(Integer)
    slowdown_p50: Mapped[float | None] = mapped_column(Float)
    slowdown_p90: Mapped[float | None] = mapped_column(Float)


class RunHour(Base):
    """Requests of one hour, one plan (and version), one model and one strategy."""

    __tablename__ = "run_hours"
    __table_args__ = (Index("ix_run_hours_hour", "hour"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    hour: Mapped[datetime] = mapped_column()
    model_id: Mapped[int | None] = mapped_column(ForeignKey("models.id"))
    plan_id: Mapped[int | None] = mapped_column(ForeignKey("plans.id", ondelete="SET NULL"))
    plan_version: Mapped[int | None] = mapped_column(Integer)
    strategy: Mapped[str] = mapped_column(String(100))
    requests: Mapped[int] = mapped_column(Integer)
    measured_sum_s: Mapped[float] = mapped_column(Float)
    p50_s: Mapped[float] = mapped_column(Float)
    p90_s: Mapped[float] = mapped_column(Float)
    p99_s: Mapped[float] = mapped_column(Float)
    ratio_samples: Mapped[int] = mapped_column(Integer)
    ratio_p50: Mapped[float | None] = mapped_column(Float)
    first_at: Mapped[datetime] = mapped_column()
    last_at: Mapped[datetime] = mapped_column()


# -- revision 0005: what a daemon resumes from after a crash ---------------------------------------


class DaemonState(Base):
    """One daemon run: its settings, its network (joined nodes included), the plan in force and its version.
    `stopped_at` is set by a clean stop; a row without it is a daemon that died, which the next one resumes."""

    __tablename__ = "daemon_states"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model: Mapped[str] = mapped_column(String(300), index=True)
    settings: Mapped[dict[str, Any]]
    network: Mapped[dict[str, Any]]
    plan_id: Mapped[int | None] = mapped_column(ForeignKey("plans.id"))
    version: Mapped[int | None] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    stopped_at: Mapped[datetime | None] = mapped_column()
    # revision 0008: the local workers it started ({"secrets_key": ..., "nodes": {name: record}}), no token
    workers: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # revision 0009: changes made to its emulated network through the API (orchestrator.daemon.emulation)
    emulation: Mapped[dict[str, Any] | None] = mapped_column(JSON)


# -- revision 0006: how far each raw table is summarised (store/coverage.py) --------------------------------
class SummaryMark(Base):
    """Every raw row of `raw_table` measured before `summarised_before` with id <= `last_id` is in its hourly
    summary table; raw rows before `raw_deleted_before` were deleted (retention)."""

    __tablename__ = "summary_marks"
    raw_table: Mapped[str] = mapped_column(String(50), primary_key=True)
    summarised_before: Mapped[datetime | None] = mapped_column()
    last_id: Mapped[int | None] = mapped_column(Integer)
    raw_deleted_before: Mapped[datetime | None] = mapped_column()
