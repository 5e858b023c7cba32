"""What both breakers (sync and asyncio) share, none of it I/O: settings, identity, the
clock, argument checks, transition listeners, and how results are reported."""

from __future__ import annotations

import functools
import logging
import os
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import NoReturn

from ._classify import error_type, reason_of, status_code, underlying
from ._classify import retry_after as retry_after_of
from ._config import CircuitBreakerConfig
from ._errors import CircuitOpenError, InvalidArgumentError, StoreUnavailableError
from ._machine import FENCED, Decision, Hold, Trigger, audited, retry_after
from ._outage import OutageTracker
from ._state import Cause, Circuit, CircuitState, Policy, StoredCircuit, Transition
from ._tables import MAX_ACTOR_LENGTH, MAX_NAMESPACE_LENGTH

_log = logging.getLogger("durable_breaker")
TransitionListener = Callable[[Transition], object]
RejectionListener = Callable[[str, CircuitState], object]


@dataclass(frozen=True, slots=True)
class KeyStatus:
    """One stored key as `status()` reports it.

    `retry_after` is computed with the policy stored with the circuit (the settings of the
    last process that decided for it), so every process and the CLI report the same wait.
    """

    key: str
    state: CircuitState
    consecutive_failures: int
    since: datetime | None  # when it entered its state; None if it never changed state
    # Seconds until a call could be admitted; 0 if now; None if unknown (only a probe's
    # result can end it, or the circuit was stored before policies were).
    retry_after: float | None
    open_until: datetime | None = None  # a hold: Retry-After of a trip, or force_open's until
    reason: str | None = None  # of the latest transition
    actor: str | None = None  # who made the latest transition
    policy: Policy | None = None  # the settings in force, and who stored them


def _type_and_status(error: BaseException) -> tuple[str | None, int | None]:
    """An error's type name and HTTP status for the audit trail; (None, None) when reading
    them fails: an odd error object must not keep its failure from counting. A wrapper is
    named by what it wraps (`underlying`)."""
    try:
        error = underlying(error)
        return error_type(error), status_code(error)
    except Exception:
        _log.exception("could not read the type or status of %r; not audited", error)
        return None, None


def config_of(policy: Policy) -> CircuitBreakerConfig:
    """A config deciding as `policy` does (its other settings: the defaults)."""
    return _configs(
        policy.failure_threshold, policy.cooldown, policy.half_open_max, policy.probe_timeout
    )


@functools.lru_cache(maxsize=64)
def _configs(
    threshold: int, cooldown: timedelta, half_open_max: int, probe_timeout: timedelta | None
) -> CircuitBreakerConfig:
    return CircuitBreakerConfig(
        failure_threshold=threshold,
        cooldown=cooldown,
        half_open_max=half_open_max,
        probe_timeout=probe_timeout,
    )


def retry_after_by(circuit: Circuit, now: datetime, policy: Policy | None) -> float | None:
    """Seconds until `circuit` could admit a call at `now` under `policy`; without one (a
    row from before policies were stored), only what needs no settings is known."""
    if policy is not None:
        try:
            return retry_after(circuit, now, config_of(policy))
        except InvalidArgumentError:  # settings edited by hand out of range: unknown
            return None
    if circuit.state in (CircuitState.CLOSED, CircuitState.DISABLED):
        return 0.0
    if circuit.state is CircuitState.FORCED_OPEN and circuit.open_until is not None:
        return max(0.0, (circuit.open_until - now).total_seconds())
    return None


def storable(value: str) -> bool:
    """Whether every backend can store `value` as text: no NUL, valid UTF-8 (no lone surrogates)."""
    if "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_name(what: str, value: object, max_length: int) -> str:
    if not isinstance(value, str):
        raise InvalidArgumentError(f"{what} must be a str, got {type(value).__name__}")
    if not 0 < len(value) <= max_length or not storable(value):
        raise InvalidArgumentError(
            f"{what} must be 1 to {max_length} characters of valid text without NUL, "
            f"got {value[:40]!r}" + ("..." if len(value) > 40 else "")
        )
    return value


def check_reason(reason: object) -> None:
    if reason is not None and not (isinstance(reason, str) and storable(reason)):
        raise InvalidArgumentError(
            f"reason must be None or valid text without NUL, got {reason!r:.80}"
        )


def capped(wait: timedelta | None, cap: timedelta) -> timedelta | None:
    """A Retry-After wait, no longer than `cap`."""
    return None if wait is None else min(wait, cap)


def check_hold_until(until: object) -> Hold:
    """`force_open`'s `until`: None, an aware datetime (as UTC), or a positive timedelta."""
    if isinstance(until, datetime) and until.tzinfo is not None:
        return until.astimezone(UTC)
    if until is None or (isinstance(until, timedelta) and timedelta(0) < until <= _LONGEST_HOLD):
        return until
    raise InvalidArgumentError(
        "until must be None, a timezone-aware datetime or a positive timedelta of at most "
        f"{_LONGEST_HOLD.days} days, got {until!r}"
    )


