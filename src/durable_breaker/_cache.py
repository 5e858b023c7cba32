"""The opt-in read cache (PostgreSQL): answers that cannot go stale between two changes of a
row, dropped when the database announces a change of that row.

Every change of a circuit row sends a NOTIFY (a trigger, migration 0002) when its transaction
commits. A listener thread receives them on a connection of its own and drops the row's entry.
The cache only holds answers a `check` may give without a write, and only two kinds:
"admit" for a Closed circuit and "reject" for an Open one until its cooldown ends. Every probe
admission and every state change still goes through the database. While the listener is not
connected (at start, after a lost connection) the cache is off and empty, so it can never
answer from a state it may have missed a change of.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import OrderedDict
from typing import Any, NamedTuple

from sqlalchemy import Engine

from . import _engine
from ._config import CircuitBreakerConfig
from ._machine import Decision, Trigger, decide, retry_after
from ._state import Circuit, CircuitState

CHANNEL = "durable_breaker"  # as migration 0002 notifies
_log = logging.getLogger("durable_breaker")
_RECONNECT_S = 1.0
_HEARTBEAT_S = 1.0


class Answer(NamedTuple):
    """What `check` answers for one key, and until when (clock seconds)."""

    admit: bool
    until: float
    circuit: Circuit  # the stored circuit it was decided from
    version: int | None
    quiet_success: bool  # a success would change nothing


class ReadCache:
    """One breaker's cache of `check` answers for one namespace."""

    def __init__(self, engine: Engine, namespace: str, config: CircuitBreakerConfig) -> None:
        self._config = config
        self._namespace = namespace
        self._answers: OrderedDict[str, Answer] = OrderedDict()
        self._lock = threading.Lock()
        self.on = False  # answers may be used only while the listener is connected
        self.changes = 0  # notifications received: a read that saw this change may not fill
        self.on_drop: Any = None  # for measurements: called with the key a change dropped
        self._closed = threading.Event()
        args, kwargs = engine.dialect.create_connect_args(engine.url)
        timeout = max(2, math.ceil(config.store_timeout.total_seconds()))
        name = f"{kwargs.get('application_name', 'durable-breaker')} cache"  # to tell it apart
        self._connect = (
            args,
            {"connect_timeout": timeout, **kwargs, "application_name": name, "autocommit": True},
        )
        self._forks = _engine.forks  # a forked child has no listener: its cache is off
        self._beat = f"\x1e{id(self)}-{os.getpid()}"  # cannot be a namespace (no US in it)
        self._heard_until = 0.0  # monotonic time until which the listener is known alive
        self._next_beat = 0.0
        self._thread = threading.Thread(target=self._listen, name="durable-breaker cache")
        self._thread.daemon = True
        self._thread.start()

    def get(self, key: str) -> Answer | None:
        if not self.on or self._forks != _engine.forks:
            return None
        if time.monotonic() > self._heard_until:  # the listener went quiet: trust nothing
            return None
        return self._answers.get(key)

    def fill(
        self, key: str, circuit: Circuit, version: int | None, decision: Decision, seen: int
    ) -> None:
        """Keep the answer `decision` gave from a read made when `changes` was `seen`."""
        if not self.on or self.changes != seen or decision.needs_write:
            return  # a change arrived during the read, or the answer needs the database
        if circuit.state is CircuitState.CLOSED:
            until = math.inf
        elif circuit.state is CircuitState.OPEN and not decision.fired:
            wait = retry_after(circuit, decision.now, self._config)
            if wait is None or wait <= 0:
                return
            until = decision.now.timestamp() + wait
        else:
            return
        quiet = not decide(circuit, Trigger.SUCCESS, decision.now, self._config).needs_write
        answer = Answer(decision.fired, until, circuit, version, quiet)
        with self._lock:
            if not self.on or self.changes != seen:
                return
            self._answers[key] = answer
            self._answers.move_to_end(key)
            if len(self._answers) > self._config.cached_keys:
                self._answers.popitem(last=False)

    def drop(self, key: str) -> None:
        with self._lock:
            self.changes += 1
            self._answers.pop(key, None)

    def close(self) -> None:
        self._closed.set()

    def _turn_off(self) -> None:
        with self._lock:
            self.on = False
            self.changes += 1
            self._answers.clear()

    def _listen(self) -> None:
        import psycopg

        warned = False
        while not self._closed.is_set():
            try:
                args, kwargs = self._connect
                with psycopg.connect(*args, **kwargs) as connection:
                    if not _has_trigger(connection):
                        raise LookupError(
                            "the durable_breaker_notify trigger is missing; run "
                            "`durable-breaker --url URL migrate`"
                        )
                    connection.execute(f"LISTEN {CHANNEL}")
                    self._heartbeat(connection)
                    with self._lock:
                        self.on = True  # empty, and every change from now on arrives
                        self.changes += 1  # reads made before listening must not fill
                    warned = False
                    self._serve(connection)
            except Exception as error:  # any failure: off until listening again
                if self.on or not warned:
                    _log.warning("read cache off until it listens again: %s", error)
                    warned = True
            self._turn_off()
            self._closed.wait(_RECONNECT_S)

    def _serve(self, connection: Any) -> None:
        """Drop what changes; prove every interval that notifications still arrive."""
        prefix = self._namespace + "\x1f"
        while not self._closed.is_set():
            for note in connection.notifies(timeout=_HEARTBEAT_S / 2):
                if note.payload == self._beat:
                    self._heard_until = time.monotonic() + _HEARTBEAT_S * 3
                elif note.payload.startswith(prefix):  # namespace, US, key
                    key = note.payload[len(prefix) :]
                    self.drop(key)
                    if self.on_drop is not None:
                        self.on_drop(key)
            if time.monotonic() > self._next_beat:
                self._heartbeat(connection)

    def _heartbeat(self, connection: Any) -> None:
        # A notification to ourselves through the server: if it stops coming back (a silent
        # network, a pooler that drops notifications), `get` stops answering.
        connection.execute("SELECT pg_notify(%s, %s)", (CHANNEL, self._beat))
        self._next_beat = time.monotonic() + _HEARTBEAT_S


def _has_trigger(connection: Any) -> bool:
    row = connection.execute(
        "SELECT 1 FROM pg_trigger WHERE tgname = 'durable_breaker_notify' "
        "AND tgrelid = 'durable_breaker_circuit'::regclass"
    ).fetchone()
    return row is not None
