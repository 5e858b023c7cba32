"""The performance suite: durable-breaker against its peers and the raw driver floor.

Every case runs interleaved with its baselines in this one invocation (each repetition times
every variant once, in turn), so ratios hold on a noisy machine. Reports medians and min..max
in microseconds per call and the ratios the targets are stated in. Usage, from the repository
root (needs `pip install '.[bench]'`):

    python benchmarks/run.py [--postgres URL] [--json FILE] [--chart FILE] [--repeat 11] [--profile]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import math
import multiprocessing
import os
import platform
import random
import sqlite3
import statistics
import tempfile
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pybreaker
import sqlalchemy as sa

from durable_breaker import CircuitBreaker, CircuitBreakerConfig, CircuitOpenError
from durable_breaker._engine import write_bounds
from durable_breaker._view import Notifications

Case = dict[str, Callable[[], object]]
HEALTHY = CircuitBreakerConfig(failure_threshold=10**9)
RESULTS: dict[str, Any] = {}


def per_call_us(fn: Callable[[], object], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e6


def run_case(
    name: str, variants: Case, repeat: int, calls: int, baselines: tuple[str, ...]
) -> dict[str, float]:
    """Time every variant `repeat` times, interleaved; print and keep medians and ratios."""
    samples: dict[str, list[float]] = {label: [] for label in variants}
    for _ in range(repeat):
        for label, fn in variants.items():
            samples[label].append(per_call_us(fn, calls))
    medians = {label: statistics.median(values) for label, values in samples.items()}
    print(f"\n{name}  ({repeat} interleaved repetitions x {calls} calls; us per call)")
    for label, values in samples.items():
        ratios = "  ".join(
            f"x{medians[label] / medians[base]:.2f} of {base}"
            for base in baselines
            if base in medians and base != label
        )
        print(
            f"  {label:<34} {medians[label]:9.1f}  ({min(values):.1f} .. {max(values):.1f})  "
            f"{ratios}"
        )
    RESULTS.setdefault("cases", {})[name] = {
        label: {"median_us": medians[label], "samples_us": values}
        for label, values in samples.items()
    }
    return medians


# --- peers -----------------------------------------------------------------------------


def _raise() -> None:
    raise TimeoutError("the model did not answer")


def pybreaker_memory(open_: bool) -> pybreaker.CircuitBreaker:
    breaker = pybreaker.CircuitBreaker(fail_max=1, reset_timeout=3600)
    if open_:
        with contextlib.suppress(Exception):
            breaker.call(_raise)
    return breaker


def redis_client() -> Any | None:
    """A client of a local Redis: the running one, else one started here; None if neither."""
    import redis

    for port in (6379, 6390):
        client = redis.Redis(port=port)
        try:
            client.ping()
            return client
        except redis.ConnectionError:
            if port == 6390:
                return None
            # Not running: start a throwaway one that keeps nothing on disk.
            with contextlib.suppress(OSError):
                import subprocess

                subprocess.Popen(
                    ["redis-server", "--port", "6390", "--save", "", "--appendonly", "no"],
                    stdout=subprocess.DEVNULL,
                )
                time.sleep(0.5)
    return None


def pybreaker_redis(client: Any, open_: bool) -> pybreaker.CircuitBreaker:
    storage = pybreaker.CircuitRedisStorage(
        pybreaker.STATE_CLOSED, client, namespace=f"bench-{uuid.uuid4().hex[:8]}"
    )
    breaker = pybreaker.CircuitBreaker(fail_max=1, reset_timeout=3600, state_storage=storage)
    if open_:
        with contextlib.suppress(Exception):
            breaker.call(_raise)
    return breaker


def rejected(fn: Callable[[], object]) -> Callable[[], object]:
    def call() -> None:
        with contextlib.suppress(CircuitOpenError, pybreaker.CircuitBreakerError):
            fn()

    return call


# --- one backend -------------------------------------------------------------------------


class Backend:
    """A database to measure on, with the raw driver statements each case compares against."""

    def __init__(self, name: str, url: str, raw: Any, placeholder: str) -> None:
        self.name, self.url, self.raw = name, url, raw
        p = placeholder
        self.read_sql = (  # the very statement the breaker reads a circuit with
            "SELECT state, consecutive_failures, half_open_probes, last_failure_at, "
            "half_open_since, open_until, generation, version FROM durable_breaker_circuit "
            f"WHERE namespace = {p} AND key = {p}"
        )
        self.update_sql = (
            "UPDATE durable_breaker_circuit SET consecutive_failures = consecutive_failures + 1, "
            f"last_failure_at = {p}, version = version + 1, updated_at = {p} "
            f"WHERE namespace = {p} AND key = {p}"
        )
        self.audit_sql = (
            "INSERT INTO durable_breaker_transition (namespace, key, from_state, to_state, "
            f"trigger, at, consecutive_failures, reason, actor) VALUES ({p}, {p}, {p}, {p}, {p}, "
            f"{p}, {p}, {p}, {p})"
        )
        self.begin = "BEGIN IMMEDIATE" if name == "SQLite" else "BEGIN"
        self.lock_sql = self.read_sql + ("" if name == "SQLite" else " FOR UPDATE")

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        if self.name == "SQLite":
            return self.raw.execute(sql, params)
        return self.raw.execute(sql, params, prepare=True)

    def raw_read(self, key: str) -> Callable[[], object]:
        """The floor of one read: the breaker's statement, prepared, on a cursor kept open."""
        cursor = self.raw.cursor()
        if self.name == "SQLite":
            return lambda: cursor.execute(self.read_sql, ("default", key)).fetchone()
        return lambda: cursor.execute(self.read_sql, ("default", key), prepare=True).fetchone()

    def raw_update(self, key: str) -> Callable[[], object]:
        def update() -> None:
            now = _now_param(self)
            self.execute(self.update_sql, (now, now, "default", key))

        return update

    def raw_bounded_update(self, key: str, bounds: str) -> Callable[[], object]:
        """PostgreSQL: the same UPDATE behind the write's timeouts, in one pipeline, in
        autocommit: the statements the breaker's write sends."""

        def update() -> None:
            now = _now_param(self)
            with self.raw.pipeline():
                self.execute(bounds)
                self.execute(self.update_sql, (now, now, "default", key))

        return update

    def raw_transaction(self, key: str) -> Callable[[], object]:
        """One audited state change's statements in one transaction, there and back."""

        def change(from_state: str, to_state: str) -> None:
            now = _now_param(self)
            self.execute(self.begin)
            self.execute(self.lock_sql, ("default", key)).fetchone()
            self.execute(self.update_sql, (now, now, "default", key))
            self.execute(
                self.audit_sql,
                ("default", key, from_state, to_state, "failure", now, 1, "bench", "bench"),
            )
            self.execute("COMMIT")

        def there_and_back() -> None:
            change("closed", "open")
            change("open", "closed")

        return there_and_back


