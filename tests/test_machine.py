"""The declared `transitions` machine, its compiled table, and the pure decisions drawn from it."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from durable_breaker import CircuitBreakerConfig, CircuitState
from durable_breaker._machine import (
    EFFECTS,
    GUARDS,
    MACHINE,
    Trigger,
    decide,
    mermaid,
    retry_after,
    select_step,
)
from durable_breaker._state import Circuit

NOW = datetime(2026, 1, 1, tzinfo=UTC)


class _Probe:
    """A throwaway model: guards answer from a table, effects are recorded by name."""

    def __init__(self, outcomes: dict[str, bool]) -> None:
        self.outcomes = outcomes
        self.effects: list[str] = []


for _name in GUARDS:
    setattr(_Probe, _name, lambda self, _n=_name: self.outcomes[_n])
for _name in EFFECTS:
    setattr(_Probe, _name, lambda self, _n=_name: self.effects.append(_n))

_GUARD_OUTCOMES = [
    dict(zip(GUARDS, values, strict=True))
    for values in itertools.product([False, True], repeat=len(GUARDS))
]


@pytest.mark.parametrize("state", list(CircuitState))
@pytest.mark.parametrize("trigger", list(Trigger))
@pytest.mark.parametrize(
    "outcomes", _GUARD_OUTCOMES, ids=lambda o: "".join("TF"[not v] for v in o.values())
)
def test_compiled_table_fires_what_the_transitions_machine_fires(
    state: CircuitState, trigger: Trigger, outcomes: dict[str, bool]
) -> None:
    probe: Any = _Probe(outcomes)  # `transitions` adds `trigger` and `state` to it
    MACHINE.add_model(probe, initial=state.value)
    try:
        fired = probe.trigger(trigger.value)
        machine_result = (fired, probe.state, probe.effects)
    finally:
        MACHINE.remove_model(probe)
    step = select_step(state, trigger, outcomes.__getitem__)
    table_result = (
        (False, state.value, [])
        if step is None
        else (True, (step.dest or state).value, list(step.effects))
    )
    assert table_result == machine_result


def test_failures_and_operator_triggers_always_fire_success_all_but_in_forced_open() -> None:
    operator = [Trigger.RESET, Trigger.FORCE_OPEN, Trigger.DISABLE]
    for state, trigger, outcomes in itertools.product(
        CircuitState, [Trigger.FAILURE, Trigger.SUCCESS, *operator], _GUARD_OUTCOMES
    ):
        fires = select_step(state, trigger, outcomes.__getitem__) is not None
        assert fires is not (state is CircuitState.FORCED_OPEN and trigger is Trigger.SUCCESS)


def test_a_release_gives_back_only_a_taken_half_open_probe() -> None:
    config = CircuitBreakerConfig(half_open_max=2)
    probing = Circuit(CircuitState.HALF_OPEN, 5, 2, NOW, NOW, generation=3)
    released = decide(probing, Trigger.RELEASE, NOW, config)
    assert released.fired and not released.audited
    assert released.after == Circuit(CircuitState.HALF_OPEN, 5, 1, NOW, NOW, generation=3)
    for state in (CircuitState.CLOSED, CircuitState.OPEN, CircuitState.DISABLED):
        assert not decide(Circuit(state), Trigger.RELEASE, NOW, config).needs_write
    spent_none = Circuit(CircuitState.HALF_OPEN, 5, 0, NOW, NOW)
    assert not decide(spent_none, Trigger.RELEASE, NOW, config).needs_write


def test_the_module_machine_keeps_no_models() -> None:
    assert MACHINE.models == []


def test_diagram_draws_every_state_change_of_the_declaration() -> None:
    diagram = mermaid()
    assert diagram.startswith("stateDiagram-v2\n    [*] --> closed\n")
    assert "    closed --> open : failure [threshold_reached]" in diagram
    assert "    open --> half_open : check [cooldown_elapsed]" in diagram
    assert (
        "    half_open --> half_open : check [not probe_budget_left and probe_timed_out]" in diagram
    )
    assert "    half_open --> open : failure" in diagram
    assert "    half_open --> closed : success" in diagram
    external = sum(
        1
        for event in MACHINE.events.values()
        for ts in event.transitions.values()
        for t in ts
        if t.dest is not None
    )
    assert diagram.count(" --> ") - 1 == external


def test_internal_transitions_change_counts_but_are_not_audited() -> None:
    config = CircuitBreakerConfig(failure_threshold=3)
    decision = decide(Circuit(), Trigger.FAILURE, NOW, config)
    assert decision.fired and decision.changed and not decision.audited
    assert decision.after == Circuit(consecutive_failures=1, last_failure_at=NOW)


def test_probe_renewal_is_an_audited_half_open_to_half_open_transition() -> None:
    config = CircuitBreakerConfig(probe_timeout=timedelta(seconds=30))
    spent = Circuit(CircuitState.HALF_OPEN, 5, 1, NOW, NOW)
    assert not decide(spent, Trigger.CHECK, NOW + timedelta(seconds=29.999999), config).fired
    renewed = decide(spent, Trigger.CHECK, NOW + timedelta(seconds=30), config)
    assert renewed.fired and renewed.audited
    assert renewed.after == Circuit(
        CircuitState.HALF_OPEN, 5, 1, NOW, NOW + timedelta(seconds=30), generation=1
    )


def test_without_probe_timeout_a_spent_half_open_rejects_forever() -> None:
    config = CircuitBreakerConfig(probe_timeout=None)
    spent = Circuit(CircuitState.HALF_OPEN, 5, 1, NOW, NOW)
    assert not decide(spent, Trigger.CHECK, NOW + timedelta(days=365), config).fired
    assert retry_after(spent, NOW, config) is None


def test_retry_after_counts_down_the_cooldown() -> None:
    config = CircuitBreakerConfig(cooldown=timedelta(seconds=30))
    tripped = Circuit(CircuitState.OPEN, 5, 0, NOW, None)
    assert retry_after(tripped, NOW + timedelta(seconds=12), config) == 18.0
    assert retry_after(tripped, NOW + timedelta(seconds=45), config) == 0.0


def test_a_clock_that_went_backwards_does_not_end_the_cooldown() -> None:
    config = CircuitBreakerConfig(cooldown=timedelta(seconds=30))
    tripped = Circuit(CircuitState.OPEN, 5, 0, NOW, None)
    assert not decide(tripped, Trigger.CHECK, NOW - timedelta(hours=1), config).fired


def test_retry_after_counts_the_time_a_clock_that_went_backwards_must_make_up() -> None:
    config = CircuitBreakerConfig(cooldown=timedelta(seconds=10))
    tripped = Circuit(CircuitState.OPEN, 5, 0, NOW, None)
    behind = NOW - timedelta(seconds=5)
    assert retry_after(tripped, behind, config) == 15.0
    assert not decide(tripped, Trigger.CHECK, behind + timedelta(seconds=14.999999), config).fired
    assert decide(tripped, Trigger.CHECK, behind + timedelta(seconds=15), config).fired


def test_a_zero_cooldown_admits_even_behind_the_stored_time_like_the_seed() -> None:
    config = CircuitBreakerConfig(cooldown=timedelta(0))
    tripped = Circuit(CircuitState.OPEN, 5, 0, NOW, None)
    assert decide(tripped, Trigger.CHECK, NOW - timedelta(seconds=1), config).fired
