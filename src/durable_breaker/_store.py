"""The SQL store: each method is one whole domain operation in one transaction."""

from __future__ import annotations

from collections.abc import Callable, Collection, Generator
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Engine,
    and_,
    bindparam,
    delete,
    exc,
    exists,
    func,
    insert,
    not_,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql

from ._config import CircuitBreakerConfig
from ._engine import owns, write_transaction
from ._errors import StoreUnavailableError, UnknownKeyError
from ._faults import Fault, classify, translate_errors, with_retries
from ._machine import MANUAL, Decision, Hold, Trigger, audited, decide
from ._raw import AUDIT_COLUMNS, Change, PostgresRaw, SqliteRaw, ThroughSqlAlchemy
from ._state import NEW_CIRCUIT, Cause, Circuit, CircuitState, Policy, StoredCircuit, Transition
from ._tables import circuits, transitions
from ._urls import safe_url
from ._view import DataVersion, Held, LocalView, NoProof, Notifications, Rule

Statement = tuple[Any, dict[str, Any]]  # an executable and its parameters
_SNAPSHOT_TRIES = 20  # a key written this often meanwhile is explained as last read
_CIRCUIT_COLUMNS = (
    circuits.c.state,
    circuits.c.consecutive_failures,
    circuits.c.half_open_probes,
    circuits.c.last_failure_at,
    circuits.c.half_open_since,
    circuits.c.open_until,
    circuits.c.generation,
)
_POLICY_COLUMNS = (
    circuits.c.failure_threshold,
    circuits.c.cooldown_s,
    circuits.c.half_open_max,
    circuits.c.probe_timeout_s,
    circuits.c.policy_by,
)


def late_result(table: Any) -> Any:
    """An audit row of a fenced late outcome: a success or failure that left the state as it
    was (every other success or failure row changes the state)."""
    return and_(
        table.c.trigger.in_([Trigger.SUCCESS.value, Trigger.FAILURE.value]),
        table.c.from_state == table.c.to_state,
    )


def policy_values(config: CircuitBreakerConfig, actor: str) -> tuple[Any, ...]:
    """What a write stores of `config`, in _POLICY_COLUMNS' order."""
    timeout = config.probe_timeout
    return (
        config.failure_threshold,
        config.cooldown.total_seconds(),
        config.half_open_max,
        None if timeout is None else timeout.total_seconds(),
        actor,
    )


def policy_of(row: Any) -> Policy | None:
    """The stored policy of a circuit row (None: written before schema revision 0004)."""
    if row.policy_by is None:
        return None
    return Policy(
        failure_threshold=row.failure_threshold,
        cooldown=timedelta(seconds=row.cooldown_s),
        half_open_max=row.half_open_max,
        probe_timeout=(
            None if row.probe_timeout_s is None else timedelta(seconds=row.probe_timeout_s)
        ),
        set_by=row.policy_by,
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
        generation=row.generation,
        error_type=row.error_type,
        status_code=row.status_code,
        retry_after=row.retry_after_s,
        open_until=row.open_until,
        id=row.id,
    )


def stored_circuits(rows: Any) -> list[StoredCircuit]:
    """The rows of `Statements.circuits_query` as stored circuits."""
    return [
        StoredCircuit(
            row.key,
            circuit_of(row),
            policy_of(row),
            row.at,
            row.last_reason,
            row.last_actor,
            row.version,
        )
        for row in rows
    ]


