"""durable-breaker: a durable, shared, audited per-key circuit breaker on SQLite or PostgreSQL."""

from ._breaker import CircuitBreaker, KeyStatus
from ._config import CircuitBreakerConfig
from ._errors import (
    CircuitOpenError,
    DurableBreakerError,
    InvalidArgumentError,
    SchemaError,
    StoreError,
    StoreUnavailableError,
    UnknownKeyError,
)
from ._state import CircuitState, Transition

__all__ = [
    "CircuitBreaker",
    "CircuitBreakerConfig",
    "CircuitOpenError",
    "CircuitState",
    "DurableBreakerError",
    "InvalidArgumentError",
    "KeyStatus",
    "SchemaError",
    "StoreError",
    "StoreUnavailableError",
    "Transition",
    "UnknownKeyError",
]
