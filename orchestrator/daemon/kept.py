"""History records that stand alone (a request, a probe round, a daemon state change, a switch's end), as
plain data: what the daemon writes at once when the database answers, and keeps (in memory and in a
spool file, see orchestrator.daemon.spool) when it does not. A record names every row it touches by id,
so any daemon on the same database can write it later, in order, with the time it happened."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from orchestrator.network import NetworkState
from orchestrator.store import Store

KINDS = ("run", "probe", "state", "emulation", "finish")


@dataclass(frozen=True)
class Kept:
    kind: str                 # one of KINDS
    fields: dict[str, Any]    # JSON values only: it goes to a spool file as one line

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "fields": self.fields}

    @staticmethod
    def from_json(data: Any) -> Kept:
        """The record a spool line holds; ValueError naming what is wrong with it."""
        if not isinstance(data, dict) or data.get("kind") not in KINDS or not isinstance(data.get("fields"), dict):
            raise ValueError(f"not a kept history record (kind one of {', '.join(KINDS)}, fields an object)")
        return Kept(data["kind"], data["fields"])


def _at(at: datetime | None) -> str | None:
    return None if at is None else at.isoformat()


def _when(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def run_record(*, plan_id: int | None, output: str, measured_s: float, predicted_s: float | None,
               breakdown: dict[str, Any], model: str, plan_version: int, at: datetime) -> Kept:
    return Kept("run", {"plan_id": plan_id, "output": output, "measured_s": measured_s, "predicted_s": predicted_s,
                        "breakdown": json.loads(json.dumps(breakdown)), "model": model,
                        "plan_version": plan_version, "at": _at(at)})


def probe_record(snapshot: NetworkState, links: list[dict[str, Any]], nodes: list[dict[str, Any]],
                 at: datetime) -> Kept:
    return Kept("probe", {"snapshot": snapshot.model_dump(mode="json", exclude_none=True), "links": links,
                          "nodes": nodes, "at": _at(at)})


def state_record(state_id: int, *, network: dict[str, Any] | None = None, plan_id: int | None = None,
                 version: int | None = None, stopped: bool = False, at: datetime) -> Kept:
    return Kept("state", {"state_id": state_id, "network": network, "plan_id": plan_id, "version": version,
                          "stopped": stopped, "at": _at(at)})


def emulation_record(state_id: int, overrides: dict[str, Any]) -> Kept:
    return Kept("emulation", {"state_id": state_id, "emulation": json.loads(json.dumps(overrides))})  # as of now


def finish_record(application_id: int, outcome: str, at: datetime) -> Kept:
    return Kept("finish", {"application_id": application_id, "outcome": outcome, "at": _at(at)})


def write_kept(store: Store, rec: Kept) -> Any:
    """Write one record; returns what the store call returns (a probe round: the snapshot's network id)."""
    f = rec.fields
    if rec.kind == "run":
        return store.record_run(f["plan_id"], strategy="daemon", output=f["output"], measured_s=f["measured_s"],
                                predicted_s=f["predicted_s"], breakdown=f["breakdown"], model=f["model"],
                                plan_version=f["plan_version"], created_at=_when(f["at"]))
    if rec.kind == "probe":
        at = _when(f["at"])
        store.record_samples(f["links"], f["nodes"], measured_at=at)
        return store.save_network(NetworkState.model_validate(f["snapshot"]), origin="daemon")
    if rec.kind == "state":
        return store.update_daemon_state(f["state_id"], network=f["network"], plan_id=f["plan_id"],
                                         version=f["version"], stopped=f["stopped"], at=_when(f["at"]))
    if rec.kind == "emulation":
        return store.update_daemon_state(f["state_id"], emulation=f["emulation"])
    if rec.kind == "finish":
        return store.finish_plan_application(f["application_id"], outcome=f["outcome"], finished_at=_when(f["at"]))
    raise ValueError(f"kept history record: unknown kind {rec.kind!r}")