class Statements:
    """The SQL of one namespace's operations, and the decisions between them; no I/O, so
    that the sync store and the asyncio one run the very same statements."""

    def __init__(self, dialect: str, namespace: str) -> None:
        self.namespace = namespace
        self._where_ns = circuits.c.namespace == namespace
        self._policy_names = [column.name for column in _POLICY_COLUMNS]
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

    def circuits_query(
        self, keys: Collection[str] | None = None, states: Collection[CircuitState] | None = None
    ) -> Any:
        """The namespace's stored circuits (only `keys`, only in `states`, when given) with
        their policy and latest transition, ordered by key."""
        # The latest transition of each key that put it in a state (not a late permit
        # result, audited but changing nothing), through the (namespace, key, id) index.
        latest_id = (
            select(transitions.c.id)
            .where(
                transitions.c.namespace == circuits.c.namespace,
                transitions.c.key == circuits.c.key,
                not_(late_result(transitions)),
            )
            .order_by(transitions.c.id.desc())
            .limit(1)
            .correlate(circuits)
            .scalar_subquery()
        )
        last = transitions.alias("last")
        query = (
            select(
                circuits.c.key,
                *_CIRCUIT_COLUMNS,
                *_POLICY_COLUMNS,
                circuits.c.version,
                last.c.at,
                last.c.reason.label("last_reason"),
                last.c.actor.label("last_actor"),
            )
            .select_from(circuits.outerjoin(last, last.c.id == latest_id))
            .where(self._where_ns)
            .order_by(circuits.c.key)
        )
        if keys is not None:
            query = query.where(circuits.c.key.in_(list(keys)))
        if states is not None:
            query = query.where(circuits.c.state.in_([state.value for state in states]))
        return query

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
        cause: Cause,
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
            if trigger not in MANUAL:
                values.update(zip(self._policy_names, policy_values(config, actor), strict=True))
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
        audit = self._audit(key, trigger, decision, cause, actor, config)
        if audit is not None:
            yield insert(transitions), audit
        return decision, version

    def _audit(
        self,
        key: str,
        trigger: Trigger,
        decision: Decision,
        cause: Cause,
        actor: str,
        config: CircuitBreakerConfig,
    ) -> dict[str, object] | None:
        """The audit row of `decision` (see `audited`), or None when it is not audited."""
        if not decision.audited:
            return None
        t = audited(key, trigger, decision, cause, actor, config)
        return {
            "namespace": self.namespace,
            "key": t.key,
            "from_state": t.from_state.value,
            "to_state": t.to_state.value,
            "trigger": t.trigger,
            "at": t.at,
            "consecutive_failures": t.consecutive_failures,
            "reason": t.reason,
            "actor": t.actor,
            "generation": t.generation,
            "error_type": t.error_type,
            "status_code": t.status_code,
            "retry_after_s": t.retry_after,
            "open_until": t.open_until,
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
        cause: Cause,
        actor: str,
    ) -> int | None:
        """Store `decision`, and its audit row, only if `key`'s row is still at `version`
        (None: still absent); return the row's new version, or None if another writer got
        there first (then `fire` decides again under a lock).

        Optimistic: no lock is held while deciding, and on PostgreSQL the change and its
        audit row are one statement (its timeouts go ahead of it in the same pipeline): an
        uncontended write costs one round trip.
        """
        after, audit = decision.after, self._audit(key, trigger, decision, cause, actor, config)
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
                *policy_values(config, actor),
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
        cause: Cause,
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
                    key, trigger, clock, config, cause, actor, must_exist, hold, generation
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

    def circuits(
        self, keys: Collection[str] | None = None, states: Collection[CircuitState] | None = None
    ) -> list[StoredCircuit]:
        """The namespace's stored keys (see `circuits_query`), ordered by key."""
        query = self.circuits_query(keys, states)

        def read() -> Any:
            with self._reader.connect() as connection:
                return connection.execute(query).all()

        return stored_circuits(with_retries(self.engine, "list circuits", self.timeout_s, read))

    def snapshot(self, key: str, limit: int) -> tuple[StoredCircuit | None, list[Transition]]:
        """`key`'s stored circuit and its last `limit` transitions as of one instant: read
        again until the row's version is the same after the history as before it (every
        audit row is written with a version bump, so none came in between)."""
        for _ in range(_SNAPSHOT_TRIES):
            [*stored] = self.circuits([key])
            history = self.history(key, limit)
            [*again] = self.circuits([key])
            if [s.version for s in stored] == [s.version for s in again]:
                break
        return (stored[0] if stored else None), history

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

    def _prunable(self, before: datetime) -> Any:
        """Which of the namespace's transitions `prune` deletes: older than `before`, and
        not their key's latest."""
        newer = transitions.alias("newer")
        return and_(
            transitions.c.namespace == self.namespace,
            transitions.c.at < before,
            exists().where(
                newer.c.namespace == transitions.c.namespace,
                newer.c.key == transitions.c.key,
                newer.c.id > transitions.c.id,
            ),
        )

    def prunable(self, before: datetime) -> list[tuple[str, int, datetime]]:
        """What `prune(before)` would delete: per key, how many rows and the oldest's time."""
        query = (
            select(transitions.c.key, func.count(), func.min(transitions.c.at))
            .where(self._prunable(before))
            .group_by(transitions.c.key)
            .order_by(transitions.c.key)
        )

        def read() -> Any:
            with self._reader.connect() as connection:
                return connection.execute(query).all()

        rows = with_retries(self.engine, "read the audit trail", self.timeout_s, read)
        return [(key, count, oldest) for key, count, oldest in rows]

    def prune(self, before: datetime, batch_size: int) -> int:
        """Delete the namespace's transitions older than `before`, except each key's latest.

        Deletes `batch_size` rows per transaction, so a writer never waits behind more
        than one batch; returns how many rows were deleted.
        """
        doomed = (
            select(transitions.c.id)
            .where(self._prunable(before))
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
