"""CircuitBreakerConfig: the frozen, validated settings of a breaker."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from ._errors import InvalidArgumentError


@dataclass(frozen=True, kw_only=True, slots=True)
class CircuitBreakerConfig:
    """How many failures open a circuit, how long it stays open, how it probes.

    The defaults are the seed's (5 failures, 30 s cooldown, 1 probe), plus
    ``probe_timeout``: a spent probe budget renews once it is this old, so a probe
    that never reports back cannot block a key forever. ``None`` keeps the seed's
    behaviour exactly.
    """

    failure_threshold: int = 5
    cooldown: timedelta = timedelta(seconds=30)
    half_open_max: int = 1
    probe_timeout: timedelta | None = timedelta(seconds=30)

    def __post_init__(self) -> None:
        for name in ("failure_threshold", "half_open_max"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidArgumentError(f"{name} must be an integer >= 1, got {value!r}")
        for name in ("cooldown", "probe_timeout"):
            value = getattr(self, name)
            if value is None and name == "probe_timeout":
                continue
            if not isinstance(value, timedelta) or value < timedelta(0):
                raise InvalidArgumentError(
                    f"{name} must be a non-negative datetime.timedelta, got {value!r}"
                )