_MAX_LIMIT = 2**63 - 1  # the largest LIMIT every backend accepts
_LONGEST_HOLD = timedelta(days=3660)  # a force_open longer than ten years is a mistake


def check_limit(limit: object) -> int | None:
    """`history`'s `limit`: None (all) or an integer every backend accepts."""
    if limit is not None and (
        isinstance(limit, bool) or not isinstance(limit, int) or not 0 <= limit <= _MAX_LIMIT
    ):
        raise InvalidArgumentError(
            f"limit must be None or an integer from 0 to {_MAX_LIMIT}, got {limit!r}"
        )
    return limit


def check_count(what: str, value: object, *, least: int = 0) -> int:
    """An integer argument of at least `least` (no bool)."""
    if isinstance(value, bool) or not isinstance(value, int) or not least <= value <= _MAX_LIMIT:
        raise InvalidArgumentError(f"{what} must be an integer >= {least}, got {value!r}")
    return value


def check_keys(keys: object) -> list[object]:
    """`status`'s `keys`: an iterable of keys (each checked by the caller), not one str."""
    if isinstance(keys, str | bytes) or not isinstance(keys, Iterable):
        raise InvalidArgumentError(
            f"keys must be an iterable of keys such as a list, got {keys!r:.80}"
            + (f"; for one key pass [{keys!r:.60}]" if isinstance(keys, str) else "")
        )
    return list(keys)


def check_states(states: object) -> list[CircuitState] | None:
    """`status`'s `states`: None (all), or CircuitStates or their values."""
    if states is None:
        return None
    if isinstance(states, str | bytes) or not isinstance(states, Iterable):
        raise InvalidArgumentError(f"states must be an iterable of states, got {states!r:.80}")
    checked = []
    for state in states:
        try:
            checked.append(CircuitState(state))
        except ValueError:
            known = ", ".join(s.value for s in CircuitState)
            raise InvalidArgumentError(
                f"unknown state {state!r:.40}: expected one of {known}"
            ) from None
    return checked


def check_retry_after(retry_after: object) -> timedelta | None:
    """`record_failure`'s `retry_after`: None or a timedelta (not positive: none)."""
    if retry_after is not None and not isinstance(retry_after, timedelta):
        raise InvalidArgumentError(
            f"retry_after must be None or a datetime.timedelta, got {retry_after!r}"
        )
    return None if retry_after is None or retry_after <= timedelta(0) else retry_after


