"""The SQL store: each method is one whole domain operation in one transaction."""

from __future__ import annotations

from collections.abc import Callable, Collection, Generator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Engine,
    bindparam,
    delete,
    exc,
    exists,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql

from ._config import CircuitBreakerConfig
from ._engine import owns, write_transaction
from ._errors import StoreUnavailableError, UnknownKeyError
from ._faults import Fault, classify, translate_errors, with_retries
from ._machine import Decision, Hold, Trigger, audit_reason, decide
from ._raw import AUDIT_COLUMNS, Change, PostgresRaw, SqliteRaw, ThroughSqlAlchemy
from ._state import NEW_CIRCUIT, Circuit, CircuitState, Transition
from ._tables import circuits, transitions
from ._urls import safe_url
from ._view import DataVersion, Held, LocalView, NoProof, Notifications, Rule

Statement = tuple[Any, dict[str, Any]]  # an executable and its parameters
_CIRCUIT_COLUMNS = (
    circuits.c.state,
    circuits.c.consecutive_failures,
    circuits.c.half_open_probes,
    circuits.c.last_failure_at,
    circuits.c.half_open_since,
    circuits.c.open_until,
    circuits.c.generation,
)


# Rows are typed Any: Row's type parameters differ between SQLAlchemy 2.0 and 2.1.
def circuit_of(row: Any) -> Circuit:
    return Circuit(
        state=CircuitState(row.state),
        consecutive_failures=row.consecutive_failures,
        half_open_probes=row.half_open_probes,
        last_failure_at=row.last_failure_at,
        half_open_since=row.half_open_since,
        open_until=row.open_until,
        generation=row.generation,
    )


def transition_of(row: Any) -> Transition:
    return Transition(
        key=row.key,
        from_state=CircuitState(row.from_state),
        to_state=CircuitState(row.to_state),
        trigger=row.trigger,
        at=row.at,
        consecutive_failures=row.consecutive_failures,
        reason=row.reason,
        actor=row.actor,
        id=row.id,
    )


def stored_circuits(rows: Any) -> list[StoredCircuit]:
    """The rows of `Statements.circuits_query` as stored circuits."""
    return [StoredCircuit(row.key, circuit_of(row), row.at) for row in rows]


@dataclass(frozen=True, slots=True)
class StoredCircuit:
    """A stored key with its circuit, and when it entered its state (None: never changed)."""

    key: str
    circuit: Circuit
    since: datetime | None


