"""The domain values: circuit states, one key's stored circuit, and audit transitions."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum


class CircuitState(StrEnum):
    """The lifecycle state of one key; the values are what the database stores."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class Circuit:
    """One key's stored circuit: the row the decision logic reads and rewrites."""

    state: CircuitState = CircuitState.CLOSED
    consecutive_failures: int = 0
    half_open_probes: int = 0
    last_failure_at: datetime | None = None
    half_open_since: datetime | None = None


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
