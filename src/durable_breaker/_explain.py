"""What an operator asks of one circuit: its state, since when, why, when it next admits a
call and what changes it; and durations in the words people write them. No I/O."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from ._common import retry_after_by
from ._state import CircuitState, Policy, StoredCircuit, Transition

_UNITS = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))  # (weeks read as days: 30d)

# Why a circuit does not admit a call now (Explanation.waiting_for).
COOLDOWN = "cooldown"
RETRY_AFTER_HOLD = "retry_after_hold"
FORCED_OPEN = "forced_open"
PROBE_IN_FLIGHT = "probe_in_flight"
# A circuit with no stored policy: created by an operator, or last written before 0004.
UNKNOWN_SETTINGS = "no process has decided for it since the settings were stored"


def duration(seconds: float) -> str:
    """`seconds` as people write it, in its largest unit and the next: 0.4s, 27s, 2m, 3m20s,
    1h30m, 30d (weeks are written as days)."""
    seconds = abs(seconds)
    if seconds < 10 and seconds != int(seconds):
        return f"{seconds:.1f}s"
    whole = round(seconds)
    first = next(i for i, (_, size) in enumerate(_UNITS) if whole >= size or size == 1)
    (unit, size), *rest = _UNITS[first : first + 2]
    text = f"{whole // size}{unit}"
    for unit, smaller in rest:
        if whole % size // smaller:
            text += f"{whole % size // smaller}{unit}"
    return text


def relative(moment: datetime | None, now: datetime) -> str:
    """`moment` from `now`: "3m ago", "in 27s", "now"; "-" when None."""
    if moment is None:
        return "-"
    seconds = (moment - now).total_seconds()
    if abs(seconds) < 0.05:
        return "now"
    return f"in {duration(seconds)}" if seconds > 0 else f"{duration(seconds)} ago"


def clock_time(moment: datetime) -> str:
    """An absolute UTC time for people: 2026-11-30 03:12:04 UTC."""
    return f"{moment:%Y-%m-%d %H:%M:%S} UTC"


def settings_words(policy: Policy) -> str:
    """A policy in a line: threshold 5, cooldown 30s, 1 probe at a time, probe timeout 30s."""
    timeout = policy.probe_timeout
    probes = f"{policy.half_open_max} probe{'s' * (policy.half_open_max != 1)} at a time"
    return (
        f"threshold {policy.failure_threshold}, "
        f"cooldown {duration(policy.cooldown.total_seconds())}, {probes}, "
        f"probe timeout {'none' if timeout is None else duration(timeout.total_seconds())}"
    )


@dataclass(frozen=True, slots=True)
class Explanation:
    """One key's circuit explained: what `explain` returns and `durable-breaker explain`
    prints (`str()` gives the plain words, `as_dict()` the JSON)."""

    key: str
    namespace: str
    now: datetime
    stored: bool  # False: no process has stored the key (it is Closed)
    state: CircuitState
    since: datetime | None  # when it entered its state (None: never changed state)
    consecutive_failures: int
    policy: Policy | None  # the settings the last deciding process used (None: unknown)
    entered: Transition | None  # the transition that put it in its state
    tripped: Transition | None  # Open or HalfOpen: the failure that opened it
    retry_after: float | None  # seconds until it next admits a call (0: now; None: unknown)
    waiting_for: str | None  # cooldown, retry_after_hold, forced_open, probe_in_flight
    probes_in_flight: int
    commands: tuple[str, ...]  # what changes it, for a shell

    @property
    def admits_at(self) -> datetime | None:
        """When it next admits a call (None: unknown, or not by time)."""
        if self.retry_after is None:
            return None
        return self.now + timedelta(seconds=self.retry_after)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: times in ISO 8601, durations in seconds."""

        def iso(moment: datetime | None) -> str | None:
            return None if moment is None else moment.isoformat()

        def transition(t: Transition | None) -> dict[str, Any] | None:
            return None if t is None else transition_dict(t)

        policy = self.policy
        return {
            "key": self.key,
            "namespace": self.namespace,
            "now": iso(self.now),
            "stored": self.stored,
            "state": self.state.value,
            "since": iso(self.since),
            "consecutive_failures": self.consecutive_failures,
            "retry_after": self.retry_after,
            "admits_at": iso(self.admits_at),
            "waiting_for": self.waiting_for,
            "probes_in_flight": self.probes_in_flight,
            "policy": None if policy is None else policy_dict(policy),
            "entered": transition(self.entered),
            "tripped": transition(self.tripped),
            "commands": list(self.commands),
        }

    def __str__(self) -> str:
        return "\n".join(self._lines()) + "\n"

    def _lines(self) -> list[str]:
        now, key = self.now, self.key
        lines = [f"{key} is {self.state.value.upper()}: {self._headline()}"]
        if not self.stored:
            lines.append(
                f"  no process has stored {key!r} in namespace {self.namespace!r} yet: "
                "it starts Closed"
            )
        if self.since is not None:
            lines.append(f"  since     {relative(self.since, now)} ({clock_time(self.since)})")
        lines += [
            f"  cause     {line}" if i == 0 else f"            {line}"
            for i, line in enumerate(self._cause())
        ]
        lines.append(f"  next      {self._next()}")
        if self.policy is not None:
            lines.append(f"  settings  {settings_words(self.policy)}")
            lines.append(f"            (of the last process that decided: {self.policy.set_by})")
        elif self.stored:
            lines.append(f"  settings  {UNKNOWN_SETTINGS}")
        for i, command in enumerate(self.commands):
            lines.append(f"  {'change' if i == 0 else '':<8}  {command}")
        return lines

    def _headline(self) -> str:
        state = self.state
        if state is CircuitState.CLOSED:
            return "calls are admitted"
        if state is CircuitState.DISABLED:
            return "switched off by an operator; every call is admitted, failures never trip it"
        if state is CircuitState.FORCED_OPEN:
            return "held open by an operator; calls are rejected"
        if state is CircuitState.HALF_OPEN:
            return "probing; a few calls test whether the model recovered"
        return "calls are rejected"

    def _cause(self) -> list[str]:
        failures = self.consecutive_failures
        threshold = "" if self.policy is None else f" (threshold {self.policy.failure_threshold})"
        counted = f"{failures} consecutive failure{'s' * (failures != 1)} counted{threshold}"
        lines = []
        trip = self.tripped
        if trip is not None:
            opened = relative(trip.at, self.now)
            lines.append(f"opened {opened} by {trip.actor}: {trip.reason or '-'}")
            error = trip.error_type or ""
            if trip.status_code is not None:
                error = f"{error} (HTTP {trip.status_code})".strip()
            if error:
                lines.append(f"the counted error: {error}")
            if trip.retry_after is not None:
                until = trip.open_until
                held = "" if until is None else f", held until {clock_time(until)}"
                asked = duration(trip.retry_after)
                lines.append(f"the provider asked to retry after {asked}{held}")
        entered = self.entered
        if entered is not None and entered is not trip:
            lines.append(
                f"{entered.trigger} by {entered.actor} {relative(entered.at, self.now)}: "
                f"{entered.reason or '-'}"
            )
        if failures or self.state is CircuitState.CLOSED:
            lines.append(counted)
        return lines or ["-"]

    def _next(self) -> str:
        wait, admits_at = self.retry_after, self.admits_at
        if self.state in (CircuitState.CLOSED, CircuitState.DISABLED):
            return "admits every call"
        if self.waiting_for is None and wait == 0:
            if self.state is CircuitState.HALF_OPEN:
                return "admits a probe now"
            return "admits a probe at the next call (its wait is over)"
        when = ""
        if admits_at is not None:
            when = f" {relative(admits_at, self.now)} ({clock_time(admits_at)})"
        policy = self.policy
        if self.waiting_for == FORCED_OPEN:
            if admits_at is None:
                return "admits nothing until an operator resets it"
            return f"admits a probe{when}, when the operator's hold ends"
        if self.waiting_for == RETRY_AFTER_HOLD:
            if admits_at is None:
                return (
                    "admits a probe once the provider's Retry-After hold and a cooldown "
                    f"end ({UNKNOWN_SETTINGS})"
                )
            return f"admits a probe{when}, when the provider's Retry-After hold ends"
        if self.waiting_for == COOLDOWN:
            cooldown = "" if policy is None else f" of {duration(policy.cooldown.total_seconds())}"
            return f"admits a probe{when}, when the cooldown{cooldown} ends"
        if self.waiting_for == PROBE_IN_FLIGHT:
            probes = f"{self.probes_in_flight} probe{'s' * (self.probes_in_flight != 1)} in flight"
            if admits_at is None:
                return f"{probes}: waits for a result (no probe timeout)"
            return f"{probes}: waits for a result, or renews the probe{when}"
        return f"unknown: {UNKNOWN_SETTINGS}"


