"""The file behind the history records a daemon keeps while its database is unreachable, so that a daemon
killed during an outage loses none of them: the next daemon with the same state folder writes them.

A daemon's spool is `<state dir>/history-spool-<database>-<pid>-<token>.jsonl` (`<database>`: a digest
of the history database's URL, as a per-user state folder may serve daemons of several databases),
created at the first kept record and locked (flock) by its daemon for as long as it runs; a file no live
process holds locked is left over from a daemon that is gone.

Each line is one JSON object: a record ({"kind", "fields"}), or {"consumed": n}, meaning the file's
first n records are no longer pending (written, or dropped). A record is appended and flushed before the
daemon goes on, so it survives the process (a write that reached the kernel is kept when the process
dies; the machine's power failing is another matter). Writing is at least once: a record written to the
database just before the process died, whose "consumed" line never followed, is written again by the
next daemon."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import IO

from orchestrator.daemon.kept import Kept

log = logging.getLogger("aiflow.daemon")
PATTERN = "history-spool-*.jsonl"


def database_tag(url: str) -> str:
    """The part of a spool file's name that says which database its records are for (the URL with its
    password masked, as Store.url gives it)."""
    return hashlib.sha256(url.encode()).hexdigest()[:12]


def parse(text: str, name: str) -> list[Kept]:
    """The records of a spool file that are still pending. A line that does not parse (the last one, cut
    short by the process dying mid-write) is skipped with a warning naming the file and line."""
    records: list[Kept] = []
    consumed = 0
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            if isinstance(data, dict) and set(data) == {"consumed"} and isinstance(data["consumed"], int):
                consumed = data["consumed"]
            else:
                records.append(Kept.from_json(data))
        except ValueError as exc:
            log.warning("history: %s line %d skipped: %s", name, number, exc)
    return records[consumed:]


class Spool:
    """This daemon's spool file (see the module docstring): `append` a kept record, `consumed` when the
    oldest ones left the buffer, `close` at the end (the file is removed when nothing is pending)."""

    def __init__(self, state_dir: Path, database: str) -> None:
        self.state_dir = state_dir
        self.database = database_tag(database)
        self.path: Path | None = None
        self._file: IO[str] | None = None
        self._consumed = 0

    def _open(self) -> IO[str]:
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        name = f"history-spool-{self.database}-{os.getpid()}-{secrets.token_hex(4)}"
        hidden = self.state_dir / f".{name}.tmp"
        fd = os.open(hidden, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_APPEND, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        # locked before its name is one that another daemon's adopt() looks for: it never takes a live file
        self.path = self.state_dir / f"{name}.jsonl"
        os.rename(hidden, self.path)
        return os.fdopen(fd, "a", encoding="utf-8")

    def append(self, rec: Kept) -> None:
        if self._file is None:
            self._file = self._open()
        self._file.write(json.dumps(rec.to_json(), separators=(",", ":")) + "\n")
        self._file.flush()

    def consumed(self, count: int, pending: int) -> None:
        """`count` more of the oldest records are no longer pending; `pending` are left."""
        if self._file is None or count == 0:
            return
        if pending == 0:
            self._file.truncate(0)        # O_APPEND: the next record goes to the start again
            self._consumed = 0
        else:
            self._consumed += count
            self._file.write(json.dumps({"consumed": self._consumed}) + "\n")
        self._file.flush()

    def close(self, pending: int) -> None:
        """Release the file: removed when nothing is pending, else left (unlocked) for the next daemon."""
        if self._file is None:
            return
        if pending == 0 and self.path is not None:
            self.path.unlink(missing_ok=True)
        else:
            log.warning("history: %d record(s) kept in %s; the next daemon with this state folder writes them",
                        pending, self.path)
        self._file.close()
        self._file = None


def adopt(state_dir: Path, database: str, keep: Callable[[Kept], None], *, own: Path | None = None) -> int:
    """Hand the pending records of every spool file in `state_dir` for `database` (its URL) that no live
    daemon holds to `keep`, oldest file first, then remove the file. Returns how many records were handed on."""
    handed = 0
    for path in sorted(state_dir.glob(f"history-spool-{database_tag(database)}-*.jsonl"), key=_mtime):
        if path == own:
            continue
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError:
            continue                                  # gone already (another daemon took it)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue                              # its daemon is alive
            with contextlib.suppress(FileNotFoundError):
                if os.fstat(fd).st_ino != os.stat(path).st_ino:
                    continue                          # taken and removed while we waited: another file now
                with os.fdopen(os.dup(fd), encoding="utf-8", errors="replace") as f:
                    records = parse(f.read(), path.name)
                for rec in records:
                    keep(rec)
                handed += len(records)
                path.unlink()
        finally:
            os.close(fd)
    return handed


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
