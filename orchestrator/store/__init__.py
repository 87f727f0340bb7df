"""The history store: every profile, network snapshot, solve, run, probe and plan change as SQL rows.

    from orchestrator.store import Store
    with Store.open() as store:          # $AIFLOW_DATABASE_URL, else the per-user SQLite file
        pid = store.save_profile(profile)

See docs/history.md for the tables and the `aiflow db` / `aiflow history` commands.
"""

from orchestrator.store.engine import default_sqlite_path, resolve_url
from orchestrator.store.store import ProfileSummary, Store

__all__ = ["ProfileSummary", "Store", "default_sqlite_path", "resolve_url"]
