"""While the database is unavailable: notice it, log it once, and decide in process from
what the local view holds."""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from datetime import datetime

from ._config import CircuitBreakerConfig
from ._errors import StoreUnavailableError
from ._machine import Decision, Hold, Trigger, decide
from ._view import LocalView

# During an outage one call per interval tries the database; the others do not wait for it.
RECHECK_INTERVAL_S = 1.0
_log = logging.getLogger("durable_breaker")
_TRACKERS: weakref.WeakSet[OutageTracker] = weakref.WeakSet()


def _new_locks() -> None:
    for tracker in list(_TRACKERS):
        tracker._lock = threading.Lock()  # another thread may have held it at a fork


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_locks)


class OutageTracker:
    """One breaker's idea of its database's health; during an outage, "fallback" decides on
    the circuits its local view holds (what this process last read, wrote or decided)."""

    def __init__(self, config: CircuitBreakerConfig, database: str, view: LocalView) -> None:
        self._config = config
        self._database = database
        self._view = view
        self._lock = threading.Lock()
        _TRACKERS.add(self)
        self.down_since: float | None = None  # time.monotonic() when the outage began
        self._next_try = 0.0

    def skip_store(self) -> bool:
        """Whether this call should not try the database (an outage, and not its turn)."""
        if self.down_since is None:
            return False  # the healthy path reads no clock and takes no lock
        with self._lock:
            now = time.monotonic()
            if self.down_since is None or now >= self._next_try:
                self._next_try = now + RECHECK_INTERVAL_S
                return False
            return True

    def unavailable(self) -> StoreUnavailableError:
        """The error for a call that skipped the database during an outage."""
        since = self.down_since
        lasted = 0.0 if since is None else time.monotonic() - since
        return StoreUnavailableError(
            f"{self._database} has been unavailable for {lasted:.1f} s; "
            f"it is tried again at most every {RECHECK_INTERVAL_S:g} s"
        )

    def failed(self, error: StoreUnavailableError) -> None:
        """The database did not answer: start an outage (logged once) if none is on.

        A database that answered too slowly (a lock held elsewhere) starts none: other
        keys may be fine, and each call is bounded by store_timeout anyway.
        """
        if not error.unreachable:
            _log.info("on_store_error=%r for this call: %s", self._config.on_store_error, error)
            return
        with self._lock:
            if self.down_since is not None:
                return
            self.down_since = time.monotonic()
            self._next_try = self.down_since + RECHECK_INTERVAL_S
        _log.warning(
            "database unavailable, on_store_error=%r until it answers again: %s",
            self._config.on_store_error,
            error,
        )

    def answered(self) -> None:
        """The database answered: end any outage."""
        if self.down_since is not None:
            with self._lock:
                since, self.down_since = self.down_since, None
            if since is not None:
                _log.warning(
                    "database %s answers again after %.1f s; its state is authoritative again",
                    self._database,
                    time.monotonic() - since,
                )

    def decide(
        self,
        key: str,
        trigger: Trigger,
        now: datetime,
        *,
        peek: bool,
        hold: Hold = None,
        generation: int | None = None,
    ) -> Decision:
        """Decide from the last circuit this process saw (a new one if none), in process;
        hold what changes (unproved: once the database answers, its state wins)."""
        with self._lock:
            circuit = self._view.last(key)
            decision = decide(circuit, trigger, now, self._config, hold=hold, generation=generation)
            if decision.changed and not peek:
                self._view.remember(key, decision.after)
        return decision
