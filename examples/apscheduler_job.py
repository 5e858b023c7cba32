"""An APScheduler job that calls a (simulated) LLM through the breaker.

While the model's circuit is open the job does not fail: it reschedules itself for when the
breaker says a call may be admitted again (`CircuitOpenError.retry_after`, which honours the
provider's Retry-After). Every process running this job shares the circuit through the
database, and every transition lands in its audit trail.

    pip install 'durable-breaker' 'apscheduler>=3.10,<4'
    python examples/apscheduler_job.py [--url sqlite:///example.db]
"""

from __future__ import annotations

import argparse
import itertools
import logging
from datetime import UTC, datetime, timedelta

from apscheduler.schedulers.blocking import BlockingScheduler  # type: ignore[import-untyped]

from durable_breaker import CircuitBreaker, CircuitBreakerConfig, CircuitOpenError


class ProviderError(Exception):
    """Shaped like an openai/anthropic status error: the classifier reads its attributes."""

    def __init__(self, status_code: int, retry_after_s: int) -> None:
        super().__init__(f"HTTP {status_code}: overloaded")
        self.status_code = status_code
        self.headers = {"retry-after": str(retry_after_s)}


class FlakyModel:
    """A simulated LLM: overloaded (503, Retry-After: 2) for its first three calls."""

    def __init__(self) -> None:
        self.calls = itertools.count(1)

    def complete(self, prompt: str) -> str:
        if next(self.calls) <= 3:
            raise ProviderError(503, retry_after_s=2)
        return f"summary of {prompt!r}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="sqlite:///example.db")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    config = CircuitBreakerConfig(failure_threshold=2, cooldown=timedelta(seconds=1))
    breaker = CircuitBreaker(args.url, config, namespace="example")
    breaker.on_transition(
        lambda t: print(f"  transition {t.from_state} -> {t.to_state}: {t.reason or t.trigger}")
    )
    model = FlakyModel()
    scheduler = BlockingScheduler()

    def log(message: str) -> None:
        print(f"{datetime.now(UTC):%H:%M:%S} {message}")

    def retry(document: str, after_s: float) -> None:
        later = datetime.now(UTC) + timedelta(seconds=after_s)
        scheduler.add_job(summarize, "date", args=[document], run_date=later)

    def summarize(document: str) -> None:
        try:
            with breaker.guard("gpt-4o"):
                log(model.complete(document))
            scheduler.shutdown(wait=False)  # done: the demo ends
        except CircuitOpenError as open_circuit:
            wait = open_circuit.retry_after or 1.0  # None: only a reset reopens the way
            log(f"circuit {open_circuit.state}: rescheduled in {wait:.1f}s")
            retry(document, wait)
        except ProviderError as error:
            log(f"call failed ({error}); retrying in 0.2s")
            retry(document, 0.2)

    scheduler.add_job(summarize, "date", args=["quarterly report"])
    try:
        scheduler.start()
    finally:
        breaker.close()


if __name__ == "__main__":
    main()