class Statements:
    """The SQL of one namespace's operations, and the decisions between them; no I/O, so
    that the sync store and the asyncio one run the very same statements."""

    def __init__(self, dialect: str, namespace: str) -> None:
        self.namespace = namespace
        self._where_ns = circuits.c.namespace == namespace
        # SQLite's BEGIN IMMEDIATE serialises writers, so a plain INSERT cannot collide. On
        # PostgreSQL a concurrent first write of the same key can: then `fire` re-reads and retries.
        self._insert_circuit = (
            postgresql.insert(circuits).on_conflict_do_nothing().returning(circuits.c.version)
            if dialect == "postgresql"
            else insert(circuits)
        )
        self._update_circuit = (
            update(circuits)
            .where(self._where_ns, circuits.c.key == bindparam("row_key"))
            .values(version=circuits.c.version + 1)
        )
        # Built once: building a statement per call costs more than the read itself.
        self.select_circuit = select(*_CIRCUIT_COLUMNS, circuits.c.version).where(
            self._where_ns, circuits.c.key == bindparam("key")
        )
        self._select_for_update = self.select_circuit.with_for_update()
        # The latest transition of each key, through the (namespace, key, id) index.
        since = (
            select(transitions.c.at)
            .where(
                transitions.c.namespace == circuits.c.namespace,
                transitions.c.key == circuits.c.key,
            )
            .order_by(transitions.c.id.desc())
            .limit(1)
            .scalar_subquery()
        )
        self.circuits_query = (
            select(circuits.c.key, *_CIRCUIT_COLUMNS, since.label("at"))
            .where(self._where_ns)
            .order_by(circuits.c.key)
        )

    def history_query(self, key: str | None, limit: int | None) -> Any:
        """The last `limit` transitions of `key` (of every key when None; all of them when
        `limit` is None), newest first."""
        query = select(transitions).where(transitions.c.namespace == self.namespace)
        if key is not None:
            query = query.where(transitions.c.key == key)
        return query.order_by(transitions.c.id.desc()).limit(limit)

    def fire_steps(
        self,
        key: str,
        trigger: Trigger,
        clock: Callable[[], datetime],
        config: CircuitBreakerConfig,
        reason: str | None,
        actor: str,
        must_exist: bool,
        hold: Hold,
        generation: int | None,
    ) -> Generator[Statement, Any, tuple[Decision, int | None]]:
        """The statements of one locked read-decide-write, for a sync or an async runner:
        yields (statement, parameters), is sent each one's Result, returns what `fire` does.

        The time is read once the row is locked, so a call that waited for the lock never
        writes a time older than the one it waited behind.
        """
        while True:
            row = (yield self._select_for_update, {"key": key}).first()
            if row is None and must_exist:
                raise UnknownKeyError(
                    f"no circuit is stored for key {key!r} in namespace {self.namespace!r}"
                )
            now = clock()
            before = NEW_CIRCUIT if row is None else circuit_of(row)
            decision = decide(before, trigger, now, config, hold=hold, generation=generation)
            if not decision.needs_write:
                return decision, None if row is None else row.version
            values = self._values(decision.after, now)
            if row is not None:
                yield self._update_circuit, {**values, "row_key": key}
                version = row.version + 1
                break
            inserted = yield (
                self._insert_circuit,
                {**values, "namespace": self.namespace, "key": key, "version": 1},
            )
            if not inserted.returns_rows or inserted.first() is not None:
                version = 1
                break
            # Another process stored this key first: read it again, under its lock.
        audit = self._audit(key, trigger, decision, reason, actor, config)
        if audit is not None:
            yield insert(transitions), audit
        return decision, version

    def _audit(
        self,
        key: str,
        trigger: Trigger,
        decision: Decision,
        reason: str | None,
        actor: str,
        config: CircuitBreakerConfig,
    ) -> dict[str, object] | None:
        """The audit row of `decision`, or None when it is not audited."""
        if not decision.audited:
            return None
        return {
            "namespace": self.namespace,
            "key": key,
            "from_state": decision.before.state.value,
            "to_state": decision.after.state.value,
            "trigger": trigger.value,
            "at": decision.now,
            "consecutive_failures": decision.after.consecutive_failures,
            "reason": audit_reason(decision, config, reason),
            "actor": actor,
        }

    @staticmethod
    def _values(circuit: Circuit, now: datetime) -> dict[str, object]:
        return {
            "state": circuit.state.value,
            "consecutive_failures": circuit.consecutive_failures,
            "half_open_probes": circuit.half_open_probes,
            "last_failure_at": circuit.last_failure_at,
            "half_open_since": circuit.half_open_since,
            "open_until": circuit.open_until,
            "generation": circuit.generation,
            "updated_at": now,
        }


