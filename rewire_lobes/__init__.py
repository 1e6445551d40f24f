"""Shared lobes for the rewiring and SUPERB recipes (see docs/design.md)."""
