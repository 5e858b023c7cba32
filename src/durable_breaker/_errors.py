"""The library's exceptions: one root, and the few failures a caller can act on."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._state import CircuitState


class DurableBreakerError(Exception):
    """A durable-breaker operation failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.__doc__)


class InvalidArgumentError(DurableBreakerError, ValueError):
    """A setting, URL or argument is invalid."""


class StoreError(DurableBreakerError):
    """The database could not carry out an operation."""


class StoreUnavailableError(StoreError):
    """The database is unreachable, locked or too slow to answer within store_timeout.

    `unreachable` is True when no connection could be made or kept, False when the
    database answered but a lock or statement timed out.
    """

    def __init__(self, message: str | None = None, *, unreachable: bool = True) -> None:
        super().__init__(message)
        self.unreachable = unreachable

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild_unavailable, (str(self), self.unreachable)


def _rebuild_unavailable(message: str, unreachable: bool) -> StoreUnavailableError:
    return StoreUnavailableError(message, unreachable=unreachable)


class SchemaError(DurableBreakerError):
    """The database schema is missing, outdated, newer than this library, or not ours."""


class UnknownKeyError(DurableBreakerError, LookupError):
    """No circuit is stored for that key."""


class CircuitOpenError(DurableBreakerError):
    """A call was rejected because its circuit is open."""

    def __init__(self, key: str, state: CircuitState, retry_after: float | None) -> None:
        # The message is the seed's, word for word: callers match on it.
        super().__init__(f"circuit breaker open for model {key}")
        self.key = key
        self.state = state
        self.retry_after = retry_after

    def __reduce__(self) -> tuple[type[CircuitOpenError], tuple[str, CircuitState, float | None]]:
        # Rebuilt from its fields, so it survives pickling between worker processes.
        return type(self), (self.key, self.state, self.retry_after)
