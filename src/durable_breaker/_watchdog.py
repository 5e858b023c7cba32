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
from typing import Any

from sqlalchemy import Engine, event

_IDLE_EXIT_S = 10.0  # an idle (or disposed) engine's thread ends after this long


class StallWatchdog:
    """Watches one engine's checked-out connections; see the module docstring."""

    def __init__(self, bound_s: float) -> None:
        self._bound_s = bound_s
        self._lock = threading.Lock()
        self._deadlines: dict[int, tuple[float, Any]] = {}  # id(connection) -> (deadline, conn)
        self._watching = False
        self._pid = os.getpid()
        self._last_checkout = 0.0

    def install(self, engine: Engine) -> None:
        event.listen(engine, "checkout", self._checked_out)
        event.listen(engine, "checkin", self._checked_in)

    def _checked_out(self, dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        self.watch(dbapi_connection)

    def _checked_in(self, dbapi_connection: Any, _record: Any) -> None:
        self.release(dbapi_connection)

    def watch(self, dbapi_connection: Any) -> None:
        """Shut the connection's socket down if it is not released within the bound."""
        now = time.monotonic()
        with self._lock:
            self._deadlines[id(dbapi_connection)] = (now + self._bound_s, dbapi_connection)
            self._last_checkout = now
            if self._pid != os.getpid():  # a forked child: the parent's thread is not here
                self._pid, self._watching = os.getpid(), False
            if not self._watching:
                self._watching = True
                threading.Thread(
                    target=self._watch, name="durable-breaker watchdog", daemon=True
                ).start()

    def release(self, dbapi_connection: Any) -> None:
        """The connection is back: stop watching it."""
        with self._lock:
            self._deadlines.pop(id(dbapi_connection), None)

    def _watch(self) -> None:
        interval = min(0.5, self._bound_s / 4)
        while True:
            time.sleep(interval)
            now = time.monotonic()
            with self._lock:
                stalled = [conn for deadline, conn in self._deadlines.values() if now > deadline]
                if not self._deadlines and now - self._last_checkout > _IDLE_EXIT_S:
                    self._watching = False  # the next checkout starts a new thread
                    return
            for dbapi_connection in stalled:
                _shut_down(dbapi_connection)


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
