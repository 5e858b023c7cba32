"""Hot-path cost: `check` + `record_success` on a healthy key, as a ratio to one raw driver read.

Each repetition times the breaker and the raw primary-key SELECT of the same row back to back
in this process, so the ratio holds on a noisy machine. Usage:

    python benchmarks/hot_path.py [--postgres URL] [--repeat 7] [--calls 2000]
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from durable_breaker import CircuitBreaker, CircuitBreakerConfig


def _per_call_us(fn: Callable[[], object], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e6


def _report(name: str, cases: dict[str, Callable[[], object]], repeat: int, calls: int) -> None:
    samples: dict[str, list[float]] = {label: [] for label in cases}
    for _ in range(repeat):  # interleaved: every case once per repetition
        for label, fn in cases.items():
            samples[label].append(_per_call_us(fn, calls))
    base = statistics.median(samples["raw driver read"])
    print(f"\n{name} ({repeat} repetitions x {calls} calls)")
    for label, values in samples.items():
        median = statistics.median(values)
        print(
            f"  {label:<32} median {median:8.1f} us  (min {min(values):.1f} .. max "
            f"{max(values):.1f})  x{median / base:.2f} of the raw read"
        )


def _breaker_cases(breaker: CircuitBreaker, key: str) -> dict[str, Callable[[], object]]:
    def guarded_call() -> None:
        breaker.check(key)
        breaker.record_success(key)

    return {"check": lambda: breaker.check(key), "check + record_success": guarded_call}


def bench_sqlite(repeat: int, calls: int) -> None:
    folder = Path(tempfile.mkdtemp())
    url = f"sqlite:///{folder / 'bench.db'}"
    with CircuitBreaker(url, CircuitBreakerConfig(failure_threshold=10**9)) as breaker:
        breaker.record_failure("gpt-4o")  # store the row, then clear it: a healthy stored key
        breaker.record_success("gpt-4o")
        raw = sqlite3.connect(folder / "bench.db", isolation_level=None)
        query = "SELECT state FROM durable_breaker_circuit WHERE namespace = ? AND key = ?"
        cases = {
            "raw driver read": lambda: raw.execute(query, ("default", "gpt-4o")).fetchone(),
            **_breaker_cases(breaker, "gpt-4o"),
        }
        _report("SQLite (WAL), healthy key", cases, repeat, calls)
        raw.close()


def bench_postgres(url: str, repeat: int, calls: int) -> None:
    """Measure in a schema of its own, dropped afterwards: the server is left as it was."""
    import psycopg

    raw_url = url.replace("postgresql+psycopg://", "postgresql://")
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(raw_url, autocommit=True) as admin:
        admin.execute(f'CREATE SCHEMA "{schema}"')
        try:
            with psycopg.connect(
                raw_url, autocommit=True, prepare_threshold=0, options=f"-csearch_path={schema}"
            ) as raw:
                _bench_postgres(
                    f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}",
                    raw,
                    repeat,
                    calls,
                )
        finally:
            admin.execute(f'DROP SCHEMA "{schema}" CASCADE')


def _bench_postgres(url: str, raw: Any, repeat: int, calls: int) -> None:
    with CircuitBreaker(url, CircuitBreakerConfig(failure_threshold=10**9)) as breaker:
        breaker.record_failure("gpt-4o")
        breaker.record_success("gpt-4o")
        query = "SELECT state FROM durable_breaker_circuit WHERE namespace = %s AND key = %s"
        cases = {
            "raw driver read": lambda: raw.execute(query, ("default", "gpt-4o")).fetchone(),
            **_breaker_cases(breaker, "gpt-4o"),
        }
        _report("PostgreSQL, healthy key", cases, repeat, calls // 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--postgres", metavar="URL", help="also measure on this PostgreSQL")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    bench_sqlite(args.repeat, args.calls)
    if args.postgres:
        bench_postgres(args.postgres, args.repeat, args.calls)


if __name__ == "__main__":
    main()
