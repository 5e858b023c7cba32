"""The `durable-breaker` command line: migrate, status, explain, history, reset, open,
disable, prune, diagram, demo."""

from __future__ import annotations

import argparse
import difflib
import getpass
import importlib.metadata
import json
import os
import re
import shlex
import socket
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

from ._breaker import CircuitBreaker
from ._common import KeyStatus
from ._config import CircuitBreakerConfig
from ._engine import DEFAULT_URL, make_engine
from ._errors import CircuitOpenError, DurableBreakerError, InvalidArgumentError, UnknownKeyError
from ._explain import (
    UNKNOWN_SETTINGS,
    clock_time,
    duration,
    policy_dict,
    relative,
    settings_words,
    transition_dict,
)
from ._machine import mermaid
from ._migrations import upgrade
from ._state import CircuitState, Transition
from ._tables import MAX_ACTOR_LENGTH
from ._urls import safe_url

DEMO_KEY = "gpt-4o"
DEMO_CALLS = 14
DEMO_STEP_S = 4.0


def _transition_line(t: Transition) -> str:
    """One audit row for people: time, change, trigger, failures, actor, reason and why."""
    why = []
    if t.error_type is not None or t.status_code is not None:
        http = "" if t.status_code is None else f"HTTP {t.status_code}"
        why.append(" ".join(part for part in (t.error_type, http) if part))
    if t.retry_after is not None:
        why.append(f"Retry-After {duration(t.retry_after)}")
    if t.open_until is not None:
        day = "" if t.open_until.date() == t.at.date() else "%Y-%m-%d "
        why.append(f"held until {t.open_until.strftime(day + '%H:%M:%S')}")
    detail = f"  [{'; '.join(why)}]" if why else ""
    return (
        f"{t.at:%Y-%m-%d %H:%M:%S}  {t.from_state.value:>11} -> {t.to_state.value:<11}  "
        f"{t.trigger:<10}  {t.consecutive_failures:>8}  {t.actor}  {t.reason or '-'}{detail}"
    )


_HISTORY_HEADER = (
    f"{'AT (UTC)':<19}  {'FROM':>11}    {'TO':<11}  {'TRIGGER':<10}  {'FAILURES':>8}  "
    "ACTOR  REASON  [WHY]"
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


def _open(args: argparse.Namespace) -> CircuitBreaker:
    """The breaker for an operator's command: never creates or migrates a database."""
    return CircuitBreaker(args.url, namespace=args.namespace, migrate=False, actor=args.actor)


def _status_dict(s: KeyStatus, now: datetime) -> dict[str, object]:
    admits = None if s.retry_after is None else now + timedelta(seconds=s.retry_after)
    return {
        "key": s.key,
        "state": s.state.value,
        "consecutive_failures": s.consecutive_failures,
        "since": None if s.since is None else s.since.isoformat(),
        "retry_after": s.retry_after,
        "admits_at": None if admits is None else admits.isoformat(),
        "open_until": None if s.open_until is None else s.open_until.isoformat(),
        "reason": s.reason,
        "actor": s.actor,
        "policy": None if s.policy is None else policy_dict(s.policy),
    }


def _next_call(s: KeyStatus) -> str:
    if s.state in (CircuitState.CLOSED, CircuitState.DISABLED) or s.retry_after == 0:
        return "now"
    if s.retry_after is None:
        return "until reset" if s.state is CircuitState.FORCED_OPEN else "unknown"
    return f"in {duration(s.retry_after)}"


def _cmd_status(args: argparse.Namespace, out: TextIO) -> int:
    with _open(args) as breaker:
        rows = breaker.status(args.keys or None, states=args.state)
        now = breaker._now()  # (the breaker's clock: the one its waits were computed with)
    if args.json:
        json.dump([_status_dict(s, now) for s in rows], out, indent=2)
        print(file=out)
        return 0
    if not rows:
        print(f"no keys {_matching(args)}in namespace {args.namespace!r}", file=out)
        return 0
    table = [("KEY", "STATE", "FAILURES", "SINCE", "NEXT CALL", "ACTOR", "REASON")]
    for s in rows:
        table.append(
            (
                s.key,
                s.state.value,
                str(s.consecutive_failures),
                relative(s.since, now),
                _next_call(s),
                s.actor or "-",
                s.reason or "-",
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]) - 1)]
    for row in table:
        cells = [
            cell.rjust(width) if i == 2 else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=False))
        ]
        print("  ".join([*cells, row[-1]]), file=out)
    _print_policies(rows, out)
    return 0


