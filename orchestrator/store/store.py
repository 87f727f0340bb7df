"""The Store: every profile, network snapshot, solve, run, probe and plan change, kept as rows.

Documents (profiles, networks, plans) are stored whole, as their public JSON format, so what comes
back is equal to what went in; the columns beside them (units, costs, solver status) are there for
SQL queries. Storing an identical profile or network twice gives the existing row's id.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from pydantic import BaseModel
from sqlalchemy import Engine, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.network import NetworkState, parse_network
from orchestrator.plan import Plan, parse_plan
from orchestrator.store.engine import ensure_schema, make_engine
from orchestrator.store.tables import (
    DaemonState,
    DecisionRow,
    HardwareClass,
    Model,
    NetworkRow,
    NodeSample,
    PlanApplication,
    PlanRow,
    ProbeRow,
    ProfileHardware,
    ProfileRow,
    ProfileUnit,
    RunRow,
)
from profiler.errors import InputError
from profiler.profile import Profile, parse_profile

R = TypeVar("R")


@dataclass(frozen=True)
class ProfileSummary:
    id: int
    model: str
    hardware: tuple[str, ...]
    units: int
    created_at: datetime
    weights: str | None = None


def _document(doc: BaseModel, what: str) -> dict[str, Any]:
    # The same JSON the file format writes (aliases such as an edge's "from"), extra fields kept.
    document = doc.model_dump(mode="json", by_alias=True)
    _check_finite(document, what)
    return document


def _check_finite(value: Any, where: str) -> None:
    """JSON (and PostgreSQL's json type) has no NaN or infinity: refuse them, naming the field."""
    if isinstance(value, float) and not math.isfinite(value):
        raise InputError(f"{where}: {value} is not a finite number; the history store keeps only finite values")
    if isinstance(value, dict):
        for k, v in value.items():
            _check_finite(v, f"{where}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_finite(v, f"{where}[{i}]")


def _digest(document: dict[str, Any]) -> str:
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class Store:
    """The history database. Open with `Store.open(url)`; close (or use `with`) when done."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @classmethod
    def open(cls, url: str | None = None) -> Store:
        """Connect (None: $AIFLOW_DATABASE_URL, else the per-user SQLite file) and migrate up to head."""
        engine = make_engine(url)
        try:
            ensure_schema(engine)
        except BaseException:
            engine.dispose()
            raise
        return cls(engine)

    @property
    def url(self) -> str:
        """The database URL, password masked."""
        return self.engine.url.render_as_string(hide_password=True)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @contextmanager
    def _session(self) -> Iterator[Session]:
        with self._sessions() as session, session.begin():
            yield session

    # -- profiles --------------------------------------------------------------------------------

    def save_profile(self, profile: Profile) -> int:
        """Store a profile with its model, hardware classes and unit rows; returns its id."""
        document = _document(profile, "profile")
        digest = _digest(document)
        extra = profile.model_extra or {}
        with self._session() as s:
            existing = s.scalar(select(ProfileRow.id).where(ProfileRow.digest == digest).order_by(ProfileRow.id))
            if existing is not None:
                return existing
            model = self._model(s, profile.model, family=_str_or_none(extra.get("family")), weights=profile.weights)
            row = ProfileRow(model_id=model.id, format=profile.format, document=document,
                             input_spec=_plain(dict(profile.input)), digest=digest, n_units=len(profile.units))
            s.add(row)
            s.flush()
            for hw in _profile_hardware_names(profile):
                hc = self._hardware(s, hw, fingerprint=profile.hardware.get(hw) or {})
                s.add(ProfileHardware(profile_id=row.id, hardware_class_id=hc.id))
            for i, unit in enumerate(profile.units):
                s.add(ProfileUnit(profile_id=row.id, unit_index=i, name=unit.name, param_bytes=unit.param_bytes,
                                  mem_bytes=unit.mem_bytes, flops=dict(unit.flops), out_bytes=dict(unit.out_bytes),
                                  latency_s={hw: dict(v) for hw, v in unit.latency_s.items()}))
            return row.id

    def get_profile(self, profile_id: int) -> Profile:
        with self._session() as s:
            row = s.get(ProfileRow, profile_id)
            if row is None:
                raise InputError(f"profile {profile_id}: no such profile in {self.url}")
            return parse_profile(row.document, source=f"stored profile {profile_id}")

    def list_profiles(self, *, model: str | None = None, limit: int | None = None) -> list[ProfileSummary]:
        """Stored profiles, newest first."""
        with self._session() as s:
            q = (select(ProfileRow.id, Model.name, Model.weights, ProfileRow.n_units, ProfileRow.created_at)
                 .join(Model, Model.id == ProfileRow.model_id).order_by(ProfileRow.id.desc()))
            if model is not None:
                q = q.where(Model.name == model)
            if limit is not None:
                q = q.limit(limit)
            rows = s.execute(q).all()
            hardware = self._hardware_names(s, [r.id for r in rows])
            return [ProfileSummary(id=r.id, model=r.name, hardware=tuple(hardware.get(r.id, ())), units=r.n_units,
                                   created_at=r.created_at, weights=r.weights) for r in rows]

    def latest_profile_id(self, model: str, *, hardware: str | None = None) -> int | None:
        """The newest stored profile of `model` (with latencies for `hardware` when given), or None."""
        with self._session() as s:
            q = (select(ProfileRow.id).join(Model, Model.id == ProfileRow.model_id)
                 .where(Model.name == model).order_by(ProfileRow.id.desc()).limit(1))
            if hardware is not None:
                q = (q.join(ProfileHardware, ProfileHardware.profile_id == ProfileRow.id)
                     .join(HardwareClass, HardwareClass.id == ProfileHardware.hardware_class_id)
                     .where(HardwareClass.name == hardware))
            return s.scalar(q)

    # -- networks and plans ----------------------------------------------------------------------

    def save_network(self, net: NetworkState, *, origin: str | None = None) -> int:
        """Store a network snapshot; an identical snapshot already stored gives its id."""
        document = _document(net, "network")
        digest = _digest(document)
        with self._session() as s:
            existing = s.scalar(select(NetworkRow.id).where(NetworkRow.digest == digest).order_by(NetworkRow.id))
            if existing is not None:
                return existing
            row = NetworkRow(origin=origin, source_node=net.source, document=document, digest=digest,
                             n_nodes=len(net.nodes))
            s.add(row)
            s.flush()
            return row.id

    def get_network(self, network_id: int) -> NetworkState:
        with self._session() as s:
            row = s.get(NetworkRow, network_id)
            if row is None:
                raise InputError(f"network {network_id}: no such network in {self.url}")
            return parse_network(row.document, source=f"stored network {network_id}")

    def save_plan(self, plan: Plan, *, profile_id: int | None, network_id: int | None) -> int:
        """Record one solve: the plan and the profile and network it was solved from."""
        with self._session() as s:
            self._require(s, ProfileRow, profile_id, "profile")
            self._require(s, NetworkRow, network_id, "network")
            model = self._model(s, plan.model)
            row = PlanRow(model_id=model.id, profile_id=profile_id, network_id=network_id, objective=plan.objective,
                          solver=plan.solver, status=plan.status, predicted_latency_s=plan.predicted_latency_s,
                          solve_time_s=plan.solve_time_s, gap=plan.gap, bottleneck_s=plan.bottleneck_s,
                          mode=plan.mode or "split", k=plan.k, document=_document(plan, "plan"))
            s.add(row)
            s.flush()
            return row.id

    def get_plan(self, plan_id: int) -> Plan:
        with self._session() as s:
            row = s.get(PlanRow, plan_id)
            if row is None:
                raise InputError(f"plan {plan_id}: no such plan in {self.url}")
            return parse_plan(row.document, source=f"stored plan {plan_id}")

    def plan_inputs(self, plan_id: int) -> tuple[int | None, int | None]:
        """(profile id, network id) the stored plan was solved from."""
        with self._session() as s:
            row = s.get(PlanRow, plan_id)
            if row is None:
                raise InputError(f"plan {plan_id}: no such plan in {self.url}")
            return row.profile_id, row.network_id

    # -- what happened ---------------------------------------------------------------------------

    def record_run(self, plan_id: int | None, *, strategy: str, output: str, measured_s: float,
                   predicted_s: float | None, breakdown: dict, model: str | None = None,
                   plan_version: int | None = None, created_at: datetime | None = None) -> int:
        """Record one executed request. The model is the plan's unless given."""
        breakdown = _plain(breakdown)
        _check_finite({"measured_s": measured_s, "predicted_s": predicted_s, "breakdown": breakdown}, "run")
        with self._session() as s:
            plan = self._require(s, PlanRow, plan_id, "plan")
            model_id = self._model(s, model).id if model is not None else (plan.model_id if plan else None)
            row = RunRow(plan_id=plan_id, model_id=model_id, strategy=strategy, output=output,
                         measured_s=float(measured_s), predicted_s=None if predicted_s is None else float(predicted_s),
                         breakdown=breakdown, plan_version=plan_version, created_at=created_at or datetime.now(UTC))
            s.add(row)
            s.flush()
            return row.id

    def record_probe(self, link: str, *, bandwidth_bps: float | None = None, latency_s: float | None = None,
                     measured_at: datetime | None = None, kind: str | None = None, samples: int | None = None) -> int:
        """Record one measurement of a link (named like "phone->edge")."""
        if bandwidth_bps is None and latency_s is None:
            raise InputError(f"probe of {link}: neither bandwidth_bps nor latency_s was measured")
        _check_finite({"bandwidth_bps": bandwidth_bps, "latency_s": latency_s}, f"probe of {link}")
        with self._session() as s:
            row = ProbeRow(link=link, bandwidth_bps=bandwidth_bps, latency_s=latency_s,
                           measured_at=measured_at or datetime.now(UTC), kind=kind, samples=samples)
            s.add(row)
            s.flush()
            return row.id

    def record_samples(self, probes: list[dict[str, Any]], nodes: list[dict[str, Any]],
                       measured_at: datetime | None = None) -> None:
        """One probe round in one transaction: link rows (`link`, `bandwidth_bps`, `latency_s`, `kind`,
        `samples`) and node rows (`node`, `state`, `slowdown`), all at one time. A row per call would cost a
        transaction (a disk sync on SQLite) per link."""
        at = measured_at or datetime.now(UTC)
        for p in probes:
            if p.get("bandwidth_bps") is None and p.get("latency_s") is None:
                raise InputError(f"probe of {p['link']}: neither bandwidth_bps nor latency_s was measured")
            _check_finite({"bandwidth_bps": p.get("bandwidth_bps"), "latency_s": p.get("latency_s")},
                          f"probe of {p['link']}")
        for n in nodes:
            _check_finite({"slowdown": n.get("slowdown")}, f"node sample of {n['node']}")
        with self._session() as s:
            if probes:
                s.execute(insert(ProbeRow), [{"bandwidth_bps": None, "latency_s": None, "kind": None, "samples": None}
                                             | p | {"measured_at": at} for p in probes])
            if nodes:
                s.execute(insert(NodeSample), [{"slowdown": None} | n | {"measured_at": at} for n in nodes])

    def record_plan_application(self, plan_id: int, *, previous_plan_id: int | None = None,
                                applied_at: datetime | None = None, version: int | None = None,
                                decision_id: int | None = None) -> int:
        """Record that `plan_id` was put into service, replacing `previous_plan_id`."""
        with self._session() as s:
            self._require(s, PlanRow, plan_id, "plan")
            self._require(s, PlanRow, previous_plan_id, "plan")
            self._require(s, DecisionRow, decision_id, "decision")
            row = PlanApplication(plan_id=plan_id, previous_plan_id=previous_plan_id,
                                  applied_at=applied_at or datetime.now(UTC), version=version,
                                  decision_id=decision_id)
            s.add(row)
            s.flush()
            return row.id

    def finish_plan_application(self, application_id: int, *, outcome: str,
                                finished_at: datetime | None = None) -> None:
        """Record how a switch ended ("switched", "failed: ...") and when its old version was freed."""
        with self._session() as s:
            row = self._require(s, PlanApplication, application_id, "plan application")
            assert row is not None
            row.outcome = outcome[:200]
            row.finished_at = finished_at or datetime.now(UTC)

    def record_decision(self, *, candidate_plan_id: int, current_plan_id: int | None, network_id: int | None,
                        trigger: str, applied: bool, reason: str, current_s: float | None, candidate_s: float,
                        gain_s: float | None, migration_s: float) -> int:
        """Record one decision: a candidate weighed against the plan in force (None values: not applicable)."""
        def finite(x: float | None) -> float | None:
            return x if x is None or math.isfinite(x) else None

        with self._session() as s:
            self._require(s, PlanRow, candidate_plan_id, "plan")
            self._require(s, PlanRow, current_plan_id, "plan")
            self._require(s, NetworkRow, network_id, "network")
            row = DecisionRow(candidate_plan_id=candidate_plan_id, current_plan_id=current_plan_id,
                              network_id=network_id, trigger=trigger, applied=applied, reason=reason,
                              current_s=finite(current_s), candidate_s=float(candidate_s), gain_s=finite(gain_s),
                              migration_s=float(migration_s))
            s.add(row)
            s.flush()
            return row.id

    def record_node_sample(self, node: str, *, state: str, slowdown: float | None,
                           measured_at: datetime | None = None) -> int:
        _check_finite({"slowdown": slowdown}, f"node sample of {node}")
        with self._session() as s:
            row = NodeSample(node=node, state=state, slowdown=slowdown, measured_at=measured_at or datetime.now(UTC))
            s.add(row)
            s.flush()
            return row.id

    # -- a daemon's own state (revision 0005) -------------------------------------------------------

    def open_daemon_state(self, model: str, *, settings: dict[str, Any], network: dict[str, Any]) -> int:
        """A daemon run begins: its settings and network (never a token: the caller passes none)."""
        with self._session() as s:
            row = DaemonState(model=model, settings=_plain(settings), network=_plain(network))
            s.add(row)
            s.flush()
            return row.id

    def update_daemon_state(self, state_id: int, *, network: dict[str, Any] | None = None,
                            plan_id: int | None = None, version: int | None = None, stopped: bool = False,
                            at: datetime | None = None, workers: dict[str, Any] | None = None,
                            emulation: dict[str, Any] | None = None) -> None:
        """`workers`: the local workers of the run as runtime.local.LocalWorkers.record gives them (no token);
        `emulation`: the changes made to its emulated network (orchestrator.daemon.emulation)."""
        with self._session() as s:
            row = self._require(s, DaemonState, state_id, "daemon state")
            assert row is not None
            if network is not None:
                row.network = _plain(network)
            if workers is not None:
                row.workers = _plain(workers)
            if emulation is not None:
                row.emulation = _plain(emulation)
            if version is not None:
                self._require(s, PlanRow, plan_id, "plan")
                row.plan_id, row.version = plan_id, version
            if stopped:
                row.stopped_at = at or datetime.now(UTC)
            row.updated_at = at or datetime.now(UTC)

    def crashed_daemon_state(self, model: str) -> dict[str, Any] | None:
        """The newest run of a daemon of `model` if it never stopped cleanly (it died): what to resume from."""
        with self._session() as s:
            row = s.scalars(select(DaemonState).where(DaemonState.model == model)
                            .order_by(DaemonState.id.desc()).limit(1)).first()
            if row is None or row.stopped_at is not None:
                return None
            plan = s.get(PlanRow, row.plan_id).document if row.plan_id is not None else None
            return {"id": row.id, "settings": dict(row.settings), "network": dict(row.network), "plan": plan,
                    "plan_id": row.plan_id, "version": row.version, "updated_at": row.updated_at,
                    "workers": dict(row.workers) if row.workers else None,
                    "emulation": dict(row.emulation) if row.emulation else None}

    def current_plan_id(self) -> int | None:
        """The plan applied most recently, or None when none was."""
        with self._session() as s:
            return s.scalar(select(PlanApplication.plan_id)
                            .order_by(PlanApplication.applied_at.desc(), PlanApplication.id.desc()).limit(1))

    # -- helpers ---------------------------------------------------------------------------------

    def _require(self, s: Session, table: type[R], row_id: int | None, what: str) -> R | None:
        if row_id is None:
            return None
        row = s.get(table, row_id)
        if row is None:
            raise InputError(f"{what} {row_id}: no such {what} in {self.url}")
        return row

    def _model(self, s: Session, name: str, *, family: str | None = None, weights: str | None = None) -> Model:
        model = _get_or_create(s, Model, Model.name == name, lambda: Model(name=name, family=family, weights=weights))
        # The newest profile says what the model is now (a retrained captioner keeps its name).
        if family is not None:
            model.family = family
        if weights is not None:
            model.weights = weights
        return model

    def _hardware(self, s: Session, name: str, *, fingerprint: dict[str, Any]) -> HardwareClass:
        hc = _get_or_create(s, HardwareClass, HardwareClass.name == name,
                            lambda: HardwareClass(name=name, fingerprint=_plain(fingerprint)))
        if fingerprint and not hc.fingerprint:
            hc.fingerprint = _plain(fingerprint)
        return hc

    @staticmethod
    def _hardware_names(s: Session, profile_ids: list[int]) -> dict[int, list[str]]:
        if not profile_ids:
            return {}
        q = (select(ProfileHardware.profile_id, HardwareClass.name)
             .join(HardwareClass, HardwareClass.id == ProfileHardware.hardware_class_id)
             .where(ProfileHardware.profile_id.in_(profile_ids)).order_by(HardwareClass.name))
        out: dict[int, list[str]] = {}
        for pid, name in s.execute(q):
            out.setdefault(pid, []).append(name)
        return out


def _get_or_create(s: Session, table: type[R], where: Any, make: Callable[[], R]) -> R:
    """The row matching `where`, created when missing; safe when another process creates it first."""
    row = s.scalar(select(table).where(where))
    if row is not None:
        return row
    try:
        with s.begin_nested():
            row = make()
            s.add(row)
        return row
    except IntegrityError:
        # Another writer inserted the same unique name between our select and insert.
        found = s.scalar(select(table).where(where))
        assert found is not None
        return found


def _profile_hardware_names(profile: Profile) -> list[str]:
    names = dict.fromkeys(profile.hardware_classes)
    for hw in profile.hardware:
        names.setdefault(hw, None)
    return list(names)


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _plain(value: Any) -> Any:
    """JSON-safe copy (pydantic models and tuples become plain JSON values)."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", by_alias=True)
    return json.loads(json.dumps(value, default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", by_alias=True)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
