"""A client-side bound on how long a PostgreSQL connection may be checked out.

Server-side timeouts cannot help when the server, or a pooler or proxy in front of it,
accepts bytes but never answers, and TCP timeouts cannot either (the bytes are
acknowledged). So a connection checked out for longer than its bound has its socket shut
down from a watchdog thread: the blocked call fails at once as a lost connection, which
the pool discards and the caller treats as an outage.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import weakref
from typing import Any

from sqlalchemy import Engine, event

_IDLE_EXIT_S = 10.0  # an idle (or disposed) engine's thread ends after this long


_WATCHDOGS: weakref.WeakSet[StallWatchdog] = weakref.WeakSet()


class StallWatchdog:
    """Watches one engine's checked-out connections; see the module docstring.

    `watch` and `release` take no lock (they run around every statement of the hot path):
    a dict's item set and pop are atomic, and the watching thread copies the dict in one
    step before looking at it.
    """

    def __init__(self, bound_s: float) -> None:
        self._bound_s = bound_s
        self._lock = threading.Lock()  # starting the thread
        self._deadlines: dict[int, tuple[float, Any]] = {}  # id(connection) -> (deadline, conn)
        self._watching = False
        _WATCHDOGS.add(self)

    def install(self, engine: Engine) -> None:
        event.listen(engine, "checkout", self._checked_out)
        event.listen(engine, "checkin", self._checked_in)

    def _checked_out(self, dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        self.watch(dbapi_connection)

    def _checked_in(self, dbapi_connection: Any, _record: Any) -> None:
        self.release(dbapi_connection)

    def watch(self, dbapi_connection: Any) -> None:
        """Shut the connection's socket down if it is not released within the bound."""
        self._deadlines[id(dbapi_connection)] = (
            time.monotonic() + self._bound_s,
            dbapi_connection,
        )
        if not self._watching:
            with self._lock:
                if not self._watching:
                    self._watching = True
                    threading.Thread(
                        target=self._watch, name="durable-breaker watchdog", daemon=True
                    ).start()

    def release(self, dbapi_connection: Any) -> None:
        """The connection is back: stop watching it."""
        self._deadlines.pop(id(dbapi_connection), None)

    def _watch(self) -> None:
        interval = min(0.5, self._bound_s / 4)
        idle_since = time.monotonic()
        while True:
            time.sleep(interval)
            now = time.monotonic()
            watched = list(self._deadlines.values())  # one step: no lock needed
            if watched:
                idle_since = now
            elif now - idle_since > _IDLE_EXIT_S:
                with self._lock:
                    self._watching = False  # the next watch starts a new thread
                if not self._deadlines:
                    return
                with self._lock:  # watched again meanwhile: carry on
                    self._watching = True
            for deadline, dbapi_connection in watched:
                if now > deadline:
                    _shut_down(dbapi_connection)

    def _forked(self) -> None:
        # A forked child inherits the flag but not the thread, nor anything to watch.
        self._deadlines, self._watching = {}, False
        self._lock = threading.Lock()


def _after_fork_in_child() -> None:
    for watchdog in list(_WATCHDOGS):
        watchdog._forked()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _shut_down(dbapi_connection: Any) -> None:
    """Make every blocked read or write on this connection's socket fail now."""
    try:
        duplicate = socket.socket(fileno=os.dup(dbapi_connection.fileno()))
    except Exception:  # the driver's "connection is lost", a closed descriptor: nothing to do
        return
    try:
        duplicate.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # not connected any more
    finally:
        duplicate.close()
