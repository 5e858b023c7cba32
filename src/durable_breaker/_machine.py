"""The circuit lifecycle, declared once as a `transitions` machine, and the decisions drawn from it.

`MACHINE` is the single source of truth for which state changes exist and when they fire.
It has no model: at import time its events are compiled into `_STEPS`, a lookup table from
(state, trigger) to the candidate transitions in declaration order, and `decide` walks that
table the way `transitions` would fire the event, minus its per-call overhead (a test checks
that both agree for every state x trigger x guard outcome). Guards and effects are plain
functions of the stored circuit, so the same decision serves every store.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, NamedTuple

from transitions import Machine

from ._config import CircuitBreakerConfig
from ._state import Cause, Circuit, CircuitState, Transition


class Trigger(StrEnum):
    """The events that drive a circuit; the values are what the audit trail stores."""

    CHECK = "check"
    FAILURE = "failure"
    SUCCESS = "success"
    RELEASE = "release"  # a probe given back unused (an abandoned permit)
    RESET = "reset"
    FORCE_OPEN = "force_open"
    DISABLE = "disable"


# Triggers that report a call's outcome: a permit's are fenced by the generation it was
# admitted under (see `decide`).
OUTCOMES = frozenset({Trigger.SUCCESS, Trigger.FAILURE, Trigger.RELEASE})
# An operator's changes: they decide nothing by the settings, so they keep the stored policy.
MANUAL = frozenset({Trigger.RESET, Trigger.FORCE_OPEN, Trigger.DISABLE})
_ALL = [state.value for state in CircuitState]

# Order matters: for one (state, trigger) the first transition whose guards pass fires.
# A `check` that fires admits the call; one that fires no transition rejects it.
# `dest: None` is an internal transition: counters change, the state does not, nothing is audited.
# A (state, trigger) with no transition does nothing: a success leaves ForcedOpen as it is.
TRANSITIONS: list[dict[str, Any]] = [
    {"trigger": "check", "source": ["closed", "disabled"], "dest": None},
    {
        "trigger": "check",
        "source": "open",
        "dest": "half_open",
        "conditions": "cooldown_elapsed",
        "after": "start_probing",
    },
    {
        "trigger": "check",
        "source": "forced_open",
        "dest": "half_open",
        "conditions": "hold_elapsed",
        "after": "start_probing",
    },
    {
        "trigger": "check",
        "source": "half_open",
        "dest": None,
        "conditions": "probe_budget_left",
        "after": "take_probe",
    },
    {
        "trigger": "check",
        "source": "half_open",
        "dest": "half_open",
        "conditions": "probe_timed_out",
        "after": "start_probing",
    },
    {
        "trigger": "failure",
        "source": "half_open",
        "dest": "open",
        "after": ["count_failure", "hold"],
    },
    {
        "trigger": "failure",
        "source": "closed",
        "dest": "open",
        "conditions": "threshold_reached",
        "after": ["count_failure", "hold"],
    },
    {
        "trigger": "failure",
        "source": ["closed", "open", "forced_open", "disabled"],
        "dest": None,
        "after": "count_failure",
    },
    {"trigger": "success", "source": ["open", "half_open"], "dest": "closed", "after": "clear"},
    {"trigger": "success", "source": ["closed", "disabled"], "dest": None, "after": "clear"},
    {
        "trigger": "release",
        "source": "half_open",
        "dest": None,
        "conditions": "probe_taken",
        "after": "return_probe",
    },
    {"trigger": "reset", "source": _ALL, "dest": "closed", "after": "clear"},
    {"trigger": "force_open", "source": _ALL, "dest": "forced_open", "after": ["clear", "hold"]},
    {"trigger": "disable", "source": _ALL, "dest": "disabled", "after": "clear"},
]

MACHINE = Machine(
    model=None,
    states=[state.value for state in CircuitState],
    transitions=TRANSITIONS,
    initial=CircuitState.CLOSED.value,
    auto_transitions=False,
    ignore_invalid_triggers=True,  # a trigger with no transition from a state does nothing
)

Guard = Callable[[Circuit, datetime, CircuitBreakerConfig], bool]
Hold = datetime | timedelta | None  # until when a trip or a force_open holds: a time, a wait
Effect = Callable[[Circuit, datetime, Hold], Circuit]


def _since(moment: datetime | None, now: datetime) -> float:
    # A missing timestamp counts as "long ago". A clock that went behind a stored time counts
    # as "no time has passed" (the seed's monotonic clock saturates the same way), so the
    # wait resumes once the clock passes the stored time again.
    return float("inf") if moment is None else max(0.0, (now - moment).total_seconds())


def _held(circuit: Circuit, now: datetime) -> bool:
    """Whether a hold (a retry-after, a force_open until) still keeps the circuit open."""
    return circuit.open_until is not None and now < circuit.open_until


GUARDS: dict[str, Guard] = {
    "cooldown_elapsed": lambda c, now, cfg: (
        _since(c.last_failure_at, now) >= cfg.cooldown.total_seconds() and not _held(c, now)
    ),
    "hold_elapsed": lambda c, now, cfg: c.open_until is not None and not _held(c, now),
    "probe_taken": lambda c, now, cfg: c.half_open_probes > 0,
    "probe_budget_left": lambda c, now, cfg: c.half_open_probes < cfg.half_open_max,
    "probe_timed_out": lambda c, now, cfg: (
        cfg.probe_timeout is not None
        and _since(c.half_open_since, now) >= cfg.probe_timeout.total_seconds()
    ),
    "threshold_reached": lambda c, now, cfg: c.consecutive_failures + 1 >= cfg.failure_threshold,
}


def _until(hold: Hold, now: datetime) -> datetime | None:
    return now + hold if isinstance(hold, timedelta) else hold


EFFECTS: dict[str, Effect] = {
    "start_probing": lambda c, now, hold: replace(c, half_open_probes=1, half_open_since=now),
    "take_probe": lambda c, now, hold: replace(c, half_open_probes=c.half_open_probes + 1),
    "return_probe": lambda c, now, hold: replace(c, half_open_probes=c.half_open_probes - 1),
    "count_failure": lambda c, now, hold: replace(
        c, consecutive_failures=c.consecutive_failures + 1, last_failure_at=now
    ),
    "hold": lambda c, now, hold: replace(c, open_until=_until(hold, now)),
    "clear": lambda c, now, hold: (
        c  # already clear (a success on a healthy key): no copy, so nothing changed
        if c.consecutive_failures == c.half_open_probes == 0
        and c.half_open_since is None
        and c.open_until is None
        else replace(
            c, consecutive_failures=0, half_open_probes=0, half_open_since=None, open_until=None
        )
    ),
}


@dataclass(frozen=True, slots=True)
class Step:
    """One declared transition, compiled: guards (name, required outcome), dest, effects."""

    guards: tuple[tuple[str, bool], ...]
    dest: CircuitState | None
    effects: tuple[str, ...]
    passing_guard: str | None  # the last guard that must pass: the one an audit reason names


def _name(declared: object) -> str:
    if not isinstance(declared, str):
        raise TypeError(f"declare guards and effects by name, not {declared!r}")
    return declared


def _step(declared: Any) -> Step:
    guards = tuple((_name(cond.func), cond.target) for cond in declared.conditions)
    return Step(
        guards=guards,
        dest=None if declared.dest is None else CircuitState(declared.dest),
        effects=tuple(_name(effect) for effect in declared.after),
        passing_guard=next((name for name, target in reversed(guards) if target), None),
    )


def _compile(machine: Machine) -> dict[tuple[CircuitState, Trigger], tuple[Step, ...]]:
    table: dict[tuple[CircuitState, Trigger], tuple[Step, ...]] = {}
    for trigger in Trigger:
        event = machine.events[trigger.value]
        for source, declared in event.transitions.items():
            table[CircuitState(source), trigger] = tuple(_step(t) for t in declared)
    return table


_STEPS = _compile(MACHINE)


class Decision(NamedTuple):
    """What one trigger does to one circuit.

    A named tuple rather than a dataclass: one is built per call on the hot path.
    """

    fired: bool  # for `check`: whether the call is admitted
    now: datetime  # the time it was decided at
    before: Circuit
    after: Circuit
    audited: bool  # an external transition (a state change or a renewal): goes in the audit trail
    guard: str | None  # the guard that let the transition fire, if it had one
    changed: bool  # whether the circuit's stored values change

    @property
    def needs_write(self) -> bool:
        """Whether the store must write anything: new values, or an audit row."""
        return self.changed or self.audited


def select_step(
    state: CircuitState, trigger: Trigger, passes: Callable[[str], bool]
) -> Step | None:
    """The transition the machine fires from `state` on `trigger`, given which guards pass."""
    for step in _STEPS.get((state, trigger), ()):
        for name, target in step.guards:
            if passes(name) is not target:
                break
        else:
            return step
    return None


def decide(
    circuit: Circuit,
    trigger: Trigger,
    now: datetime,
    config: CircuitBreakerConfig,
    *,
    hold: Hold = None,
    generation: int | None = None,
) -> Decision:
    """Fire `trigger` on `circuit` at `now` as the declared machine would; pure.

    `hold`: until when a trip (from a failure's retry-after) or a force_open keeps the circuit
    open. `generation`: the generation of the circuit a permit's call was admitted under; an
    outcome from an earlier one is fenced: it changes nothing, and a success or a failure is
    audited as a late result. A stored moment far ahead of `now` is rebased first (see
    `rebased`); the decision then says the circuit changed, so that the rebase is stored.
    """
    if generation is not None and generation != circuit.generation and trigger in OUTCOMES:
        late = trigger is not Trigger.RELEASE
        return Decision(False, now, circuit, circuit, late, FENCED if late else None, False)
    base = rebased(circuit, now, config)
    step = select_step(base.state, trigger, lambda name: GUARDS[name](base, now, config))
    if step is None:
        return Decision(False, now, base, base, False, None, base is not circuit)
    after = base
    for effect in step.effects:
        after = EFFECTS[effect](after, now, hold)
    if step.dest is not None:
        after = replace(after, state=step.dest, generation=after.generation + 1)
    changed = after is not circuit and after != circuit
    return Decision(True, now, base, after, step.dest is not None, step.passing_guard, changed)


def rebased(circuit: Circuit, now: datetime, config: CircuitBreakerConfig) -> Circuit:
    """`circuit` with a moment stored more than one cooldown ahead of `now` treated as `now`.

    Such a moment was stamped by a clock that has since stepped back (or by a host far ahead
    of this one). Waiting for the clock to pass it again could hold a circuit open for as long
    as the step; rebased, an Open circuit waits one cooldown (and keeps the length of its
    Retry-After hold) from the moment the step is noticed, and a HalfOpen probe budget renews
    one probe_timeout from then. A smaller lag still counts as no time passed, as the seed's
    monotonic clock would. An operator's force_open keeps the moment it was given.
    """
    if circuit.state is CircuitState.OPEN:
        stamped = circuit.last_failure_at
        if stamped is not None and stamped - now > config.cooldown:
            held_until = circuit.open_until
            return replace(
                circuit,
                last_failure_at=now,
                open_until=None if held_until is None else now + (held_until - stamped),
            )
    elif circuit.state is CircuitState.HALF_OPEN:
        stamped = circuit.half_open_since
        if stamped is not None and stamped - now > config.cooldown:
            return replace(circuit, half_open_since=now)
    return circuit


_ANY_TIME = (datetime(1970, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))


def unchanged_by(circuit: Circuit, trigger: Trigger) -> bool:
    """Whether `trigger` leaves `circuit` exactly as it is, unaudited, whatever the time and
    the settings: for `check`, that it admits the call.

    True when the first transition declared for the circuit's state on `trigger` has no
    guards and no destination, and its effects return the very same circuit at any time
    (a check on Closed, a success on a clean Closed circuit), or when none is declared (a
    success on ForcedOpen; not for a check, which then rejects). What the hot path may
    answer without reading the clock or deciding.
    """
    steps = _STEPS.get((circuit.state, trigger))
    if not steps:
        return trigger is not Trigger.CHECK
    step = steps[0]
    if step.guards or step.dest is not None:
        return False
    return all(
        EFFECTS[effect](circuit, now, None) is circuit
        for effect in step.effects
        for now in _ANY_TIME
    )


FENCED = "fenced"  # Decision.guard of a late outcome


def audit_reason(decision: Decision, config: CircuitBreakerConfig, given: str | None) -> str | None:
    """The reason an audit row gives: the caller's, else what the guard says; a late outcome
    says it was not applied, with the caller's reason after it."""
    if decision.guard == FENCED:
        late = (
            f"late result of a call admitted under an earlier generation (the circuit is at "
            f"generation {decision.before.generation}): not applied"
        )
        return late if given is None else f"{late}; {given}"
    return given or describe(decision, config)


def audited(
    key: str,
    trigger: Trigger,
    decision: Decision,
    cause: Cause,
    actor: str,
    config: CircuitBreakerConfig,
) -> Transition:
    """What the audit row of `decision` says: the one place both the store's row and the
    listeners' Transition come from. A late result records no hold: it set none."""
    after = decision.after
    asked = None if decision.guard == FENCED else cause.retry_after
    held = decision.guard != FENCED and after.state in (CircuitState.OPEN, CircuitState.FORCED_OPEN)
    return Transition(
        key=key,
        from_state=decision.before.state,
        to_state=after.state,
        trigger=trigger.value,
        at=decision.now,
        consecutive_failures=after.consecutive_failures,
        reason=audit_reason(decision, config, cause.reason),
        actor=actor,
        generation=after.generation,
        error_type=cause.error_type,
        status_code=cause.status_code,
        retry_after=None if asked is None else asked.total_seconds(),
        open_until=after.open_until if held else None,
    )


def describe(decision: Decision, config: CircuitBreakerConfig) -> str | None:
    """The audit reason of a transition that a guard let fire, when the caller gave none."""
    if decision.guard == "hold_elapsed":
        return "forced open period ended"
    if decision.guard == "cooldown_elapsed":
        before = decision.before
        tripped, held_until = before.last_failure_at, before.open_until
        if held_until is not None and (tripped is None or held_until > tripped + config.cooldown):
            # The trip's Retry-After outlasted the cooldown: the hold is what ended.
            return f"Retry-After hold ended (held until {held_until:%Y-%m-%d %H:%M:%S}Z)"
        return f"cooldown of {config.cooldown.total_seconds():g}s elapsed"
    if decision.guard == "probe_timed_out":
        assert config.probe_timeout is not None
        return (
            f"no probe result within {config.probe_timeout.total_seconds():g}s; "
            "probe budget renewed"
        )
    if decision.guard == "threshold_reached":
        return f"{decision.after.consecutive_failures} consecutive failures"
    return None


def retry_after(circuit: Circuit, now: datetime, config: CircuitBreakerConfig) -> float | None:
    """Seconds until `check` could admit a call on this circuit, or None when unknown."""
    circuit = rebased(circuit, now, config)
    if decide(circuit, Trigger.CHECK, now, config).fired:
        return 0.0
    # Not admitted, so the moment is stored and lies ahead: wait until it passes (counting
    # the time a clock that went backwards must first make up).
    if circuit.state is CircuitState.FORCED_OPEN:
        return None if circuit.open_until is None else (circuit.open_until - now).total_seconds()
    if circuit.state is CircuitState.OPEN and circuit.last_failure_at is not None:
        cooled = circuit.last_failure_at + config.cooldown
        until = cooled if circuit.open_until is None else max(cooled, circuit.open_until)
        return (until - now).total_seconds()
    if config.probe_timeout is not None and circuit.half_open_since is not None:
        return (circuit.half_open_since + config.probe_timeout - now).total_seconds()
    return None  # only a reported probe result can reopen the way


def _condition(guards: tuple[tuple[str, bool], ...]) -> str:
    return " and ".join(name if target else f"not {name}" for name, target in guards)


def mermaid() -> str:
    """The declared machine as a Mermaid state diagram (state changes only).

    A label shows every condition for its transition to fire, including that the
    transitions declared before it for the same state and trigger did not.
    """
    lines = ["stateDiagram-v2", f"    [*] --> {MACHINE.initial}"]
    for (source, trigger), steps in _STEPS.items():
        for position, step in enumerate(steps):
            earlier = [s.guards for s in steps[:position] if s.guards]
            conditions = [
                _condition(((g[0][0], not g[0][1]),)) if len(g) == 1 else f"not ({_condition(g)})"
                for g in earlier
            ]
            if step.guards:
                conditions.append(_condition(step.guards))
            if step.dest is None:
                continue
            label = f"{trigger.value} [{' and '.join(conditions)}]" if conditions else trigger.value
            lines.append(f"    {source.value} --> {step.dest.value} : {label}")
    return "\n".join(lines) + "\n"
