"""Database URLs: parsing with clear refusals, and masking passwords for messages."""

from __future__ import annotations

import re

from sqlalchemy import Engine, exc
from sqlalchemy.engine import URL, make_url

from ._errors import InvalidArgumentError

_EXAMPLES = "expected e.g. sqlite:///breakers.db or postgresql://user@host/dbname"


def parse_url(url: str | URL) -> URL:
    """Parse and normalise a database URL, or say clearly what is wrong with it."""
    try:
        parsed = make_url(url)
    except (exc.ArgumentError, ValueError, TypeError) as error:
        raise InvalidArgumentError(f"not a database URL: {_scrub(url)!r}; {_EXAMPLES}") from error
    backend = parsed.get_backend_name()
    if backend in ("postgresql", "postgres"):
        if parsed.drivername in ("postgresql", "postgres", "postgresql+psycopg"):
            return parsed.set(drivername="postgresql+psycopg")
        raise InvalidArgumentError(
            f"durable-breaker talks to PostgreSQL through psycopg 3, not {parsed.drivername!r}: "
            "use a postgresql:// or postgresql+psycopg:// URL"
        )
    if backend == "sqlite":
        if parsed.drivername not in ("sqlite", "sqlite+pysqlite"):
            raise InvalidArgumentError(
                f"durable-breaker talks to SQLite through Python's sqlite3, not "
                f"{parsed.drivername!r}: use a sqlite:/// URL"
            )
        if parsed.database in (None, "", ":memory:") or parsed.query.get("mode") == "memory":
            raise InvalidArgumentError(
                "an in-memory SQLite database is not durable and not shared between connections; "
                "use a file, e.g. sqlite:///breakers.db"
            )
        return parsed
    raise InvalidArgumentError(
        f"durable-breaker supports SQLite and PostgreSQL, not {backend!r} ({safe_url(parsed)})"
    )


def _scrub(url: object) -> str:
    """An unparseable URL with anything that looks like a password removed."""
    text = str(url)
    text = re.sub(r"(://[^:/@]*):[^@]*@", r"\1:***@", text)
    return re.sub(r"(password=)[^&]*", r"\1***", text, flags=re.IGNORECASE)


def safe_url(url: str | URL | Engine) -> str:
    """The URL with any password (in the user part or the query) masked, for messages."""
    if isinstance(url, Engine):
        url = url.url
    try:
        parsed = make_url(url)
    except (exc.ArgumentError, ValueError, TypeError):
        return _scrub(url)
    hidden = {k: "***" for k in parsed.query if k.lower() == "password"}
    return parsed.update_query_dict(hidden).render_as_string(hide_password=True)
