"""The domain values: circuit states, one key's stored circuit, and audit transitions."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum


class CircuitState(StrEnum):
    """The lifecycle state of one key; the values are what the database stores."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    FORCED_OPEN = "forced_open"  # held open by an operator until a time, or until a reset
    DISABLED = "disabled"  # switched off by an operator: admits every call, still counts


@dataclass(frozen=True, slots=True)
class Circuit:
    """One key's stored circuit: the row the decision logic reads and rewrites."""

    state: CircuitState = CircuitState.CLOSED
    consecutive_failures: int = 0
    half_open_probes: int = 0
    last_failure_at: datetime | None = None
    half_open_since: datetime | None = None
    open_until: datetime | None = None  # Open/ForcedOpen: no probe before this time
    generation: int = 0  # counts the state changes: what permits are fenced by


NEW_CIRCUIT = Circuit()


@dataclass(frozen=True, slots=True)
class Transition:
    """One audited state change of one key."""

    key: str
    from_state: CircuitState
    to_state: CircuitState
    trigger: str
    at: datetime
    consecutive_failures: int
    reason: str | None
    actor: str
    # Its row in the audit table (ascending), when read back; not part of what it says.
    id: int | None = field(default=None, compare=False)
