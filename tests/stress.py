"""The stress harness: N processes x M threads hammer a few shared keys, then the database is
checked for what must hold. Shared by tests/test_stress.py (short) and benchmarks/stress.py.

Two phases run in every worker, each in its own namespace:
- guarded calls: check, then a simulated call that fails or succeeds, on a real clock with a
  short cooldown, so circuits trip, probe and close many times; every admitted probe is noted
  with the HalfOpen episode it was admitted in;
- lost updates: failures only, with a threshold no run reaches, counted per key.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from durable_breaker import CircuitBreaker, CircuitBreakerConfig, CircuitOpenError, CircuitState
from durable_breaker._machine import Trigger

from .processes import run_in_processes

KEYS = ("gpt-4o", "claude", "llama")
GUARDED = "stress-guarded"
COUNTED = "stress-counted"
GUARDED_CONFIG = CircuitBreakerConfig(
    failure_threshold=3,
    cooldown=timedelta(milliseconds=20),
    half_open_max=2,
    probe_timeout=timedelta(milliseconds=300),
    on_store_error="raise",  # an error must surface, not be ridden out
    store_timeout=timedelta(seconds=10),
)
COUNTED_CONFIG = CircuitBreakerConfig(
    failure_threshold=10**9, on_store_error="raise", store_timeout=timedelta(seconds=10)
)
FAILURE_RATE = 0.6  # of guarded calls
LOST_PROBE_RATE = 0.02  # admitted calls that never report back (their probes must time out)


@dataclass
class WorkerReport:
    operations: int = 0
    probes: list[tuple[str, str]] = field(default_factory=list)  # (key, episode start)
    failures: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)


def _guarded_calls(
    breaker: CircuitBreaker, rng: random.Random, calls: int, out: WorkerReport
) -> None:
    for _ in range(calls):
        key = rng.choice(KEYS)
        try:
            # `_fire` is `check` that also says what it decided: the probe's episode.
            decision = breaker._fire(key, Trigger.CHECK)
            assert decision is not None  # on_store_error="raise" never falls back
            out.operations += 1
            if not decision.fired:
                continue
            if decision.after.state is CircuitState.HALF_OPEN:
                since = decision.after.half_open_since
                assert since is not None
                out.probes.append((key, since.isoformat()))
            roll = rng.random()
            if roll < LOST_PROBE_RATE:
                continue
            if roll < FAILURE_RATE:
                breaker.record_failure(key, reason="stress")
            else:
                breaker.record_success(key)
            out.operations += 1
        except Exception as error:  # every other error is a finding
            out.errors.append(f"{type(error).__name__}: {error}")


def _counted_failures(
    breaker: CircuitBreaker, rng: random.Random, calls: int, out: WorkerReport
) -> None:
    for _ in range(calls):
        key = rng.choice(KEYS)
        try:
            breaker.record_failure(key)
            out.failures[key] += 1
            out.operations += 1
        except Exception as error:  # a failure that raised may or may not be stored: a finding
            out.errors.append(f"{type(error).__name__}: {error}")


def worker(url: str, threads: int, calls: int, seed: int) -> WorkerReport:
    """One process: in each phase `threads` threads share one breaker, `calls` calls each."""
    report = WorkerReport()
    for namespace, config, phase in (
        (GUARDED, GUARDED_CONFIG, _guarded_calls),
        (COUNTED, COUNTED_CONFIG, _counted_failures),
    ):
        # All processes start together on what may be an empty database: the migration
        # lock must let every one of them come up.
        with CircuitBreaker(url, config, namespace=namespace) as breaker:
            _in_threads(breaker, phase, threads, calls, seed, report)
    return report


def _in_threads(
    breaker: CircuitBreaker, phase: Any, threads: int, calls: int, seed: int, report: WorkerReport
) -> None:
    barrier = threading.Barrier(threads)
    lock = threading.Lock()

    def run(index: int) -> None:
        mine = WorkerReport()
        barrier.wait()
        phase(breaker, random.Random(f"{seed}-{index}"), calls, mine)
        with lock:
            report.operations += mine.operations
            report.probes += mine.probes
            report.failures.update(mine.failures)
            report.errors += mine.errors

    pool = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()


@dataclass
class StressSummary:
    processes: int
    threads: int
    seconds: float
    operations: int
    errors: list[str]
    episodes: int  # HalfOpen episodes in which a probe was admitted
    probes_admitted: int
    most_probes_in_an_episode: int
    budget: int  # half_open_max: the most any one episode may admit
    unaudited_episodes: list[tuple[str, str]]  # probes whose episode the audit trail lacks
    failures_made: dict[str, int]  # per key, in the lost-updates phase
    failures_stored: dict[str, int]
    broken_chains: list[str]

    @property
    def lost_updates(self) -> int:
        """Failures made but not stored (negative: stored more often than made)."""
        return sum(self.failures_made.values()) - sum(self.failures_stored.values())


def run_stress(url: str, processes: int, threads: int, calls: int, seed: int = 0) -> StressSummary:
    """Run the harness against `url` (both namespaces should be empty) and check the result."""
    started = time.perf_counter()
    reports = run_in_processes(worker, processes, url, threads, calls, seed)
    seconds = time.perf_counter() - started
    return _check(url, processes, threads, seconds, reports)


def _check(
    url: str, processes: int, threads: int, seconds: float, reports: list[WorkerReport]
) -> StressSummary:
    probes = Counter(probe for report in reports for probe in report.probes)
    failures = sum((report.failures for report in reports), Counter[str]())
    broken: list[str] = []
    episodes_audited: set[tuple[str, str]] = set()
    with CircuitBreaker(url, GUARDED_CONFIG, namespace=GUARDED) as guarded:
        for key in KEYS:
            trail = guarded.history(key)
            broken += chain_breaks(key, trail, guarded.state(key))
            episodes_audited |= {
                (key, t.at.isoformat()) for t in trail if t.to_state is CircuitState.HALF_OPEN
            }
    with CircuitBreaker(url, COUNTED_CONFIG, namespace=COUNTED) as counted:
        stored = {s.key: s.consecutive_failures for s in counted.status()}
    return StressSummary(
        processes=processes,
        threads=threads,
        seconds=seconds,
        operations=sum(report.operations for report in reports),
        errors=[error for report in reports for error in report.errors],
        episodes=len(probes),
        probes_admitted=sum(probes.values()),
        most_probes_in_an_episode=max(probes.values(), default=0),
        budget=GUARDED_CONFIG.half_open_max,
        unaudited_episodes=sorted(set(probes) - episodes_audited),
        failures_made=dict(failures),
        failures_stored={key: stored.get(key, 0) for key in failures},
        broken_chains=broken,
    )


def chain_breaks(key: str, trail: list[Any], state: CircuitState) -> list[str]:
    """Where `key`'s audit trail is not one unbroken chain from Closed to its stored state."""
    breaks = []
    expected = CircuitState.CLOSED
    previous_at: datetime | None = None
    for t in trail:
        if t.from_state is not expected:
            breaks.append(f"{key}: {t.from_state} -> {t.to_state} at {t.at} follows {expected}")
        if previous_at is not None and t.at < previous_at:
            breaks.append(f"{key}: {t.at} is earlier than the entry before it")
        expected, previous_at = t.to_state, t.at
    if expected is not state:
        breaks.append(f"{key}: the trail ends in {expected} but the stored state is {state}")
    return breaks