def policy_dict(policy: Policy) -> dict[str, Any]:
    timeout = policy.probe_timeout
    return {
        "failure_threshold": policy.failure_threshold,
        "cooldown": policy.cooldown.total_seconds(),
        "half_open_max": policy.half_open_max,
        "probe_timeout": None if timeout is None else timeout.total_seconds(),
        "set_by": policy.set_by,
    }


def transition_dict(t: Transition) -> dict[str, Any]:
    """A transition as JSON: times in ISO 8601."""
    return {
        "key": t.key,
        "from_state": t.from_state.value,
        "to_state": t.to_state.value,
        "trigger": t.trigger,
        "at": t.at.isoformat(timespec="microseconds"),
        "consecutive_failures": t.consecutive_failures,
        "reason": t.reason,
        "actor": t.actor,
        "generation": t.generation,
        "error_type": t.error_type,
        "status_code": t.status_code,
        "retry_after": t.retry_after,
        "open_until": None if t.open_until is None else t.open_until.isoformat(),
    }


def explain(
    key: str,
    namespace: str,
    stored: StoredCircuit | None,
    history: list[Transition],
    now: datetime,
) -> Explanation:
    """Explain `key` from its stored circuit (None: never stored) and latest transitions."""
    if stored is None:
        return Explanation(
            key,
            namespace,
            now,
            False,
            CircuitState.CLOSED,
            None,
            0,
            None,
            None,
            None,
            0.0,
            None,
            0,
            _commands(key, namespace, CircuitState.CLOSED),
        )
    circuit, policy = stored.circuit, stored.policy
    state = circuit.state
    wait = retry_after_by(circuit, now, policy)
    changes = [t for t in history if not _late(t)]
    entered = changes[-1] if changes and changes[-1].to_state is state else None
    tripped = None
    if state in (CircuitState.OPEN, CircuitState.HALF_OPEN):
        # The failure that opened this episode: none if it began with an operator's hold.
        for t in reversed(changes):
            if t.to_state is CircuitState.OPEN:
                tripped = t
                break
            if t.to_state not in (CircuitState.OPEN, CircuitState.HALF_OPEN):
                break
        if entered is not None and entered.to_state is CircuitState.OPEN:
            entered = tripped
    return Explanation(
        key,
        namespace,
        now,
        True,
        state,
        stored.since,
        circuit.consecutive_failures,
        policy,
        entered,
        tripped,
        wait,
        None if wait == 0 else _waiting_for(stored, now),
        circuit.half_open_probes if state is CircuitState.HALF_OPEN else 0,
        _commands(key, namespace, state),
    )


