"""Reliability figures: the long stress run, SIGKILL rounds and an outage, on each backend.

The stress run and the kill rounds are the harness the test suite runs in short
(tests/stress.py); here they run longer and print what they found. Usage, from the
repository root:

    python benchmarks/stress.py [--postgres URL] [--processes 8] [--threads 4]
                                [--calls 300] [--kill-rounds 200] [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.stress

from durable_breaker import (
    CircuitBreaker,
    CircuitBreakerConfig,
    _outage,
)
from tests.stress import kill_rounds, run_stress
from tests.tcp_proxy import TcpProxy


@contextlib.contextmanager
def postgres_schema(url: str) -> Iterator[str]:
    """A schema of its own on the server, dropped afterwards; yields the URL that selects it."""
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(sa.make_url(url).set(drivername="postgresql+psycopg"))
    with admin.begin() as connection:
        connection.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as connection:
            connection.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.dispose()


def stress(url: str, args: argparse.Namespace) -> dict[str, Any]:
    summary = run_stress(url, args.processes, args.threads, args.calls)
    result = asdict(summary) | {"lost_updates": summary.lost_updates}
    print(
        f"  stress: {summary.processes} processes x {summary.threads} threads, "
        f"{summary.operations} operations in {summary.seconds:.1f} s "
        f"({summary.operations / summary.seconds:.0f}/s)\n"
        f"    probes: {summary.probes_admitted} admitted in {summary.episodes} half-open "
        f"episodes, at most {summary.most_probes_in_an_episode} in one (budget "
        f"{summary.budget}); episodes missing from the audit trail: "
        f"{len(summary.unaudited_episodes)}\n"
        f"    failures: {sum(summary.failures_made.values())} made, "
        f"{sum(summary.failures_stored.values())} stored, lost updates: {summary.lost_updates}\n"
        f"    errors surfaced: {len(summary.errors)}; broken audit chains: "
        f"{len(summary.broken_chains)}"
    )
    return result


def kills(url: str, rounds: int) -> dict[str, Any]:
    summary = kill_rounds(url, rounds)
    print(
        f"  SIGKILL: {summary.rounds} rounds, {summary.transitions} audited transitions, "
        f"problems found: {len(summary.problems)}"
    )
    return asdict(summary)


class _Recovered(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.at: float | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if "answers again after" in record.getMessage():
            self.at = time.perf_counter()


def outage(url: str, calls: int = 2000, seconds: float = 5.0) -> dict[str, Any]:
    """Fallback decisions while a TCP proxy in front of PostgreSQL is cut, and the recovery."""
    direct = sa.make_url(url)
    proxy = TcpProxy((direct.host or "127.0.0.1", direct.port or 5432))
    proxied = direct.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    recovered = _Recovered()
    logging.getLogger("durable_breaker").addHandler(recovered)
    config = CircuitBreakerConfig(store_timeout=timedelta(seconds=2))
    try:
        with CircuitBreaker(proxied, config, namespace="outage") as breaker:
            breaker.check("gpt-4o")

            def per_call_us() -> float:
                start = time.perf_counter()
                for _ in range(calls):
                    breaker.check("gpt-4o")
                return (time.perf_counter() - start) / calls * 1e6

            healthy = statistics.median(per_call_us() for _ in range(5))
            proxy.cut()
            attempts = proxy.accepted
            cut_at = time.perf_counter()
            samples = []
            while time.perf_counter() - cut_at < seconds:  # long enough for a few rechecks
                samples.append(per_call_us())
            during = statistics.median(samples)
            outage_s = time.perf_counter() - cut_at
            attempts = proxy.accepted - attempts
            proxy.restore()
            restored_at = time.perf_counter()
            while recovered.at is None:
                breaker.check("gpt-4o")
                time.sleep(0.001)
            recovery_s = recovered.at - restored_at
    finally:
        logging.getLogger("durable_breaker").removeHandler(recovered)
        proxy.close()
    print(
        f"  outage (fallback): check {healthy:.0f} us healthy, {during:.1f} us while cut "
        f"(x{during / healthy:.3f}); {attempts} connection attempts in {outage_s:.1f} s of "
        f"outage; database authoritative again {recovery_s:.2f} s after it came back "
        f"(recheck interval {_outage.RECHECK_INTERVAL_S:g} s)"
    )
    return {
        "check_healthy_us": healthy,
        "check_during_outage_us": during,
        "connection_attempts_during_outage": attempts,
        "outage_seconds": outage_s,
        "recovery_seconds": recovery_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--postgres", metavar="URL", help="also run on this PostgreSQL")
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--calls", type=int, default=300, help="per thread and phase")
    parser.add_argument("--kill-rounds", type=int, default=200)
    parser.add_argument("--json", metavar="FILE", help="also write the figures here")
    args = parser.parse_args()
    results: dict[str, Any] = {}
    print("SQLite (a file in a temporary folder)")
    with tempfile.TemporaryDirectory() as folder:
        results["sqlite"] = {
            "stress": stress(f"sqlite:///{folder}/stress.db", args),
            "kills": kills(f"sqlite:///{folder}/kills.db", args.kill_rounds),
        }
    if args.postgres:
        print("PostgreSQL (a schema of its own, dropped afterwards)")
        results["postgresql"] = {}
        with postgres_schema(args.postgres) as url:
            results["postgresql"]["stress"] = stress(url, args)
        with postgres_schema(args.postgres) as url:
            results["postgresql"]["kills"] = kills(url, args.kill_rounds)
        with postgres_schema(args.postgres) as url:
            results["postgresql"]["outage"] = outage(url)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
