"""durable-breaker: a durable, shared, audited per-key circuit breaker on SQLite or PostgreSQL."""

from ._async import AsyncCircuitBreaker
from ._breaker import CircuitBreaker
from ._classify import is_llm_failure
from ._common import KeyStatus
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
from ._explain import Explanation
from ._permit import AsyncPermit, Permit
from ._state import CircuitState, Policy, Transition

__all__ = [
    "AsyncCircuitBreaker",
    "AsyncPermit",
    "CircuitBreaker",
    "CircuitBreakerConfig",
    "CircuitOpenError",
    "CircuitState",
    "DurableBreakerError",
    "Explanation",
    "InvalidArgumentError",
    "KeyStatus",
    "Permit",
    "Policy",
    "SchemaError",
    "StoreError",
    "StoreUnavailableError",
    "Transition",
    "UnknownKeyError",
    "is_llm_failure",
]