def _matching(args: argparse.Namespace) -> str:
    said = []
    if args.keys:
        said.append("named " + ", ".join(map(repr, args.keys)))
    if args.state:
        said.append("in state " + " or ".join(state.value for state in args.state))
    return " ".join(said) + " " if said else ""


def _print_policies(rows: list[KeyStatus], out: TextIO) -> None:
    """Which settings the last deciding process of each key used, and who it was."""
    groups: dict[str, list[str]] = {}
    for s in rows:
        if s.policy is not None:
            groups.setdefault(f"{settings_words(s.policy)} (by {s.policy.set_by})", []).append(
                s.key
            )
    distinct = {words.rsplit(" (by ", 1)[0] for words in groups}
    unknown = [s.key for s in rows if s.policy is None]
    if unknown:
        groups[f"unknown: {UNKNOWN_SETTINGS}"] = unknown
    if not groups:
        return
    print("\nsettings of the last process that decided for each key:", file=out)
    for words, keys in groups.items():
        print(f"  {', '.join(keys)}: {words}", file=out)
    if len(distinct) > 1:
        print("  (these keys are decided with different settings)", file=out)


def _cmd_explain(args: argparse.Namespace, out: TextIO) -> int:
    with _open(args) as breaker:
        explanation = breaker.explain(args.key, history=args.history)
        if not explanation.stored:
            raise UnknownKeyError(_unknown(breaker, args.key))
    if args.json:
        json.dump(explanation.as_dict(), out, indent=2)
        print(file=out)
    else:
        out.write(str(explanation))
    return 0


def _unknown(breaker: CircuitBreaker, key: str, fix: str = "") -> str:
    """That no process stored `key`, with the stored keys it may be a misspelling of."""
    known = [s.key for s in breaker.status()]
    close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
    similar = f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""
    return f"no circuit is stored for key {key!r} in namespace {breaker.namespace!r}{similar}" + (
        f"; {fix}" if fix else ""
    )


def _cmd_history(args: argparse.Namespace, out: TextIO) -> int:
    if args.follow:
        with _open(args) as breaker:
            last = 10 if args.limit is None else args.limit
            poll = args.interval
            if not args.json:
                print(("KEY: " if args.key is None else "") + _HISTORY_HEADER, file=out)
            for t in breaker.follow(args.key, last=last, poll=poll):
                line = json.dumps(transition_dict(t)) if args.json else _transition_line(t)
                if args.key is None:
                    line = line if args.json else f"{t.key}: {line}"
                print(line, file=out, flush=True)
        return 0
    if args.key is None:
        raise InvalidArgumentError("history needs a KEY (or --follow to tail every key)")
    with _open(args) as breaker:
        rows = breaker.history(args.key, args.limit)
        if not rows and not breaker.status([args.key]):
            raise UnknownKeyError(_unknown(breaker, args.key))
    if args.json:
        json.dump([transition_dict(t) for t in rows], out, indent=2)
        print(file=out)
    else:
        print(_HISTORY_HEADER, file=out)
        for t in rows:
            print(_transition_line(t), file=out)
    return 0


def _confirmed(args: argparse.Namespace, effect: str) -> None:
    """Refuse a change for every process unless confirmed."""
    if not args.yes:
        raise InvalidArgumentError(
            f"{args.command} {effect} {args.key!r} in every process; add --yes to confirm"
        )


def _cmd_reset(args: argparse.Namespace, out: TextIO) -> int:
    _confirmed(args, "closes the circuit of")
    with _open(args) as breaker:
        done = _on_stored_key(
            breaker, args.key, lambda: breaker.reset(args.key, reason=args.reason)
        )
    print(f"reset {args.key!r}:\n{_HISTORY_HEADER}\n{_transition_line(done)}", file=out)
    return 0


_NEW = "check the spelling, or add --new to create its circuit"


