"""The `durable-breaker` command line: migrate, status, history, reset, open, disable, prune,
diagram, demo."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TextIO

from ._breaker import CircuitBreaker
from ._config import CircuitBreakerConfig
from ._engine import DEFAULT_URL, make_engine
from ._errors import CircuitOpenError, DurableBreakerError, InvalidArgumentError
from ._machine import mermaid
from ._migrations import upgrade
from ._state import CircuitState, Transition
from ._urls import safe_url

DEMO_KEY = "gpt-4o"
DEMO_CALLS = 14
DEMO_STEP_S = 4.0


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat(timespec="microseconds")


def _transition_dict(t: Transition) -> dict[str, object]:
    return {
        "key": t.key,
        "from_state": t.from_state.value,
        "to_state": t.to_state.value,
        "trigger": t.trigger,
        "at": _iso(t.at),
        "consecutive_failures": t.consecutive_failures,
        "reason": t.reason,
        "actor": t.actor,
    }


def _transition_line(t: Transition) -> str:
    return (
        f"{t.at:%Y-%m-%d %H:%M:%S.%f}Z  {t.from_state.value:>11} -> {t.to_state.value:<11}  "
        f"{t.trigger:<10}  failures={t.consecutive_failures:<3} {t.actor}  {t.reason or ''}"
    )


def _cmd_migrate(args: argparse.Namespace, out: TextIO) -> int:
    engine = make_engine(args.url)
    try:
        before, after = upgrade(engine)
    finally:
        engine.dispose()
    if before == after:
        print(
            f"{safe_url(args.url)} is already at schema revision {after}; nothing to do", file=out
        )
    else:
        print(
            f"migrated {safe_url(args.url)} from {before or 'an empty database'} to {after}",
            file=out,
        )
    return 0


def _open(args: argparse.Namespace, config: CircuitBreakerConfig | None = None) -> CircuitBreaker:
    """The breaker for a reading or resetting command: never creates or migrates a database."""
    return CircuitBreaker(args.url, config, namespace=args.namespace, migrate=False)


def _cmd_status(args: argparse.Namespace, out: TextIO) -> int:
    # The settings live in the applications, not the database: RETRY-AFTER needs them told.
    config = CircuitBreakerConfig(
        cooldown=timedelta(seconds=args.cooldown),
        half_open_max=args.half_open_max,
        probe_timeout=None if args.probe_timeout is None else timedelta(seconds=args.probe_timeout),
    )
    with _open(args, config) as breaker:
        rows = breaker.status()
    if args.json:
        json.dump(
            [
                {
                    "key": s.key,
                    "state": s.state.value,
                    "consecutive_failures": s.consecutive_failures,
                    "since": _iso(s.since),
                    "retry_after": s.retry_after,
                    "open_until": _iso(s.open_until),
                }
                for s in rows
            ],
            out,
            indent=2,
        )
        print(file=out)
        return 0
    if not rows:
        print(f"no keys stored in namespace {args.namespace!r}", file=out)
        return 0
    print(f"{'KEY':<24} {'STATE':<11} {'FAILURES':>8}  {'SINCE':<27} RETRY-AFTER", file=out)
    for s in rows:
        since = "-" if s.since is None else f"{s.since:%Y-%m-%d %H:%M:%S.%f}Z"
        if s.state is CircuitState.FORCED_OPEN and s.retry_after is None:
            retry = "until reset"
        elif s.retry_after is None or s.state in (CircuitState.CLOSED, CircuitState.DISABLED):
            retry = "-"
        else:
            retry = f"{s.retry_after:.1f}s"
        print(
            f"{s.key:<24} {s.state.value:<11} {s.consecutive_failures:>8}  {since:<27} {retry}",
            file=out,
        )
    return 0


def _cmd_history(args: argparse.Namespace, out: TextIO) -> int:
    if args.follow:
        with _open(args) as breaker:
            last = 10 if args.limit is None else args.limit
            for t in breaker.follow(args.key, last=last, poll=timedelta(seconds=args.interval)):
                line = json.dumps(_transition_dict(t)) if args.json else _transition_line(t)
                if args.key is None:
                    line = line if args.json else f"{t.key}: {line}"
                print(line, file=out, flush=True)
        return 0
    if args.key is None:
        raise InvalidArgumentError("history needs a KEY (or --follow to tail every key)")
    with _open(args) as breaker:
        rows = breaker.history(args.key, args.limit)
        if not rows and args.key not in {s.key for s in breaker.status()}:
            raise InvalidArgumentError(
                f"no circuit is stored for key {args.key!r} in namespace {args.namespace!r}"
            )
    if args.json:
        json.dump([_transition_dict(t) for t in rows], out, indent=2)
        print(file=out)
    else:
        for t in rows:
            print(_transition_line(t), file=out)
    return 0


def _operator_change(args: argparse.Namespace, effect: str) -> CircuitBreaker:
    """The breaker for a command that changes a circuit for every process, once confirmed."""
    if not args.yes:
        raise InvalidArgumentError(
            f"{args.command} {effect} {args.key!r} in every process; add --yes to confirm"
        )
    return _open(args)


def _cmd_reset(args: argparse.Namespace, out: TextIO) -> int:
    with _operator_change(args, "closes the circuit of") as breaker:
        done = breaker.reset(args.key, reason=args.reason)
    print(f"reset {args.key!r}: {_transition_line(done)}", file=out)
    return 0


def _cmd_open(args: argparse.Namespace, out: TextIO) -> int:
    with _operator_change(args, "blocks every call to") as breaker:
        done = breaker.force_open(args.key, args.for_, reason=args.reason)
    held = "until reset" if args.for_ is None else f"until {done.at + args.for_:%Y-%m-%d %H:%M:%S}Z"
    print(f"forced {args.key!r} open {held}: {_transition_line(done)}", file=out)
    return 0


def _cmd_disable(args: argparse.Namespace, out: TextIO) -> int:
    with _operator_change(args, "admits every call to") as breaker:
        done = breaker.disable(args.key, reason=args.reason)
    print(f"disabled {args.key!r} until reset: {_transition_line(done)}", file=out)
    return 0


def _cmd_prune(args: argparse.Namespace, out: TextIO) -> int:
    with _open(args) as breaker:
        removed = breaker.prune(args.older_than, batch_size=args.batch_size)
    print(
        f"removed {removed} transition{'s' * (removed != 1)} older than {args.older_than} "
        f"from namespace {args.namespace!r} (the latest of every key is kept)",
        file=out,
    )
    return 0


def _cmd_diagram(args: argparse.Namespace, out: TextIO) -> int:
    out.write(mermaid())
    return 0


def _cmd_demo(args: argparse.Namespace, out: TextIO) -> int:
    """Drive a simulated flaky model through the breaker on a simulated clock (no sleeping)."""
    config = CircuitBreakerConfig(
        failure_threshold=3,
        cooldown=timedelta(seconds=10),
        half_open_max=1,
        probe_timeout=timedelta(seconds=30),
    )
    # Simulated time, so the demo never sleeps: a fresh run ends about now.
    clock = _DemoClock(time.time() - DEMO_CALLS * DEMO_STEP_S)
    with CircuitBreaker(args.url, config, clock=clock, namespace=args.namespace) as breaker:
        seen = breaker.history(DEMO_KEY)
        if seen:  # resume after the last stored change, even if it was on a simulated future
            clock.now = max(clock.now, seen[-1].at.timestamp() + DEMO_STEP_S)
        start = breaker.state(DEMO_KEY)
        print(f"database {safe_url(args.url)}, namespace {args.namespace!r}", file=out)
        print(
            f"{DEMO_KEY} starts {start.value} ({len(seen)} transitions stored by earlier runs)",
            file=out,
        )
        # From Closed the model goes down after a few calls; from Open it comes back.
        healthy: Callable[[int], bool] = (
            (lambda i: i < 3) if start is CircuitState.CLOSED else (lambda i: i >= 5)
        )
        for call in range(DEMO_CALLS):
            stamp = f"{datetime.fromtimestamp(clock.now, UTC):%H:%M:%S}"
            try:
                breaker.check(DEMO_KEY)
            except CircuitOpenError as rejected:
                wait = "unknown" if rejected.retry_after is None else f"{rejected.retry_after:.0f}s"
                print(
                    f"{stamp} call {call:>2}: rejected by the breaker (retry after {wait})",
                    file=out,
                )
            else:
                if healthy(call):
                    breaker.record_success(DEMO_KEY)
                    print(f"{stamp} call {call:>2}: ok", file=out)
                else:
                    breaker.record_failure(DEMO_KEY, reason="HTTP 503: model overloaded")
                    print(f"{stamp} call {call:>2}: failed with HTTP 503", file=out)
            history = breaker.history(DEMO_KEY)
            for t in history[len(seen) :]:
                print(
                    f"           transition {t.from_state.value} -> {t.to_state.value} "
                    f"({t.trigger}: {t.reason or '-'})",
                    file=out,
                )
            seen = history
            clock.now += DEMO_STEP_S
        print(f"\n{DEMO_KEY} ends {breaker.state(DEMO_KEY).value}; its audit trail:", file=out)
        for t in breaker.history(DEMO_KEY):
            print("  " + _transition_line(t), file=out)
    print("\nrun `durable-breaker demo` again: it starts from the state this run left.", file=out)
    return 0


class _DemoClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not 0 <= seconds < 10**9:  # also refuses nan and inf
        raise argparse.ArgumentTypeError(f"expected seconds from 0 to 1e9, got {text!r}")
    return seconds


def _positive_seconds(text: str) -> float:
    seconds = _seconds(text)
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"expected seconds above 0, got {text!r}")
    return seconds


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return int(text)


def _seconds_or_none(text: str) -> float | None:
    return None if text.lower() == "none" else _seconds(text)


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def _age(text: str) -> timedelta:
    """A duration such as 30d, 12h, 90m, 45s or 2w."""
    match = re.fullmatch(r"(\d{1,7})([smhdw])", text.strip().lower())
    if match is None:
        raise argparse.ArgumentTypeError(
            f"expected a whole number and a unit s, m, h, d or w (e.g. 30d), got {text!r}"
        )
    return timedelta(seconds=int(match[1]) * _UNITS[match[2]])


def _positive_age(text: str) -> timedelta:
    age = _age(text)
    if age <= timedelta(0):
        raise argparse.ArgumentTypeError(f"expected a duration above 0 (e.g. 15m), got {text!r}")
    return age


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return int(text)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="durable-breaker", description="A durable, shared, audited per-key circuit breaker."
    )
    parser.add_argument(
        "--url", help=f"database URL (default: $DURABLE_BREAKER_URL, else {DEFAULT_URL})"
    )
    parser.add_argument(
        "--namespace",
        help="breaker group within the database (default: $DURABLE_BREAKER_NAMESPACE, "
        "else 'default'; the demo uses 'demo')",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("migrate", help="upgrade the schema to the newest revision")
    status = commands.add_parser(
        "status",
        help="every key with its state",
        description="Every key with its state. RETRY-AFTER depends on the settings your "
        "breakers use, which the database does not hold: pass them if they differ from the "
        "defaults.",
    )
    status.add_argument("--json", action="store_true")
    defaults = CircuitBreakerConfig()
    status.add_argument(
        "--cooldown",
        type=_seconds,
        metavar="SECONDS",
        default=defaults.cooldown.total_seconds(),
        help="default: %(default)s",
    )
    status.add_argument(
        "--half-open-max",
        type=int,
        metavar="N",
        default=defaults.half_open_max,
        help="default: %(default)s",
    )
    status.add_argument(
        "--probe-timeout",
        type=_seconds_or_none,
        metavar="SECONDS|none",
        default=defaults.probe_timeout and defaults.probe_timeout.total_seconds(),
        help="default: %(default)s",
    )
    history = commands.add_parser("history", help="a key's transitions, oldest first")
    history.add_argument("key", nargs="?", help="the key (optional with --follow: every key)")
    history.add_argument("--limit", type=_count, default=None, help="only the last N")
    history.add_argument("--json", action="store_true", help="one JSON object per line with -f")
    history.add_argument(
        "-f",
        "--follow",
        action="store_true",
        help="after the last N (default 10), print new transitions of every process as they "
        "are committed, until interrupted",
    )
    history.add_argument(
        "--interval",
        type=_positive_seconds,
        default=0.5,
        metavar="SECONDS",
        help="poll (%(default)s)",
    )
    force = commands.add_parser(
        "open", help="hold a key's circuit open until reset, or for a time (audited)"
    )
    force.add_argument("key")
    force.add_argument("--for", dest="for_", type=_positive_age, metavar="AGE", help="e.g. 15m")
    force.add_argument("--yes", action="store_true", help="confirm")
    force.add_argument("--reason", default=None)
    disable = commands.add_parser(
        "disable", help="admit every call to a key until reset; outcomes still counted (audited)"
    )
    disable.add_argument("key")
    disable.add_argument("--yes", action="store_true", help="confirm")
    disable.add_argument("--reason", default=None)
    reset = commands.add_parser("reset", help="force a key's circuit closed (audited)")
    reset.add_argument("key")
    reset.add_argument("--yes", action="store_true", help="confirm")
    reset.add_argument("--reason", default=None)
    prune = commands.add_parser(
        "prune", help="delete old transitions, keeping the latest of every key"
    )
    prune.add_argument("--older-than", type=_age, required=True, metavar="AGE", help="e.g. 30d")
    prune.add_argument(
        "--batch-size", type=_positive, default=1000, help="rows per transaction (%(default)s)"
    )
    commands.add_parser("diagram", help="the state machine as Mermaid text")
    commands.add_parser("demo", help="drive a simulated flaky model through the breaker")
    return parser


_COMMANDS: dict[str, Callable[[argparse.Namespace, TextIO], int]] = {
    "migrate": _cmd_migrate,
    "status": _cmd_status,
    "history": _cmd_history,
    "reset": _cmd_reset,
    "open": _cmd_open,
    "disable": _cmd_disable,
    "prune": _cmd_prune,
    "diagram": _cmd_diagram,
    "demo": _cmd_demo,
}


def run(
    argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    """Run one command; return its exit status. User errors are one line on `err`."""
    out = out or sys.stdout
    err = err or sys.stderr
    args = _parser().parse_args(argv)
    if args.command == "demo":
        # The demo trips gpt-4o on a simulated clock: keep it off real breakers unless asked.
        args.url = args.url or DEFAULT_URL
        args.namespace = args.namespace or "demo"
    else:
        args.url = args.url or os.environ.get("DURABLE_BREAKER_URL") or DEFAULT_URL
        args.namespace = args.namespace or os.environ.get("DURABLE_BREAKER_NAMESPACE") or "default"
    try:
        return _COMMANDS[args.command](args, out)
    except DurableBreakerError as error:
        print(f"durable-breaker: error: {error}", file=err)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        raise  # the reader went away: main() ends quietly
    except Exception as error:
        # Not a user error but a bug: still one line, unless asked for the traceback.
        if os.environ.get("DURABLE_BREAKER_DEBUG"):
            raise
        print(
            f"durable-breaker: internal error: {type(error).__name__}: {error} "
            "(set DURABLE_BREAKER_DEBUG=1 for the traceback, and please report it)",
            file=err,
        )
        return 70


def main() -> None:
    """Console entry point."""
    try:
        code = run()
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (`durable-breaker history k | head`): no traceback for that.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 141  # 128 + SIGPIPE, as a shell reports it
    sys.exit(code)
