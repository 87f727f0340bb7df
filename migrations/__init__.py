"""Alembic migrations of the aiflow history store (see orchestrator.store.engine.alembic_config)."""