# Crashes: a forked child hammers two keys until it is killed with SIGKILL.
CRASH_KEYS = ("gpt-4o", "claude")
# Trips at the second failure and may probe at once, so almost every operation changes state:
# a kill lands inside a state-changing transaction as often as possible.
CHURN = CircuitBreakerConfig(failure_threshold=2, cooldown=timedelta(0), half_open_max=1)


def _child(url: str, ready_fd: int, seed: int) -> None:
    """Hammer the keys until killed; write one byte once the first calls have committed
    (enough that one of them changed state, so every round's kill lands among changes)."""
    rng = random.Random(seed)
    breaker = CircuitBreaker(url, CHURN)
    calls = 0
    while True:
        key = rng.choice(CRASH_KEYS)
        try:
            breaker.check(key)
        except CircuitOpenError:
            continue
        if rng.random() < 0.6:
            breaker.record_failure(key, reason="crash test")
        else:
            breaker.record_success(key)
        calls += 1
        if calls == 8:
            os.write(ready_fd, b"!")


def fork_and_kill(url: str, seed: int, delay_s: float) -> None:
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child never returns into pytest
        code = 0
        try:
            os.close(read_fd)
            _child(url, write_fd, seed)
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(write_fd)
    try:
        assert os.read(read_fd, 1) == b"!", "the child died before its first operation"
        time.sleep(delay_s)
        os.kill(pid, signal.SIGKILL)
    finally:
        os.close(read_fd)
        _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, (
        "the child stopped on its own (an error) before it was killed"
    )


@dataclass
class KillSummary:
    rounds: int
    transitions: int  # audited state changes the killed processes and the survivor made
    problems: list[str]  # broken chains, or a key the survivor could not change


CHILD_APPLICATION = "durable-breaker crash child"


def _child_url(url: str) -> str:
    """`url` with the killed child's sessions named, so the parent can wait for them to end."""
    parsed = sa.make_url(url)
    if parsed.get_backend_name() != "postgresql":
        return url
    named = parsed.update_query_dict({"application_name": CHILD_APPLICATION})
    return named.render_as_string(hide_password=False)


def _wait_for_dead_sessions(survivor: CircuitBreaker) -> None:
    """On PostgreSQL, a killed client's session still runs what it had already sent (a whole
    pipelined write, committed at its Sync) before it notices the client is gone: wait until the
    server has ended it, so that what is stored no longer changes while it is checked."""
    engine = survivor._store.engine
    if engine.dialect.name != "postgresql":
        return  # SQLite runs in the killed process itself: nothing outlives it
    query = sa.text("SELECT count(*) FROM pg_stat_activity WHERE application_name = :name")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with engine.connect() as connection:
            if connection.execute(query, {"name": CHILD_APPLICATION}).scalar() == 0:
                return
        time.sleep(0.01)
    raise AssertionError("the killed child's PostgreSQL session did not end within 30 s")


def kill_rounds(url: str, rounds: int, seed: int = 2026) -> KillSummary:
    """Fork, let the child work, SIGKILL it at a random moment; after each kill (and once the
    server has ended its sessions) check the audit chains and that this process can still
    change every key."""
    rng = random.Random(seed)
    problems: list[str] = []
    with CircuitBreaker(url, CHURN) as survivor:
        for round_ in range(rounds):
            fork_and_kill(_child_url(url), seed=seed + round_, delay_s=rng.uniform(0, 0.03))
            _wait_for_dead_sessions(survivor)
            for key in CRASH_KEYS:
                problems += chain_breaks(key, survivor.history(key), survivor.state(key))
                survivor.record_success(key)
                if survivor.state(key) is not CircuitState.CLOSED:
                    problems.append(f"round {round_}: {key} did not close after a success")
        transitions = sum(len(survivor.history(key)) for key in CRASH_KEYS)
    return KillSummary(rounds, transitions, problems)
