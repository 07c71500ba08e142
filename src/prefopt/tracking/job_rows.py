"""`Row`: one job of a sweep as its summary reads it (shared by `report.py`, which builds the
rows from the child runs, and `frontier.py`, which plots them)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Row:
    job: int
    status: str
    values: dict[str, str]
    """The job's swept values, as the sweep's overrides wrote them."""
    metrics: dict[str, float] = field(default_factory=dict)
    run_name: str = ""
    run_id: str = ""
