"""Where the time-window queries read hourly summaries and where raw rows.

The hourly tables hold a summary of every finished hour (store/rollup.py writes them), whether the raw
rows are still there or not; a mark per raw table (`summary_marks`) says how far that holds. A query over
[since, until) then reads, for windows that are whole hours, the summaries of the hours it covers and
raw rows only for the rest: the unsummarised tail, the part of an hour cut by `since` or `until` (while
its raw rows exist), and rows written late for a summarised hour (an id above the mark's). Windows
shorter than an hour cannot be cut from an hourly summary: they read raw rows, and summaries only where
the raw rows are gone (as whole hours).

`plan_reads` is the decision, a pure function; `read_mark` and `write_mark` are the I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection, select

from orchestrator.store.tables import SummaryMark

HOUR = timedelta(hours=1)
Range = tuple[datetime | None, datetime | None]       # [lo, hi); None: unbounded


@dataclass(frozen=True)
class Mark:
    summarised_before: datetime | None = None   # hours before this are summarised (None: none, or unknown)
    last_id: int | None = None                  # ... from the raw rows with ids up to this
    raw_deleted_before: datetime | None = None  # raw rows before this were deleted


@dataclass(frozen=True)
class Reads:
    summaries: Range | None      # hourly summary rows whose hour is in this range
    raw: tuple[Range, ...]       # raw rows measured in these ranges
    late: tuple[int, Range] | None = None   # and raw rows with an id above this, measured in this range


def hour_floor(t: datetime) -> datetime:
    t = t.astimezone(UTC)
    return t.replace(minute=0, second=0, microsecond=0)


def hour_ceil(t: datetime) -> datetime:
    f = hour_floor(t)
    return f if f == t.astimezone(UTC) else f + HOUR


def plan_reads(mark: Mark, since: datetime | None, until: datetime | None, *, whole_hours: bool) -> Reads:
    """What to read for rows in [since, until), given the mark; `whole_hours` when every window of the
    query is a whole number of hours (hour-aligned), so hourly summaries combine into it."""
    deleted = mark.raw_deleted_before
    if mark.summarised_before is None and deleted is None:
        # no mark (a database rolled up before revision 0005): summaries exist only where raw rows are gone
        return Reads((_floor(since), until), ((since, until),))
    if not whole_hours or mark.summarised_before is None:
        gone = None if deleted is None else (_floor(since), deleted if until is None else min(deleted, until))
        return Reads(gone, ((since, until),))
    # the hours read as summaries: [lo, hi). An hour cut by since or until is read raw while it exists.
    lo = None if since is None else (hour_floor(since) if deleted is not None and since < deleted
                                     else hour_ceil(since))
    hi = mark.summarised_before
    if until is not None:
        cut = hour_floor(until) if not (deleted is not None and until <= deleted) else hour_ceil(until)
        hi = min(hi, cut)
    if lo is not None and lo >= hi:
        return Reads(None, ((since, until),))
    raw: list[Range] = []
    if since is not None and lo is not None and since < lo:
        raw.append((since, lo))
    if until is None or hi < until:
        raw.append((hi, until))
    late = (mark.last_id, (lo, hi)) if mark.last_id is not None else None
    return Reads((lo, hi), tuple(raw), late)


def _floor(t: datetime | None) -> datetime | None:
    return None if t is None else hour_floor(t)


def read_mark(conn: Connection, raw_table: str) -> Mark:
    row = conn.execute(select(SummaryMark).where(SummaryMark.raw_table == raw_table)).first()
    if row is None:
        return Mark()
    return Mark(row.summarised_before, row.last_id, row.raw_deleted_before)


def write_mark(conn: Connection, raw_table: str, mark: Mark) -> None:
    row = conn.execute(select(SummaryMark.raw_table).where(SummaryMark.raw_table == raw_table)).first()
    values = {"summarised_before": mark.summarised_before, "last_id": mark.last_id,
              "raw_deleted_before": mark.raw_deleted_before}
    if row is None:
        conn.execute(SummaryMark.__table__.insert().values(raw_table=raw_table, **values))
    else:
        conn.execute(SummaryMark.__table__.update().where(SummaryMark.raw_table == raw_table).values(**values))