def _on_stored_key(
    breaker: CircuitBreaker, key: str, change: Callable[[], Transition], fix: str = ""
) -> Transition:
    """`change` of a stored key; refused for one no process has stored, naming the stored
    keys it may be a misspelling of (and `fix`)."""
    try:
        return change()
    except UnknownKeyError:
        raise UnknownKeyError(_unknown(breaker, key, fix)) from None


def _cmd_open(args: argparse.Namespace, out: TextIO) -> int:
    _confirmed(args, "rejects every call to")
    with _open(args) as breaker:
        done = _on_stored_key(
            breaker,
            args.key,
            lambda: breaker.force_open(
                args.key, args.for_, reason=args.reason, must_exist=not args.new
            ),
            _NEW,
        )
    held = "until reset" if done.open_until is None else f"until {clock_time(done.open_until)}"
    print(
        f"forced {args.key!r} open {held}:\n{_HISTORY_HEADER}\n{_transition_line(done)}", file=out
    )
    return 0


def _cmd_disable(args: argparse.Namespace, out: TextIO) -> int:
    _confirmed(args, "admits every call to")
    with _open(args) as breaker:
        done = _on_stored_key(
            breaker,
            args.key,
            lambda: breaker.disable(args.key, reason=args.reason, must_exist=not args.new),
            _NEW,
        )
    print(
        f"disabled {args.key!r} until reset:\n{_HISTORY_HEADER}\n{_transition_line(done)}", file=out
    )
    return 0


