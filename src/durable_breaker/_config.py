"""CircuitBreakerConfig: the frozen, validated settings of a breaker."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal, get_args

from ._classify import is_llm_failure
from ._errors import InvalidArgumentError

StoreErrorMode = Literal["fallback", "allow", "deny", "raise"]
# Longer settings are mistakes, and would overflow date arithmetic or driver settings.
_LONGEST_DURATION = timedelta(days=3660)
_LONGEST_WAIT = timedelta(days=1)


@dataclass(frozen=True, kw_only=True, slots=True)
class CircuitBreakerConfig:
    """How many failures open a circuit, how long it stays open, how it probes.

    The defaults are the seed's (5 failures, 30 s cooldown, 1 probe), plus
    ``probe_timeout``: a spent probe budget renews once it is this old, so a probe
    that never reports back cannot block a key forever. ``None`` keeps the seed's
    behaviour exactly.

    ``on_store_error`` says what ``check`` and ``record_*`` do while the database is
    unreachable: ``"fallback"`` decides in process from the last state this process saw,
    ``"allow"`` admits every call, ``"deny"`` rejects every call, ``"raise"`` raises
    ``StoreUnavailableError``. ``store_timeout`` bounds every wait for the database
    (connecting, a lock, a statement, retries); ``cached_keys`` bounds how many keys'
    states a process keeps in memory (for ``"fallback"`` and the read cache), and how many
    rows each thread's SQLite read connection reuses (at most 4,096 there).

    ``is_failure`` says which exceptions raised inside ``guard``/``protect`` count as
    failures (by default `is_llm_failure`: timeouts, connection errors, 408, 429, 5xx, quota
    and unknown errors count; other 4xx, context-length and content-filter errors, the
    caller's mistakes and cancellation do not; docs/errors.md). A counted error's
    Retry-After keeps a circuit it trips open at least that long, up to ``max_retry_after``.
    """

    failure_threshold: int = 5
    cooldown: timedelta = timedelta(seconds=30)
    half_open_max: int = 1
    probe_timeout: timedelta | None = timedelta(seconds=30)
    on_store_error: StoreErrorMode = "fallback"
    store_timeout: timedelta = timedelta(seconds=5)
    cached_keys: int = 10_000
    is_failure: Callable[[BaseException], bool] = is_llm_failure
    max_retry_after: timedelta = timedelta(minutes=10)

    def __post_init__(self) -> None:
        for name in ("failure_threshold", "half_open_max", "cached_keys"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidArgumentError(f"{name} must be an integer >= 1, got {value!r}")
        for name in ("cooldown", "probe_timeout", "store_timeout", "max_retry_after"):
            value = getattr(self, name)
            if value is None and name == "probe_timeout":
                continue
            longest = _LONGEST_WAIT if name == "store_timeout" else _LONGEST_DURATION
            if not isinstance(value, timedelta) or not timedelta(0) <= value <= longest:
                raise InvalidArgumentError(
                    f"{name} must be a datetime.timedelta from 0 to {longest.days} days, "
                    f"got {value!r}"
                )
        if self.store_timeout <= timedelta(0):
            raise InvalidArgumentError(
                f"store_timeout must be a positive datetime.timedelta, got {self.store_timeout!r}"
            )
        if not callable(self.is_failure):
            raise InvalidArgumentError(
                f"is_failure must be a callable taking an exception, got {self.is_failure!r}"
            )
        if self.on_store_error not in get_args(StoreErrorMode):
            raise InvalidArgumentError(
                f"on_store_error must be one of {', '.join(map(repr, get_args(StoreErrorMode)))}, "
                f"got {self.on_store_error!r}"
            )
