"""The domain values: circuit states, one key's stored circuit, and audit transitions."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
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
class Policy:
    """The settings a process decided a circuit with, as stored with it, and who it was.

    Each process decides with its own `CircuitBreakerConfig`; the last one that decided for
    a key (an operator's change keeps what it found) stores these, so that `status`,
    `explain` and every other process compute the same waits without knowing the settings.
    """

    failure_threshold: int
    cooldown: timedelta
    half_open_max: int
    probe_timeout: timedelta | None
    set_by: str  # the actor of the process that stored them


@dataclass(frozen=True, slots=True)
class Cause:
    """Why an outcome is reported or a change made, as its audit row keeps it: the reason,
    and for a failure the error it counted and the Retry-After that error asked for."""

    reason: str | None = None
    error_type: str | None = None  # e.g. "openai.RateLimitError"
    status_code: int | None = None
    retry_after: timedelta | None = None  # as applied: capped by config.max_retry_after


NO_CAUSE = Cause()


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
    # Why, beyond the reason (None where it does not apply, and in rows written before
    # schema revision 0004): the circuit's generation after it; the counted error's type and HTTP
    # status; the Retry-After a trip applied, in seconds; the end of the hold it set.
    generation: int | None = None
    error_type: str | None = None
    status_code: int | None = None
    retry_after: float | None = None
    open_until: datetime | None = None
    # Its row in the audit table (ascending), when read back; not part of what it says.
    id: int | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class StoredCircuit:
    """A stored key with its circuit and policy, and its latest audited transition: when
    it entered its state, why and by whom (None: it never changed state)."""

    key: str
    circuit: Circuit
    policy: Policy | None
    since: datetime | None
    reason: str | None
    actor: str | None
    version: int  # the row's: bumped by every write (and every audit row comes with one)