class BreakerBase:
    """Settings, identity, clock and listeners of a breaker."""

    def __init__(
        self,
        config: CircuitBreakerConfig | None,
        *,
        clock: Callable[[], float],
        namespace: str,
        actor: str | None,
    ) -> None:
        self._config = config if config is not None else CircuitBreakerConfig()
        if not isinstance(self._config, CircuitBreakerConfig):
            raise InvalidArgumentError(
                f"config must be a CircuitBreakerConfig, got {type(config).__name__}"
            )
        self._namespace = check_name("namespace", namespace, MAX_NAMESPACE_LENGTH)
        self._actor = None if actor is None else check_name("actor", actor, MAX_ACTOR_LENGTH)
        if not callable(clock):
            raise InvalidArgumentError(
                f"clock must be a callable returning POSIX seconds, got {clock!r}"
            )
        self._clock = clock
        self._now()  # a clock that returns no time is refused now, not when a decision needs it
        self._outage: OutageTracker  # set by the breaker, which knows its database
        self._listeners: list[TransitionListener] = []
        self._rejection_listeners: list[RejectionListener] = []

    @property
    def config(self) -> CircuitBreakerConfig:
        """The settings this breaker decides with."""
        return self._config

    @property
    def namespace(self) -> str:
        """The breaker group this breaker reads and writes."""
        return self._namespace

    @property
    def actor(self) -> str:
        """Who the audit trail names for this breaker's changes (default host:pid)."""
        # Computed per write, not cached: a forked worker must not reuse its parent's pid.
        return self._actor or f"{socket.gethostname()}:{os.getpid()}"

    def _now(self) -> datetime:
        seconds = self._clock()
        try:
            return datetime.fromtimestamp(seconds, UTC)
        except (TypeError, ValueError, OverflowError, OSError) as error:
            raise InvalidArgumentError(
                f"the clock returned {seconds!r}; it must return POSIX seconds as a float"
            ) from error

    def _hold_of(self, error: BaseException | None) -> timedelta | None:
        """How long a failure from `error` holds a trip open: its Retry-After, capped (none
        when reading it fails: an odd error object must not keep its failure from counting)."""
        if error is None:
            return None
        try:
            wait = retry_after_of(error, self._now())
        except InvalidArgumentError:
            raise  # the clock's fault, not the error's
        except Exception:
            _log.exception("could not read a Retry-After from %r; none applied", error)
            return None
        return capped(wait, self._config.max_retry_after)

    def _transition(
        self, key: str, trigger: Trigger, decision: Decision, cause: Cause
    ) -> Transition:
        """The audited transition `decision` committed (as its audit row says it)."""
        return audited(key, trigger, decision, cause, self.actor, self._config)

    def _cause(self, trigger: Trigger, reason: str | None, error: BaseException | None) -> Cause:
        """The audit cause of a permit's failure or release: `reason`, and for a failure the
        error's type, HTTP status and Retry-After (capped)."""
        check_reason(reason)
        if trigger is not Trigger.FAILURE or error is None:
            return Cause(reason)
        return Cause(reason, *_type_and_status(error), self._hold_of(error))

    def _failure_cause(self, reason: str | None, retry_after: object, error: object) -> Cause:
        """`record_failure`'s cause: what the caller said, completed from `error`."""
        check_reason(reason)
        wait = capped(check_retry_after(retry_after), self._config.max_retry_after)
        if error is None:
            return Cause(reason, retry_after=wait)
        if not isinstance(error, BaseException):
            raise InvalidArgumentError(f"error must be None or an exception, got {error!r:.80}")
        return Cause(
            reason_of(error) if reason is None else reason,
            *_type_and_status(error),
            self._hold_of(error) if wait is None else wait,
        )

    def _key_status(self, stored: StoredCircuit, now: datetime) -> KeyStatus:
        """How `status` reports a stored key at `now`: its waits by the stored policy."""
        circuit, policy = stored.circuit, stored.policy
        return KeyStatus(
            key=stored.key,
            state=circuit.state,
            consecutive_failures=circuit.consecutive_failures,
            since=stored.since,
            retry_after=retry_after_by(circuit, now, policy),
            open_until=circuit.open_until,
            reason=stored.reason,
            actor=stored.actor,
            policy=policy,
        )

    def _announce(self, key: str, trigger: Trigger, decision: Decision, cause: Cause) -> None:
        """Tell the listeners about a committed transition; a failing one is only logged.
        A late result is audited but is no transition: they are not told."""
        if decision.guard == FENCED:
            return
        transition = self._transition(key, trigger, decision, cause)
        for listener in list(self._listeners):
            try:
                listener(transition)
            except Exception:
                _log.exception("on_transition callback %r failed (ignored)", listener)

    def on_transition(self, callback: TransitionListener) -> TransitionListener:
        """Call `callback(transition)` after each transition this breaker commits.

        It runs in the thread, and the process, that made the change (use `history` or
        `durable-breaker history --follow` to see every process's); an exception it raises is
        logged and ignored. Returns `callback`, so that it can be used as a decorator.
        """
        if not callable(callback):
            raise InvalidArgumentError(f"callback must be callable, got {callback!r}")
        self._listeners.append(callback)
        return callback

    def on_rejection(self, callback: RejectionListener) -> RejectionListener:
        """Call `callback(key, state)` each time this breaker rejects a call (before raising
        CircuitOpenError); an exception it raises is logged and ignored."""
        if not callable(callback):
            raise InvalidArgumentError(f"callback must be callable, got {callback!r}")
        self._rejection_listeners.append(callback)
        return callback

    def _reject(
        self,
        key: str,
        state: CircuitState,
        wait: float | None,
        cause: BaseException | None = None,
    ) -> NoReturn:
        """Tell the rejection listeners, then raise CircuitOpenError (from `cause`)."""
        for listener in list(self._rejection_listeners):
            try:
                listener(key, state)
            except Exception:
                _log.exception("on_rejection callback %r failed (ignored)", listener)
        if cause is not None:
            raise CircuitOpenError(key, state, wait) from cause
        raise CircuitOpenError(key, state, wait)

    def _admitted(self, key: str, decision: Decision) -> int:
        """The generation a `check` decision admitted a call under; rejects if it did not."""
        if not decision.fired:
            self._reject(
                key, decision.before.state, retry_after(decision.before, decision.now, self._config)
            )
        return decision.after.generation

    def _admitted_without_store(self, key: str, error: StoreUnavailableError) -> None:
        """A `check` the database could not answer: on_store_error "fallback" decides from
        what this process last saw, "allow" admits, "deny" rejects, "raise" raises `error`.
        An admitted call has no generation: the database's may differ from ours."""
        if self._config.on_store_error == "fallback":
            decision = self._outage.decide(key, Trigger.CHECK, self._now(), peek=False)
            self._admitted(key, decision)
            return
        if self._config.on_store_error == "allow":
            return
        if self._config.on_store_error == "deny":
            self._reject(key, CircuitState.OPEN, None, error)
        raise error

    def _available_without_store(self, error: StoreUnavailableError) -> bool:
        """`is_available` when the database could not answer."""
        if self._config.on_store_error == "raise":
            raise error
        return self._config.on_store_error == "allow"

    def _unless_unavailable(self, error: StoreUnavailableError) -> None:
        """Drop a record_* the database cannot take, unless on_store_error is "raise"."""
        if self._config.on_store_error == "raise":
            raise error