def _late(t: Transition) -> bool:
    """A fenced late outcome: audited, but it changed nothing (see `_store.late_result`)."""
    return t.trigger in ("success", "failure") and t.from_state is t.to_state


def _waiting_for(stored: StoredCircuit, now: datetime) -> str | None:
    """Why the circuit does not admit a call now (None: unknown without a stored policy)."""
    circuit, policy = stored.circuit, stored.policy
    if circuit.state is CircuitState.FORCED_OPEN:
        return FORCED_OPEN
    if circuit.state is CircuitState.HALF_OPEN:
        return PROBE_IN_FLIGHT if policy is not None else None
    if circuit.state is not CircuitState.OPEN:
        return None
    hold = circuit.open_until
    if (
        hold is not None
        and hold > now
        and (
            policy is None
            or circuit.last_failure_at is None
            or hold > circuit.last_failure_at + policy.cooldown
        )
    ):
        return RETRY_AFTER_HOLD
    return COOLDOWN if policy is not None else None


def _commands(key: str, namespace: str, state: CircuitState) -> tuple[str, ...]:
    """The CLI commands that change (or show) the circuit, ready to paste."""
    where = "" if namespace == "default" else f" --namespace {shlex.quote(namespace)}"
    # The key last, after `--` if it could pass for an option.
    target = f"{'-- ' if key.startswith('-') else ''}{shlex.quote(key)}"
    commands = []
    if state is not CircuitState.CLOSED:
        commands.append(f"durable-breaker reset{where} --yes {target}    # close it now")
    if state is not CircuitState.FORCED_OPEN:
        commands.append(f"durable-breaker open{where} --for 1h --yes {target}    # reject calls")
    if state is not CircuitState.DISABLED:
        commands.append(f"durable-breaker disable{where} --yes {target}    # admit every call")
    commands.append(f"durable-breaker history{where} {target}    # every transition")
    return tuple(commands)