def _cmd_prune(args: argparse.Namespace, out: TextIO) -> int:
    age = duration(args.older_than.total_seconds())
    where = f"namespace {args.namespace!r}"
    with _open(args) as breaker:
        now = breaker._now()
        cutoff = now - args.older_than
        if args.dry_run:
            doomed = breaker.prunable(args.older_than)
            total = sum(count for _, count, _ in doomed)
            print(
                f"would remove {total} transition{'s' * (total != 1)} older than {age} "
                f"(before {clock_time(cutoff)}) from {where}; nothing removed "
                "(the latest of every key is kept)",
                file=out,
            )
            for key, count, oldest in doomed:
                print(
                    f"  {key}: {count}, the oldest {relative(oldest, now)}",
                    file=out,
                )
            return 0
        removed = breaker.prune(args.older_than, batch_size=args.batch_size)
    print(
        f"removed {removed} transition{'s' * (removed != 1)} older than {age} "
        f"(before {clock_time(cutoff)}) from {where} (the latest of every key is kept)",
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
    with CircuitBreaker(
        args.url, config, clock=clock, namespace=args.namespace, actor=args.actor
    ) as breaker:
        seen = breaker.history(DEMO_KEY)
        if seen:  # resume after the last stored change, even if it was on a simulated future
            clock.now = max(clock.now, seen[-1].at.timestamp() + DEMO_STEP_S)
        start = breaker.state(DEMO_KEY)
        print(f"database {safe_url(args.url)}, namespace {args.namespace!r}", file=out)
        print(
            f"the clock is simulated: each call is {DEMO_STEP_S:g}s after the last, and "
            "nothing waits",
            file=out,
        )
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
        print("  " + _HISTORY_HEADER, file=out)
        for t in breaker.history(DEMO_KEY):
            print("  " + _transition_line(t), file=out)
    print("\nrun `durable-breaker demo` again: it starts from the state this run left.", file=out)
    shown = safe_url(args.url)
    where = f" --url {shlex.quote(shown)} --namespace {shlex.quote(args.namespace)}"
    masked = " (put the password back in the URL)" if shown != str(args.url) else ""
    print(f"inspect what it left (times are on the simulated clock){masked}:", file=out)
    for command in ("status", f"explain {DEMO_KEY}", f"history {DEMO_KEY}"):
        print(f"  durable-breaker{where} {command}", file=out)
    return 0


class _DemoClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_NUMBER = r"\d+(?:\.\d+)?"
_PART = rf"({_NUMBER})(ms|[smhdw])"
_PARTS = re.compile(rf"(?:{_PART}\s*)+", re.ASCII)
_MISSING_UNIT = re.compile(rf"(?:{_PART})+\d+", re.ASCII)  # 1h30
_LONGEST = timedelta(days=3660)


def _duration(text: str) -> timedelta:
    """A duration as people write it: 90 (seconds), 90s, 1.5h, 1h30m, 2d, 1w, 250ms; parts
    from the largest unit down, each once. Case matters: 1M is neither a month nor a minute."""
    written = text.strip()
    parts = re.findall(_PART, written, re.ASCII)
    sizes = [_UNITS[unit] for _, unit in parts]
    if re.fullmatch(_NUMBER, written, re.ASCII):
        seconds = float(written)  # a bare number: seconds
    elif _PARTS.fullmatch(written) and sizes == sorted(set(sizes), reverse=True):
        seconds = sum(float(number) * _UNITS[unit] for number, unit in parts)
    else:
        hint = f" (did you mean {written}m?)" if _MISSING_UNIT.fullmatch(written) else ""
        raise argparse.ArgumentTypeError(
            f"expected a duration such as 90, 90s, 1.5h, 1h30m, 2d or 1w, got {text!r}{hint}"
        )
    if not 0 <= seconds <= _LONGEST.total_seconds():  # also refuses nan, inf, and -5
        raise argparse.ArgumentTypeError(
            f"expected a duration from 0 to {_LONGEST.days}d, got {text!r}"
        )
    return timedelta(seconds=seconds)


def _positive_duration(text: str) -> timedelta:
    wait = _duration(text)
    if wait <= timedelta(0):
        raise argparse.ArgumentTypeError(f"expected a duration above 0 (e.g. 15m), got {text!r}")
    return wait


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return int(text)


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return int(text)


def _states(text: str) -> list[CircuitState]:
    try:
        return [CircuitState(part.strip().lower()) for part in text.split(",")]
    except ValueError:
        known = ",".join(state.value for state in CircuitState)
        raise argparse.ArgumentTypeError(
            f"expected states among {known}, comma-separated, got {text!r}"
        ) from None


def _globals() -> argparse.ArgumentParser:
    """The options every command takes, before or after its name (given twice, the one
    after wins)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url",
        default=argparse.SUPPRESS,
        help=f"database URL (default: $DURABLE_BREAKER_URL, else {DEFAULT_URL})",
    )
    common.add_argument(
        "--namespace",
        default=argparse.SUPPRESS,
        help="breaker group within the database (default: $DURABLE_BREAKER_NAMESPACE, "
        "else 'default'; the demo uses 'demo')",
    )
    common.add_argument(
        "--actor",
        default=argparse.SUPPRESS,
        help="who the audit trail names for changes made here (default: "
        "$DURABLE_BREAKER_ACTOR, else user@host)",
    )
    return common


def _parser() -> argparse.ArgumentParser:
    common = _globals()
    parser = argparse.ArgumentParser(
        prog="durable-breaker",
        description="A durable, shared, audited per-key circuit breaker. Durations take "
        "90 (seconds), 90s, 1.5h, 1h30m, 2d or 1w.",
        parents=[common],
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"%(prog)s {package_version()}",
        help="print the version and exit",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, summary: str, description: str | None = None) -> argparse.ArgumentParser:
        return commands.add_parser(
            name, help=summary, description=description or summary, parents=[common]
        )

    def confirm(sub: argparse.ArgumentParser, new: bool = False) -> None:
        sub.add_argument("key", help="the key (e.g. a model name)")
        sub.add_argument("--reason", default=None, help="why, for the audit trail")
        sub.add_argument("--yes", action="store_true", help="confirm the change for every process")
        if new:
            sub.add_argument(
                "--new",
                action="store_true",
                help="create the circuit of a key no process has stored yet",
            )

    command("migrate", "upgrade the schema to the newest revision")
    status = command(
        "status",
        "keys with their state, why and when they next admit a call",
        "Every stored key (or those named) with its state, since when, when it next admits a "
        "call, and the actor and reason of its last transition. Waits are computed with the "
        "settings the last process that decided for each key stored.",
    )
    status.add_argument("keys", nargs="*", metavar="KEY", help="only these keys")
    status.add_argument(
        "--state",
        type=_states,
        metavar="STATE[,STATE...]",
        help="only keys in these states (closed, open, half_open, forced_open, disabled)",
    )
    status.add_argument("--json", action="store_true", help="a JSON list, times in ISO 8601")
    explain = command(
        "explain",
        "why a key is in its state, when it next admits a call, and what changes it",
    )
    explain.add_argument("key", help="the key (e.g. a model name)")
    explain.add_argument("--json", action="store_true", help="a JSON object, times in ISO 8601")
    explain.add_argument(
        "--history",
        type=_count,
        default=10,
        metavar="N",
        help="transitions read to find the cause (%(default)s)",
    )
    history = command("history", "a key's transitions, oldest first")
    history.add_argument("key", nargs="?", help="the key (optional with --follow: every key)")
    history.add_argument("--limit", type=_count, default=None, metavar="N", help="only the last N")
    history.add_argument(
        "--json", action="store_true", help="a JSON list (one object per line with --follow)"
    )
    history.add_argument(
        "-f",
        "--follow",
        action="store_true",
        help="after the last N (default 10), print new transitions of every process as they "
        "are committed, until interrupted",
    )
    history.add_argument(
        "--interval",
        type=_positive_duration,
        default=timedelta(seconds=0.5),
        metavar="DURATION",
        help="how often --follow polls (0.5s)",
    )
    force = command("open", "hold a key's circuit open until reset, or for a time (audited)")
    confirm(force, new=True)
    force.add_argument(
        "--for",
        dest="for_",
        type=_positive_duration,
        metavar="DURATION",
        help="then probe as after a cooldown (default: until reset)",
    )
    disable = command(
        "disable", "admit every call to a key until reset; outcomes still counted (audited)"
    )
    confirm(disable, new=True)
    reset = command("reset", "force a key's circuit closed (audited)")
    confirm(reset)
    prune = command(
        "prune",
        "delete old transitions, keeping the latest of every key",
    )
    prune.add_argument(
        "--older-than",
        type=_duration,
        required=True,
        metavar="DURATION",
        help="delete transitions older than this (e.g. 30d)",
    )
    mode = prune.add_mutually_exclusive_group(required=True)
    mode.add_argument("--yes", action="store_true", help="confirm the deletion")
    mode.add_argument(
        "--dry-run", action="store_true", help="print what would be deleted, delete nothing"
    )
    prune.add_argument(
        "--batch-size",
        type=_positive,
        default=1000,
        metavar="N",
        help="rows per transaction (%(default)s)",
    )
    command("diagram", "the state machine as Mermaid text")
    command("demo", "drive a simulated flaky model through the breaker (simulated clock)")
    return parser


_COMMANDS: dict[str, Callable[[argparse.Namespace, TextIO], int]] = {
    "migrate": _cmd_migrate,
    "status": _cmd_status,
    "explain": _cmd_explain,
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
    # (An empty option is kept, and refused with the others' checks: `--namespace "$NS"`
    # with NS unset must not act on the default namespace.)
    if args.command == "demo":
        # The demo trips gpt-4o on a simulated clock: keep it off real breakers unless asked.
        args.url = _given(args, "url", None, DEFAULT_URL)
        args.namespace = _given(args, "namespace", None, "demo")
    else:
        args.url = _given(args, "url", "DURABLE_BREAKER_URL", DEFAULT_URL)
        args.namespace = _given(args, "namespace", "DURABLE_BREAKER_NAMESPACE", "default")
    actor = _given(args, "actor", "DURABLE_BREAKER_ACTOR", None)
    args.actor = _person() if actor is None else actor
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


def _given(args: argparse.Namespace, option: str, variable: str | None, default: str | None) -> Any:
    """A global option's value: the flag's, else the environment variable's, else `default`."""
    value = getattr(args, option, None)
    if value is None and variable is not None:
        value = os.environ.get(variable)
    return default if value is None else value


def _person() -> str:
    """user@host: who runs this command (a CLI process's pid says nothing after it ends)."""
    try:
        user = getpass.getuser()
    except (OSError, KeyError):  # no name for this uid (a bare container)
        user = f"uid{os.getuid()}" if hasattr(os, "getuid") else "unknown"
    return f"{user}@{socket.gethostname()}"[:MAX_ACTOR_LENGTH]


def package_version() -> str:
    try:
        return importlib.metadata.version("durable-breaker")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


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
