"""Cuts models into units and measures what each unit costs (see docs/profile-format.md)."""