class SqlStore(Statements):
    """The circuits of one namespace in one SQLite or PostgreSQL database, and the local view
    that spares reading them while its rule proves them unchanged (see `_view`)."""

    def __init__(
        self, engine: Engine, namespace: str, timeout_s: float, *, cached_keys: int, cache: bool
    ) -> None:
        super().__init__(engine.dialect.name, namespace)
        self.engine = engine
        self.timeout_s = timeout_s  # how long transient faults are retried
        # Reads are single statements: autocommit spares PostgreSQL a BEGIN and a ROLLBACK
        # round trip and still sees everything committed before it. (pysqlite never opens
        # a transaction for a SELECT, so SQLite needs nothing.)
        self._reader = (
            engine.execution_options(isolation_level="AUTOCOMMIT")
            if engine.dialect.name == "postgresql"
            else engine
        )
        self._raw: SqliteRaw | PostgresRaw | ThroughSqlAlchemy
        rule: Rule = NoProof()
        if not owns(engine):
            self._raw = ThroughSqlAlchemy(engine)  # the caller's connections, as they are
        elif engine.dialect.name == "postgresql":
            self._raw = PostgresRaw(engine)
        else:
            self._raw = sqlite = SqliteRaw(engine, timeout_s)
            rule = DataVersion(sqlite.connect, sqlite.wrap)
        if cache:
            rule = Notifications(engine, namespace, timeout_s)
        self.view = LocalView(rule, cached_keys)
        if isinstance(rule, Notifications):
            rule.view = self.view

    def read(self, key: str, proof: object = None) -> Held:
        """What the database holds for `key` now: what the view holds, if its rule proves it
        current, else the committed row, read without locking (and held). `proof`: the
        rule's, if the caller has just taken it."""
        try:
            return self._read(key, proof)
        except exc.SQLAlchemyError as error:
            if classify(error) is not Fault.TRANSIENT:
                with translate_errors(self.engine, "read a circuit"):
                    raise
            # Retried from here, so that the healthy path costs no retry set-up.
            return with_retries(
                self.engine, "read a circuit", self.timeout_s, lambda: self._read(key, None)
            )

    def _read(self, key: str, proof: object) -> Held:
        view = self.view
        if proof is None:
            proof = view.rule.proof()
        held = view.current(key, proof)
        if held is not None:
            return held
        before = view.rule.before_read(proof)
        return view.read(key, self._raw.load(self.namespace, key), before, self._raw.parse)

    def write(
        self,
        key: str,
        decision: Decision,
        version: int | None,
        trigger: Trigger,
        config: CircuitBreakerConfig,
        *,
        reason: str | None,
        actor: str,
    ) -> int | None:
        """Store `decision`, and its audit row, only if `key`'s row is still at `version`
        (None: still absent); return the row's new version, or None if another writer got
        there first (then `fire` decides again under a lock).

        Optimistic: no lock is held while deciding, and on PostgreSQL the change and its
        audit row are one statement (its timeouts go ahead of it in the same pipeline): an
        uncontended write costs one round trip.
        """
        after, audit = decision.after, self._audit(key, trigger, decision, reason, actor, config)
        self.view.changing(key)
        change = Change(
            self.namespace,
            key,
            (
                after.state.value,
                after.consecutive_failures,
                after.half_open_probes,
                after.last_failure_at,
                after.half_open_since,
                after.open_until,
                after.generation,
            ),
            decision.now,
            version,
            None if audit is None else tuple(audit[name] for name in AUDIT_COLUMNS),
        )
        try:
            written = self._raw.write(change)
        except BaseException as error:
            self.view.changing(key)  # it may have landed all the same
            if not isinstance(error, exc.SQLAlchemyError):
                raise
            fault = classify(error)
            lost = fault is Fault.UNREACHABLE or (
                isinstance(error, exc.DBAPIError) and error.connection_invalidated
            )
            if lost and self.engine.dialect.name == "postgresql":
                # The write may have been committed before the connection broke;
                # then trying again would apply it twice. Only when the server says it ended
                # the session (a restart, an administrator) is no statement of ours left
                # running, so that the row's version tells whether it was applied.
                ended = str(getattr(getattr(error, "orig", None), "sqlstate", "")).startswith("57P")
                if ended and self._stored_version(key) == version:
                    return None  # not applied: `fire` goes on under a lock
                raise StoreUnavailableError(
                    f"lost the connection to {safe_url(self.engine)} while writing; the "
                    "change may or may not have been stored"
                ) from error
            if fault is Fault.TRANSIENT:
                return None  # `fire` tries again, under a lock, with retries
            with translate_errors(self.engine, "update a circuit"):
                raise
        if written is not None:
            self.view.wrote(key, after, written)
        return written

    def _stored_version(self, key: str) -> int | None:
        """The version of `key`'s row as read now, past the view (None: not stored)."""
        row = with_retries(
            self.engine,
            "read a circuit",
            self.timeout_s,
            lambda: self._raw.load(self.namespace, key),
        )
        return None if row is None else self._raw.parse(row)[1]

    def close(self) -> None:
        """Close the connections the hot path opened itself, and stop the view's rule."""
        self.view.close()
        self._raw.close()

    def fire(
        self,
        key: str,
        trigger: Trigger,
        clock: Callable[[], datetime],
        config: CircuitBreakerConfig,
        *,
        reason: str | None,
        actor: str,
        must_exist: bool = False,
        hold: Hold = None,
        generation: int | None = None,
    ) -> tuple[Decision, int | None]:
        """Read, decide and write `key` atomically, with its audit row in the same transaction;
        return the decision and the row's version after it (see `fire_steps`).

        A transient fault (a busy SQLite file, a PostgreSQL deadlock, a connection lost
        before commit) reruns the whole transaction.
        """

        def transaction() -> tuple[Decision, int | None]:
            self.view.changing(key)  # (again on a retry: a rolled back write may have been seen)
            with write_transaction(self.engine) as connection:
                steps = self.fire_steps(
                    key, trigger, clock, config, reason, actor, must_exist, hold, generation
                )
                try:
                    statement = next(steps)
                    while True:
                        statement = steps.send(connection.execute(*statement))
                except StopIteration as done:
                    result: tuple[Decision, int | None] = done.value
                    return result

        try:
            decision, version = with_retries(
                self.engine, "update a circuit", self.timeout_s, transaction
            )
        except BaseException:
            self.view.changing(key)  # a commit that failed to answer may have landed
            raise
        self.view.wrote(key, decision.after if decision.needs_write else decision.before, version)
        return decision, version

    def circuits(self) -> list[StoredCircuit]:
        """Every stored key of the namespace, ordered by key."""

        def read() -> Any:
            with self._reader.connect() as connection:
                return connection.execute(self.circuits_query).all()

        return stored_circuits(with_retries(self.engine, "list circuits", self.timeout_s, read))

    def history(self, key: str | None, limit: int | None) -> list[Transition]:
        """The last `limit` transitions of `key` (or of every key), oldest first."""
        query = self.history_query(key, limit)

        def read() -> Any:
            with self._reader.connect() as connection:
                return connection.execute(query).all()

        rows = with_retries(self.engine, "read history", self.timeout_s, read)
        return [transition_of(row) for row in reversed(rows)]

    def transitions_after(
        self, after: int | None, limit: int, also: Collection[int] = ()
    ) -> tuple[list[Transition], list[int]]:
        """Up to `limit` audit rows of any namespace with an id above `after` (the last
        `limit` when None), plus those whose id is in `also`: this namespace's as
        transitions, in id order, and the ids of all of them."""
        if after is None:
            query = select(transitions).order_by(transitions.c.id.desc()).limit(limit)
        else:
            newer = transitions.c.id > after
            query = (
                select(transitions)
                .where(or_(newer, transitions.c.id.in_(list(also))) if also else newer)
                .order_by(transitions.c.id)
                .limit(limit + len(also))
            )

        def read() -> Any:
            with self._reader.connect() as connection:
                return connection.execute(query).all()

        rows = sorted(
            with_retries(self.engine, "read the audit trail", self.timeout_s, read),
            key=lambda row: row.id,
        )
        ours = [transition_of(row) for row in rows if row.namespace == self.namespace]
        return ours, [row.id for row in rows]

    def prune(self, before: datetime, batch_size: int) -> int:
        """Delete the namespace's transitions older than `before`, except each key's latest.

        Deletes `batch_size` rows per transaction, so a writer never waits behind more
        than one batch; returns how many rows were deleted.
        """
        newer = transitions.alias("newer")
        doomed = (
            select(transitions.c.id)
            .where(
                transitions.c.namespace == self.namespace,
                transitions.c.at < before,
                exists().where(
                    newer.c.namespace == transitions.c.namespace,
                    newer.c.key == transitions.c.key,
                    newer.c.id > transitions.c.id,
                ),
            )
            .order_by(transitions.c.id)
            .limit(batch_size)
        )
        statement = delete(transitions).where(transitions.c.id.in_(doomed.scalar_subquery()))

        def batch() -> int:
            with write_transaction(self.engine) as connection:
                return connection.execute(statement).rowcount

        deleted = 0
        while True:
            count = with_retries(self.engine, "prune the audit trail", self.timeout_s, batch)
            deleted += count
            if count < batch_size:
                return deleted