def _now_param(backend: Backend) -> Any:
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    return now.replace(tzinfo=None).isoformat(" ") if backend.name == "SQLite" else now


def guarded_by(breaker: CircuitBreaker) -> Callable[[], object]:
    """The main path: one guarded call on the healthy key."""

    def call() -> None:
        with breaker.guard("healthy"):
            pass

    return call


def _answer(key: str) -> str:
    return key


def paired(breaker: CircuitBreaker) -> Callable[[], object]:
    """The same with the two plain calls."""

    def call() -> None:
        breaker.check("healthy")
        breaker.record_success("healthy")

    return call


def store_key(url: str, key: str) -> None:
    """Store `key` as a healthy circuit (a failure, then a success)."""
    with CircuitBreaker(url, HEALTHY) as breaker:
        breaker.record_failure(key)
        breaker.record_success(key)


def bench_backend(
    backend: Backend, redis: Any, repeat: int, calls: int, profile: bool = False
) -> None:
    url, name = backend.url, backend.name
    store_key(url, "healthy")
    ours = CircuitBreaker(url, HEALTHY)
    tripped = CircuitBreaker(
        url, CircuitBreakerConfig(failure_threshold=1, cooldown=timedelta(hours=1))
    )
    tripped.record_failure("open")
    flapping = CircuitBreaker(
        url, CircuitBreakerConfig(failure_threshold=1, cooldown=timedelta(0)), namespace="flap"
    )
    flapping.record_failure("probe")
    mem, mem_open = pybreaker_memory(False), pybreaker_memory(True)
    peers: Case = {"pybreaker (memory)": lambda: mem.call(lambda: None)}
    ours_cases: Case = {
        "guard()": guarded_by(ours),
        "check + record_success": paired(ours),
        # fallback() over guard(): its first key healthy, or open (skipped, then the healthy).
        "fallback(), first key healthy": lambda: ours.fallback(["healthy", "spare"], _answer),
        "fallback(), first key open": lambda: tripped.fallback(["open", "healthy"], _answer),
    }
    cached = None
    if name == "PostgreSQL":
        cached = CircuitBreaker(url, HEALTHY, cache=True)
        wait_until(lambda: listener(cached).listening)
        ours_cases["guard(), cache=True"] = guarded_by(cached)
        ours_cases["check + record_success, cache=True"] = paired(cached)
    open_peers: Case = {"pybreaker (memory)": rejected(lambda: mem_open.call(lambda: None))}
    if redis is not None:
        red, red_open = pybreaker_redis(redis, False), pybreaker_redis(redis, True)
        peers["pybreaker (Redis)"] = lambda: red.call(lambda: None)
        open_peers["pybreaker (Redis)"] = rejected(lambda: red_open.call(lambda: None))
    baselines = {"raw driver read": backend.raw_read("healthy")}
    if name == "PostgreSQL":
        # The same prepared read on the breaker's own connection. Each PostgreSQL connection
        # is served by a backend process of its own, and on this 2-core machine where that
        # process runs makes one connection's round trip up to twice another's, steadily:
        # against a read on another connection that difference, not the breaker, is measured.
        ours.check("healthy")
        own = ours._store._raw._idle[-1].connection.cursor()  # type: ignore[union-attr]
        baselines["raw read, the breaker's connection"] = lambda: own.execute(
            backend.read_sql, ("default", "healthy"), prepare=True
        ).fetchone()

    def probe_and_reopen() -> None:
        flapping.check("probe")  # Open -> HalfOpen: the probe is admitted
        flapping.record_failure("probe")  # HalfOpen -> Open

    def trip_and_close() -> None:
        tripped.record_success("trip")
        tripped.record_failure("trip")

    # The raw baselines change rows of their own: a row both sides wrote would make every
    # repetition's first optimistic write find it changed and take the locked path.
    for key in ("counted", "counted-raw", "counted-bounded", "trip-raw", "probe"):
        store_key(url, key)
    tripped.record_failure("trip")
    write_calls = max(50, calls // 20)
    RESULTS.setdefault("targets", {})[name] = targets = {}
    m = run_case(
        f"{name} 1. guarded call on a healthy key",
        {**ours_cases, **peers, **baselines},
        repeat,
        calls,
        ("pybreaker (memory)", "pybreaker (Redis)", *baselines),
    )
    for label in ("fallback(), first key healthy", "fallback(), first key open"):
        targets[f"{label} / guard()"] = m[label] / m["guard()"]
    for label in ("guard()", "check + record_success"):
        targets[f"{label} / pybreaker memory"] = m[label] / m["pybreaker (memory)"]
        for baseline in baselines:
            targets[f"{label} / {baseline}"] = m[label] / m[baseline]
        if "pybreaker (Redis)" in m:
            targets[f"pybreaker Redis / {label}"] = m["pybreaker (Redis)"] / m[label]
        cached_label = f"{label}, cache=True"
        if cached_label in m:
            targets[f"{cached_label} / pybreaker memory"] = (
                m[cached_label] / m["pybreaker (memory)"]
            )
            if "pybreaker (Redis)" in m:
                targets[f"pybreaker Redis / {cached_label}"] = (
                    m["pybreaker (Redis)"] / m[cached_label]
                )
    run_case(
        f"{name} 2. rejected call on an Open key",
        {
            "durable-breaker": rejected(lambda: tripped.check("open")),
            **open_peers,
            "raw driver read": backend.raw_read("open"),
        },
        repeat,
        calls,
        ("pybreaker (memory)", "raw driver read"),
    )
    failures: Case = {
        "durable-breaker": lambda: ours.record_failure("counted"),
        "raw driver UPDATE": backend.raw_update("counted-raw"),
    }
    bounds = write_bounds(ours._store.engine)
    if bounds is not None:  # PostgreSQL: the floor of a write whose lock waits are bounded
        failures["raw: timeouts + UPDATE, one pipeline"] = backend.raw_bounded_update(
            "counted-bounded", bounds
        )
    m = run_case(
        f"{name} 3. record_failure below the threshold",
        failures,
        repeat,
        write_calls,
        ("raw driver UPDATE", "raw: timeouts + UPDATE, one pipeline"),
    )
    targets["failure / raw UPDATE"] = m["durable-breaker"] / m["raw driver UPDATE"]
    if bounds is not None:
        bounded = m["raw: timeouts + UPDATE, one pipeline"]
        targets["failure / raw bounded UPDATE"] = m["durable-breaker"] / bounded
    m = run_case(
        f"{name} 4. a trip and a close (two audited state changes)",
        {
            "durable-breaker": trip_and_close,
            "raw: lock, update, audit, commit": backend.raw_transaction("trip-raw"),
        },
        repeat,
        write_calls,
        ("raw: lock, update, audit, commit",),
    )
    targets["trip / raw statements"] = m["durable-breaker"] / m["raw: lock, update, audit, commit"]
    run_case(
        f"{name} 5. half-open probe admitted, then reopened (two audited changes)",
        {
            "durable-breaker": probe_and_reopen,
            "raw: lock, update, audit, commit": backend.raw_transaction("probe"),
        },
        repeat,
        write_calls,
        ("raw: lock, update, audit, commit",),
    )
    if profile:
        profile_guard(name, ours, calls)
        if cached is not None:
            profile_guard(f"{name}, cache=True", cached, calls)
    for breaker in (ours, tripped, flapping, *([cached] if cached else [])):
        breaker.close()
    if name == "PostgreSQL":
        invalidation_latency(url)
    scale(backend, repeat, calls)
    contention(backend)


# --- what a guarded call spends its time on --------------------------------------------------


def profile_guard(name: str, breaker: CircuitBreaker, calls: int, top: int = 12) -> None:
    """cProfile over `calls` guarded calls on the healthy key: where what remains goes."""
    import cProfile
    import io
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        with breaker.guard("healthy"):
            pass
    profiler.disable()
    text = io.StringIO()
    stats = pstats.Stats(profiler, stream=text).sort_stats("tottime")
    stats.print_stats(top)
    lines = [line for line in text.getvalue().splitlines() if line.strip()]
    start = next(i for i, line in enumerate(lines) if line.lstrip().startswith("ncalls"))
    table = [line.replace(str(Path.cwd()) + "/", "") for line in lines[start:]]
    print(f"\n{name}: profile of {calls} guard() calls (cProfile, internal time, top {top})")
    print("\n".join(table))
    RESULTS.setdefault("profiles", {})[name] = table


# --- the read cache's staleness ------------------------------------------------------------


def listener(breaker: CircuitBreaker) -> Notifications:
    """The change listener behind `cache=True`."""
    rule = breaker._store.view.rule
    assert isinstance(rule, Notifications)
    return rule


def wait_until(condition: Callable[[], bool], seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the read cache did not start listening")
        time.sleep(0.01)


def _change_keys(url: str, namespace: str, count: int, results: Any) -> None:
    """In another process: trip `count` keys, one every few ms; report when each committed."""
    config = CircuitBreakerConfig(failure_threshold=1)
    with CircuitBreaker(url, config, namespace=namespace) as writer:
        for i in range(count):
            started = time.monotonic()  # a system-wide clock on Linux
            writer.record_failure(f"key-{i}")
            results.put((f"key-{i}", (started, time.monotonic())))
            time.sleep(0.005)
    results.put(None)


def _quantile(ordered: list[float], q: float) -> float:
    """The smallest value with at least a fraction `q` of the values at or below it."""
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def invalidation_latency(url: str, count: int = 300) -> None:
    """From another process's commit to this process's cache dropping the key."""
    namespace = f"latency-{uuid.uuid4().hex[:6]}"
    dropped: dict[str, float] = {}
    with CircuitBreaker(url, HEALTHY, namespace=namespace, cache=True) as reader:
        cache = listener(reader)
        cache.on_change = lambda key: dropped.setdefault(key, time.monotonic())
        wait_until(lambda: cache.listening)
        context = multiprocessing.get_context("spawn")
        results = context.Queue()
        writer = context.Process(target=_change_keys, args=(url, namespace, count, results))
        writer.start()
        committed = dict(iter(results.get, None))
        writer.join()
        wait_until(lambda: len(dropped) >= len(committed), seconds=5)
    # The commit happens between the writer's call and its return: measured from the call
    # (an upper bound) and from the return (a lower bound; negative: dropped here first).
    bounds = {}
    for label, index in (("from the write's start", 0), ("from its return", 1)):
        ms = sorted((dropped[key] - at[index]) * 1e3 for key, at in committed.items())
        bounds[label] = {"p50": _quantile(ms, 0.5), "p99": _quantile(ms, 0.99), "max": ms[-1]}
    print("\nPostgreSQL read cache: a key another process changed is dropped here after")
    for label, q in bounds.items():
        print(f"  {label:<24} p50 {q['p50']:.2f} ms, p99 {q['p99']:.2f} ms, max {q['max']:.2f} ms")
    RESULTS["cache_invalidation_ms"] = bounds


# --- 6. scale ----------------------------------------------------------------------------


def rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def scale(backend: Backend, repeat: int, calls: int) -> None:
    """Per-call latency, memory and start-up with 10 keys and with 100,000 stored keys."""
    name = backend.name
    small, large = f"scale10-{uuid.uuid4().hex[:6]}", f"scale100k-{uuid.uuid4().hex[:6]}"
    CircuitBreaker(backend.url, HEALTHY).close()
    for namespace, count in ((small, 10), (large, 100_000)):
        rows = [(namespace, f"model-{i}") for i in range(count)]
        insert = (
            "INSERT INTO durable_breaker_circuit (namespace, key, state, consecutive_failures, "
            "half_open_probes, version, updated_at) VALUES ({p}, {p}, 'closed', 0, 0, 1, {p})"
        ).format(p="?" if name == "SQLite" else "%s")
        now = _now_param(backend)
        if name == "SQLite":
            backend.raw.execute("BEGIN")
            backend.raw.executemany(insert, [(*row, now) for row in rows])
            backend.raw.execute("COMMIT")
        else:
            with backend.raw.cursor() as cursor:
                cursor.executemany(insert, [(*row, now) for row in rows])
    # Settle the table now, so that no autovacuum or analysis runs during the measurements.
    backend.execute("VACUUM ANALYZE durable_breaker_circuit" if name != "SQLite" else "ANALYZE")
    startups: dict[str, float] = {}
    breakers = {}
    for namespace, count in ((small, 10), (large, 100_000)):
        start = time.perf_counter()
        breakers[count] = CircuitBreaker(backend.url, HEALTHY, namespace=namespace)
        startups[f"{count} keys"] = (time.perf_counter() - start) * 1e3

    def guarded(count: int) -> Callable[[], object]:
        breaker, rng = breakers[count], random.Random(count)

        def call() -> None:
            with breaker.guard(f"model-{rng.randrange(count)}"):
                pass

        return call

    def raw(namespace: str, count: int) -> Callable[[], object]:
        rng = random.Random(-count)  # not the keys the breaker reads: no cache warmed for it
        return lambda: backend.execute(
            backend.read_sql, (namespace, f"model-{rng.randrange(count)}")
        ).fetchone()

    before = rss_mib()
    m = run_case(
        f"{name} 6. scale: guarded call on a random key",
        {
            "10 keys": guarded(10),
            "100,000 keys": guarded(100_000),
            "raw read, 10 keys": raw(small, 10),
            "raw read, 100,000 keys": raw(large, 100_000),
        },
        repeat,
        calls,
        ("10 keys", "raw read, 10 keys"),
    )
    for key_index in range(100_000):  # touch every key once
        breakers[100_000].check(f"model-{key_index}")
    grown = rss_mib() - before
    print(
        f"  start-up: {startups['10 keys']:.1f} ms on 10 keys, "
        f"{startups['100000 keys']:.1f} ms on 100,000 keys; process memory grew "
        f"{grown:.1f} MiB while every one of 100,000 keys was checked"
    )
    RESULTS["targets"][name]["100k keys / 10 keys"] = m["100,000 keys"] / m["10 keys"]
    RESULTS["targets"][name]["raw read: 100k / 10 keys"] = (
        m["raw read, 100,000 keys"] / m["raw read, 10 keys"]
    )
    RESULTS.setdefault("scale", {})[name] = {
        "startup_ms": startups,
        "rss_growth_mib_after_100k_keys": grown,
    }
    for breaker in breakers.values():
        breaker.close()


# --- 7. contention -----------------------------------------------------------------------


def _hammer(url: str, namespace: str, seconds: float) -> tuple[int, int, list[str]]:
    """Guarded calls plus failures on one key for `seconds`; (operations, failures, errors)."""
    config = CircuitBreakerConfig(failure_threshold=10**9, on_store_error="raise")
    breaker = CircuitBreaker(url, config, namespace=namespace)
    operations = failures = 0
    errors: list[str] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        try:
            breaker.check("shared")
            if operations % 2:
                breaker.record_failure("shared")
                failures += 1
            else:
                breaker.check("shared")
            operations += 1
        except Exception as error:
            errors.append(repr(error))
    breaker.close()
    return operations, failures, errors


def contention(backend: Backend, seconds: float = 3.0) -> None:
    namespace = f"contention-{uuid.uuid4().hex[:6]}"
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        results = pool.starmap(_hammer, [(backend.url, namespace, seconds)] * 2)
    with CircuitBreaker(backend.url, HEALTHY, namespace=namespace) as breaker:
        stored = {s.key: s.consecutive_failures for s in breaker.status()}.get("shared", 0)
    operations = sum(r[0] for r in results)
    made = sum(r[1] for r in results)
    errors = [e for r in results for e in r[2]]
    print(
        f"\n{backend.name} 7. two processes on one key for {seconds:g} s: "
        f"{operations / seconds:.0f} operations/s, {len(errors)} errors, "
        f"{made - stored} lost updates ({made} failures made, {stored} stored)"
    )
    RESULTS.setdefault("contention", {})[backend.name] = {
        "operations_per_s": operations / seconds,
        "errors": errors[:5],
        "lost_updates": made - stored,
    }


# --- set-up ------------------------------------------------------------------------------


@contextlib.contextmanager
def sqlite_backend() -> Iterator[Backend]:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "bench.db"
        url = f"sqlite:///{path}"
        CircuitBreaker(url).close()
        raw = sqlite3.connect(path, isolation_level=None)
        try:
            yield Backend("SQLite", url, raw, "?")
        finally:
            raw.close()


@contextlib.contextmanager
def postgres_backend(url: str) -> Iterator[Backend]:
    """A schema of its own, dropped afterwards: the server is left as it was."""
    import psycopg

    plain = sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(plain, autocommit=True) as admin:
        admin.execute(f'CREATE SCHEMA "{schema}"')
        try:
            scoped = f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}"
            CircuitBreaker(scoped).close()
            with psycopg.connect(
                plain, autocommit=True, prepare_threshold=0, options=f"-csearch_path={schema}"
            ) as raw:
                yield Backend("PostgreSQL", scoped, raw, "%s")
        finally:
            admin.execute(f'DROP SCHEMA "{schema}" CASCADE')


def environment(redis: Any) -> dict[str, str]:
    return {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()}",
        "python": platform.python_version(),
        "durable-breaker": importlib.metadata.version("durable-breaker"),
        "SQLAlchemy": sa.__version__,
        "SQLite": sqlite3.sqlite_version,
        "pybreaker": importlib.metadata.version("pybreaker"),
        "Redis server": "not available" if redis is None else redis.info()["redis_version"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--postgres", metavar="URL", help="also measure on this PostgreSQL")
    parser.add_argument("--repeat", type=int, default=11)
    parser.add_argument("--calls", type=int, default=2000, help="per repetition (reads)")
    parser.add_argument("--json", metavar="FILE", help="write every sample here")
    parser.add_argument("--chart", metavar="FILE", help="draw case 1 as a PNG (matplotlib)")
    parser.add_argument(
        "--profile", action="store_true", help="also profile guard() on each backend"
    )
    args = parser.parse_args()
    redis = redis_client()
    RESULTS["environment"] = environment(redis)
    print("; ".join(f"{k} {v}" for k, v in RESULTS["environment"].items()))
    if redis is None:
        print("pybreaker on Redis: no local redis-server could be reached or started; skipped")
    with sqlite_backend() as backend:
        bench_backend(backend, redis, args.repeat, args.calls, args.profile)
    if args.postgres:
        with postgres_backend(args.postgres) as backend:
            bench_backend(backend, redis, args.repeat, args.calls // 5, args.profile)
    print("\nTargets (ratios of medians in this run):")
    for name, targets in RESULTS["targets"].items():
        for label, ratio in targets.items():
            print(f"  {name:<10} {label:<58} {ratio:8.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(RESULTS, indent=2))
    if args.chart:
        draw_chart(args.chart)


def draw_chart(path: str) -> None:
    """Case 1 on each backend as bars (log scale), with the machine and versions it ran on."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    guarded = {
        name.split(" 1.")[0]: variants
        for name, variants in RESULTS["cases"].items()
        if " 1. guarded call" in name
    }
    labels = sorted({label for variants in guarded.values() for label in variants})
    figure, axes = plt.subplots(figsize=(9, 4.8))
    width = 0.8 / len(guarded)
    for index, (backend, variants) in enumerate(guarded.items()):
        heights = [variants.get(label, {}).get("median_us", 0.0) for label in labels]
        positions = [i + index * width for i in range(len(labels))]
        bars = axes.bar(positions, heights, width, label=backend)
        axes.bar_label(bars, fmt="%.1f", fontsize=7)
    axes.set_yscale("log")
    axes.set_ylabel("microseconds per guarded call (median, log scale)")
    ticks = [i + width * (len(guarded) - 1) / 2 for i in range(len(labels))]
    axes.set_xticks(ticks, [textwrap.fill(label, 16) for label in labels], fontsize=8)
    axes.legend()
    env = RESULTS["environment"]
    axes.set_title("Guarded call on a healthy key", fontsize=11)
    figure.text(0.01, 0.01, "; ".join(f"{k} {v}" for k, v in env.items()), fontsize=6)
    figure.tight_layout(rect=(0, 0.04, 1, 1))
    figure.savefig(path, dpi=120)
    print(f"chart written to {path}")


if __name__ == "__main__":
    main()
