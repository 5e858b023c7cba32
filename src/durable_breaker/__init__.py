"""durable-breaker: a durable, shared, audited per-key circuit breaker on SQLite or PostgreSQL."""

from ._breaker import CircuitBreaker, KeyStatus
from ._config import CircuitBreakerConfig
from ._errors import (
    CircuitOpenError,
    DurableBreakerError,
    InvalidArgumentError,
    SchemaError,
    StoreError,
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
    "Transition",
    "UnknownKeyError",
]

# Show the public path (durable_breaker.CircuitOpenError) in tracebacks and reprs.
for _name in __all__:
    globals()[_name].__module__ = __name__
del _name
