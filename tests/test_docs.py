"""Every fenced block in README.md and docs/*.md is run or checked, by its language; a block
in any other language fails, so no example can slip through untested.

The conventions, page by page (README.md is a page too):

- ``python``: the python blocks of one page run in order, as one script: they share one
  globals dict, with a fresh temporary folder as the current directory for the whole page (so
  ``sqlite:///breakers.db`` is the page's own file, and a later block may use an earlier
  block's ``breaker``). Breakers left open are closed after the page.
- ``text``: what the python block just before it (the previous fenced block of the page) printed.
  A ``text`` block after anything else fails.
- ``console``: each ``$ durable-breaker ARGS`` line runs through ``durable_breaker._cli.run``
  in the page's folder, where ``prepare()`` made the default database ``durable_breaker.db``
  (namespace ``default``; ``$DURABLE_BREAKER_ACTOR`` is ``ops@bastion``), with the breakers'
  clock stopped at ``NOW`` (2026-11-30 03:15:00 UTC), so that times in the output are the
  documented ones (``demo`` keeps its own simulated clock). Every command must
  exit 0. The lines after a command, up to the next ``$`` line, are its expected output (none:
  only the exit status is checked). Commands of one page run in order on one database.
- Expected output (``text`` blocks and console output) is compared line by line, trailing
  spaces ignored; ``...`` within a line stands for any text, and a line that is only ``...``
  for any number of lines (none too).
- ``sql``: run on the page's prepared SQLite database, and by
  ``test_the_sql_blocks_run_on_postgresql`` on a PostgreSQL schema prepared the same way (when
  DURABLE_BREAKER_TEST_POSTGRES_URL is set; the schema is dropped afterwards). A ``:name``
  placeholder gets a value from ``parameters()`` (an unknown one fails). A query must return
  at least one row. A block whose first line starts with
  ``-- PostgreSQL only`` runs on PostgreSQL only; there ``app`` and ``breaker_app`` stand for
  the test's schema and a role made for the test (dropped afterwards).
- ``mermaid``: equals ``durable_breaker._machine.mermaid()``.
- ``sh``: every command (lines split at ``&&``, ``#`` comments dropped) must be one of:
  ``python3 -m venv .venv``; ``[.venv/bin/]pip install SPEC`` where SPEC is this project
  (``.``, ``/path/to/durable-breaker``, ``git+file:///path/to/durable-breaker`` or, after a
  release, ``durable-breaker[==VERSION]``) with extras that pyproject.toml defines;
  ``[.venv/bin/]durable-breaker ARGS`` whose ARGS the CLI's parser accepts;
  ``.venv/bin/python -m pytest``. The README's quick-start demo line is run for real in a fresh
  virtual environment, and the path and ``git+file`` installs there too; the test-suite line is
  checked to be what ``.ci/run`` runs (running it here would run this suite inside itself).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import shutil
import subprocess
import tomllib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from durable_breaker import CircuitBreaker, CircuitBreakerConfig
from durable_breaker._cli import _parser, run
from durable_breaker._machine import mermaid

from .conftest import FakeClock
from .test_privileges import GRANTS

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.rglob("*.md"))]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
CHECKOUT = "/path/to/durable-breaker"  # where the install page's path installs say the clone is
QUICK_DEMO = "python3 -m venv .venv && .venv/bin/pip install . && .venv/bin/durable-breaker demo"
QUICK_TESTS = (
    "python3 -m venv .venv && .venv/bin/pip install '.[test]' && .venv/bin/python -m pytest"
)
PG_ONLY = "-- PostgreSQL only"
NOW = datetime(2026, 11, 30, 3, 15, tzinfo=UTC)  # the prepared database's present
PLACEHOLDER = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # of the opening fence, from 1
    lang: str
    body: str

    @property
    def where(self) -> str:
        return f"{_name(self.page)}:{self.line}"


def _name(page: Path) -> str:
    return str(page.relative_to(ROOT)) if page.is_relative_to(ROOT) else str(page)


def fenced_blocks(page: Path) -> list[Block]:
    """The page's fenced blocks, in order; an unclosed or indented fence fails."""
    lines = page.read_text(encoding="utf-8").splitlines(keepends=True)
    found: list[Block] = []
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        where = f"{_name(page)}:{i + 1}"
        if opening["indent"]:
            pytest.fail(f"{where}: an indented fence; start fenced blocks at the margin")
        fence = opening["fence"]
        info = opening["info"].strip()
        end = i + 1
        while end < len(lines) and not (
            lines[end].startswith(fence[0] * len(fence)) and not lines[end].strip(fence[0]).strip()
        ):
            end += 1
        if end == len(lines):
            pytest.fail(f"{where}: the fenced block is never closed")
        lang = info.split()[0] if info else ""
        found.append(Block(page, i + 1, lang, "".join(lines[i + 1 : end])))
        i = end + 1
    return found


def expected_output(expected: str) -> re.Pattern[str]:
    """`expected` as a pattern: `...` in a line is any text, a line of `...` any lines."""
    parts = []
    for line in expected.rstrip("\n").splitlines():
        line = line.rstrip()
        if line == "...":
            parts.append(r"(?:[^\n]*\n)*?")
        else:
            parts.append("[^\n]*?".join(re.escape(piece) for piece in line.split("...")) + "\n")
    return re.compile("".join(parts))


def assert_output(expected: str, printed: str, where: str) -> None:
    actual = "".join(line.rstrip() + "\n" for line in printed.rstrip("\n").splitlines())
    if expected_output(expected).fullmatch(actual) is None:
        pytest.fail(
            f"{where}: the output is not as documented\n--- documented\n{expected}"
            f"--- printed\n{actual}"
        )


# -- the prepared database for console and sql blocks ---------------------------------------


def prepare(url: str) -> None:
    """At 03:05 claude-sonnet failed once and at 03:10 worker-3 tripped gpt-4o (5 failures,
    cooldown 10 minutes); at 03:14 ops@bastion forced gemini-pro open for an hour."""
    clock = FakeClock((NOW - timedelta(minutes=10)).timestamp())
    config = CircuitBreakerConfig(failure_threshold=5, cooldown=timedelta(minutes=10))
    with CircuitBreaker(url, config, clock=clock, actor="worker-3") as app:
        app.record_failure("claude-sonnet", reason="HTTP 503")
        clock.advance(300)
        for _ in range(5):
            app.record_failure("gpt-4o")
    clock.advance(240)
    with CircuitBreaker(url, config, clock=clock, actor="ops@bastion") as ops:
        ops.force_open("gemini-pro", timedelta(hours=1), reason="provider incident")


@contextlib.contextmanager
def stopped_clock() -> Iterator[None]:
    """Breakers made without a clock (the CLI's) read NOW."""
    defaults = getattr(CircuitBreaker.__init__, "__kwdefaults__")  # noqa: B009
    assert isinstance(defaults, dict)
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(defaults, "clock", NOW.timestamp)
        yield


def parameters(dialect: str) -> dict[str, object]:
    since = NOW - timedelta(days=1)
    return {
        "namespace": "default",
        "key": "gpt-4o",
        # SQLite stores times as text, compared as text; PostgreSQL has a timestamptz.
        "since": f"{since:%Y-%m-%d %H:%M:%S}" if dialect == "sqlite" else since,
    }


def run_sql(block: Block, engine: sa.Engine, schema: str | None = None) -> None:
    """Run a sql block on `engine` (`schema`: PostgreSQL's, for the PostgreSQL-only blocks)."""
    dialect = engine.dialect.name
    statement = block.body
    if statement.startswith(PG_ONLY):
        if dialect != "postgresql":
            return
        assert schema is not None
        run_grants(block, engine, schema)
        return
    names = set(PLACEHOLDER.findall(statement))
    values = parameters(dialect)
    unknown = names - values.keys()
    assert not unknown, f"{block.where}: no test value for the placeholders {sorted(unknown)}"
    with engine.begin() as connection:
        result = connection.execute(sa.text(statement), {n: values[n] for n in names})
        rows = result.all() if result.returns_rows else None
    assert rows is None or rows, f"{block.where}: the query found nothing in the prepared data"


def _statements(sql: str) -> list[str]:
    """`sql`'s statements, comments dropped and whitespace collapsed."""
    bare = re.sub(r"--[^\n]*", "", sql)
    return [" ".join(part.split()) for part in bare.split(";") if part.strip()]


def run_grants(block: Block, engine: sa.Engine, schema: str) -> None:
    """The least-privilege grants: test_privileges' (which shows they suffice), run for real."""
    assert _statements(block.body) == _statements(
        GRANTS.format(schema="app", role="breaker_app")
    ), f"{block.where}: the grants differ from tests/test_privileges.py's"
    role = f"db_test_docs_{uuid.uuid4().hex[:12]}"
    sql = re.sub(r"\bbreaker_app\b", role, block.body)
    sql = re.sub(r"\bSCHEMA app\b", f"SCHEMA {schema}", sql)
    with engine.begin() as connection:
        connection.exec_driver_sql(f"CREATE ROLE {role}")
    try:
        with engine.begin() as connection:
            for statement in _statements(sql):
                connection.exec_driver_sql(statement)
            granted = connection.exec_driver_sql(
                "SELECT has_table_privilege(%(role)s, 'durable_breaker_transition', 'DELETE')",
                {"role": role},
            ).scalar_one()
        assert granted is True
    finally:
        with engine.begin() as connection:
            connection.exec_driver_sql(f"DROP OWNED BY {role}")
            connection.exec_driver_sql(f"DROP ROLE {role}")


# -- sh lines ---------------------------------------------------------------------------------

SPEC = re.compile(r"(?P<target>[^\[=]+)(?:\[(?P<extras>[^\]]*)\])?(?:==(?P<version>.+))?")


def _commands(line: str) -> list[list[str]]:
    words = shlex.split(line, comments=True)
    commands: list[list[str]] = [[]]
    for word in words:
        if word == "&&":
            commands.append([])
        else:
            commands[-1].append(word)
    return [command for command in commands if command]


def check_spec(spec: str, where: str) -> None:
    """A pip install target that is this project, with extras it defines."""
    parsed = SPEC.fullmatch(spec)
    assert parsed is not None, f"{where}: cannot read the install target {spec!r}"
    target, extras, version = parsed["target"], parsed["extras"], parsed["version"]
    local = (".", CHECKOUT, f"git+file://{CHECKOUT}")
    assert target in (*local, PYPROJECT["name"]), f"{where}: {spec!r} is not this project"
    defined = PYPROJECT["optional-dependencies"].keys()
    for extra in (extras or "").split(","):
        assert not extras or extra in defined, f"{where}: pyproject.toml has no extra {extra!r}"
    if version is not None:
        assert target == PYPROJECT["name"], f"{where}: a version only for the released package"
        assert version == PYPROJECT["version"], f"{where}: not this version: {version}"


def check_sh(block: Block) -> None:
    for line in block.body.splitlines():
        for command in _commands(line):
            name = command[0].removeprefix(".venv/bin/")
            if command == ["python3", "-m", "venv", ".venv"]:
                continue
            if name == "pip" and command[1:2] == ["install"] and len(command) > 2:
                for spec in command[2:]:
                    check_spec(spec, block.where)
            elif name == "durable-breaker":
                try:
                    with contextlib.redirect_stdout(io.StringIO()):
                        _parser().parse_args(command[1:])
                except SystemExit as exited:  # --version and --help exit 0
                    if exited.code != 0:
                        pytest.fail(f"{block.where}: the CLI refuses {shlex.join(command)!r}")
            elif command != [".venv/bin/python", "-m", "pytest"]:
                pytest.fail(f"{block.where}: no test knows the command {shlex.join(command)!r}")


# -- one page, every block ----------------------------------------------------------------


@dataclass
class Page:
    """What the blocks of one page share while it runs."""

    folder: Path
    globals: dict[str, object] = field(default_factory=lambda: {"__name__": "__docs__"})
    printed: str | None = None  # by the python block just before

    def python(self, block: Block) -> None:
        code = compile(block.body, block.where, "exec")
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(code, self.globals)
        self.printed = out.getvalue()

    def text(self, block: Block) -> None:
        assert self.printed is not None, (
            f"{block.where}: a text block must follow the python block whose output it is"
        )
        assert_output(block.body, self.printed, block.where)

    def console(self, block: Block) -> None:
        runs: list[tuple[str, list[str]]] = []
        for line in block.body.splitlines():
            if line.startswith("$ "):
                runs.append((line[2:], []))
            else:
                assert runs, f"{block.where}: a console block starts with a `$ ` command"
                runs[-1][1].append(line)
        for command, expected in runs:
            argv = shlex.split(command)
            assert argv[0] == "durable-breaker", f"{block.where}: not the CLI: {command!r}"
            out, err = io.StringIO(), io.StringIO()
            with stopped_clock():
                code = run(argv[1:], out=out, err=err)
            assert code == 0, f"{block.where}: `{command}` exited {code}: {err.getvalue()}"
            while expected and not expected[-1].strip():
                expected.pop()
            if expected:
                assert_output(
                    "\n".join(expected) + "\n", out.getvalue(), f"{block.where} {command}"
                )

    def close(self) -> None:
        for value in self.globals.values():
            if isinstance(value, CircuitBreaker):
                value.close()


def run_block(state: Page, block: Block, engine: sa.Engine | None) -> None:
    """Run or check `block` by its language (see the module's docstring)."""
    printed, state.printed = state.printed, None
    if block.lang == "python":
        state.python(block)
    elif block.lang == "text":
        state.printed = printed
        state.text(block)
        state.printed = None
    elif block.lang == "console":
        state.console(block)
    elif block.lang == "sql":
        assert engine is not None
        run_sql(block, engine)
    elif block.lang == "mermaid":
        assert block.body == mermaid(), f"{block.where}: not the declared machine"
    elif block.lang == "sh":
        check_sh(block)
    else:
        pytest.fail(f"{block.where}: no test runs a block of language {block.lang!r}")


@pytest.fixture
def in_a_fresh_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    for variable in ("DURABLE_BREAKER_URL", "DURABLE_BREAKER_NAMESPACE"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("DURABLE_BREAKER_ACTOR", "ops@bastion")
    return tmp_path


def _id(page: Path) -> str:
    return str(page.relative_to(ROOT))


@pytest.mark.parametrize("page", PAGES, ids=_id)
def test_every_block_of_the_page_runs_as_documented(page: Path, in_a_fresh_folder: Path) -> None:
    blocks = fenced_blocks(page)
    state = Page(in_a_fresh_folder)
    engine: sa.Engine | None = None
    if any(block.lang in ("console", "sql") for block in blocks):
        url = f"sqlite:///{in_a_fresh_folder / 'durable_breaker.db'}"
        prepare(url)
        engine = sa.create_engine(url)
    try:
        for block in blocks:
            run_block(state, block, engine)
    finally:
        state.close()
        if engine is not None:
            engine.dispose()


SQL_PAGES = [page for page in PAGES if any(b.lang == "sql" for b in fenced_blocks(page))]


@pytest.mark.postgres
@pytest.mark.parametrize("page", SQL_PAGES, ids=_id)
def test_the_sql_blocks_run_on_postgresql(page: Path, pg_url: str) -> None:
    prepare(pg_url)
    schema = str(sa.make_url(pg_url).query["options"]).split("=", 1)[1]
    engine = sa.create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        for block in fenced_blocks(page):
            if block.lang == "sql":
                run_sql(block, engine, schema)
    finally:
        engine.dispose()


def test_pages_are_found_and_hold_examples() -> None:
    assert README in PAGES and len(PAGES) > 5
    languages = {block.lang for page in PAGES for block in fenced_blocks(page)}
    assert {"python", "text", "console", "sql", "mermaid", "sh"} <= languages


@pytest.mark.parametrize(
    "source",
    [
        "```ruby\nputs 1\n```\n",
        "```\nno language\n```\n",
        "```text\nan output of nothing\n```\n",
        "```console\ndurable-breaker status\n```\n",
        "```sh\nrm -rf build\n```\n",
        "```sh\npip install requests\n```\n",
        "```sh\npip install '.[nosuchextra]'\n```\n",
        "```console\n$ durable-breaker reset gpt-4o\n```\n",  # exits 1: no --yes
        "```python\nprint('a')\n```\n\n```text\nb\n```\n",
        "```mermaid\nstateDiagram-v2\n```\n",
    ],
)
def test_a_block_no_test_handles_or_that_is_wrong_fails(
    source: str, in_a_fresh_folder: Path
) -> None:
    page = in_a_fresh_folder / "page.md"
    page.write_text("Some prose.\n\n" + source, encoding="utf-8")
    state = Page(in_a_fresh_folder)
    with pytest.raises((pytest.fail.Exception, AssertionError)):
        for block in fenced_blocks(page):
            run_block(state, block, None)


def test_an_unclosed_fence_fails(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("```python\nprint(1)\n", encoding="utf-8")
    with pytest.raises(pytest.fail.Exception, match="never closed"):
        fenced_blocks(page)


# -- the output patterns ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expected", "printed", "matches"),
    [
        ("a\nb\n", "a\nb\n", True),
        ("a\nb\n", "a\nc\n", False),
        ("a\n", "a\nb\n", False),  # a line too many
        ("since ... ago\n", "since 3m ago\n", True),
        ("since ... ago\n", "since 3m\n", False),
        ("a\n...\nz\n", "a\nb\nc\nz\n", True),
        ("a\n...\nz\n", "a\nz\n", True),
        ("a\n...\nz\n", "a\nb\n", False),
        ("a.b\n", "axb\n", False),  # the rest is literal
    ],
)
def test_expected_output_patterns(expected: str, printed: str, matches: bool) -> None:
    actual = "".join(line.rstrip() + "\n" for line in printed.splitlines())
    assert (expected_output(expected).fullmatch(actual) is not None) is matches


# -- sh: the quick start, CI, installs ----------------------------------------------------------


def _sh_lines(page: Path) -> list[str]:
    return [
        line
        for block in fenced_blocks(page)
        if block.lang == "sh"
        for line in block.body.splitlines()
        if line.strip()
    ]


def test_the_readme_quick_start_is_the_two_documented_commands() -> None:
    assert _sh_lines(README) == [QUICK_DEMO, QUICK_TESTS]
    text = README.read_text(encoding="utf-8")
    assert "the PostgreSQL half runs when `DURABLE_BREAKER_TEST_POSTGRES_URL` is set" in text


def test_the_readme_test_command_is_what_ci_runs() -> None:
    """.ci/run makes a fresh venv, installs the test extra from the checkout and runs pytest
    with the venv's Python, as the README's second command does."""
    script = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert re.search(r"^python3 -m venv ", script, re.MULTILINE)
    installs = re.findall(r"-m pip install (?:--quiet )?'\.\[([^\]]*)\]'", script)
    assert any("test" in extras.split(",") for extras in installs), installs
    lines = [line for line in script.splitlines() if line.strip() and not line.startswith("#")]
    last = shlex.split(lines[-1])
    assert last[0].endswith("/venv/bin/python") and last[1:] == ["-m", "pytest"], last


SPEC_EXTRAS = re.compile(r"\.\[([^\]]*)\]")


def _copy_of_the_checkout(into: Path) -> Path:
    copy = into / "durable-breaker"
    shutil.copytree(
        ROOT,
        copy,
        ignore=shutil.ignore_patterns(
            ".venv", ".git", "site", "__pycache__", "*.db", "*.db-*", ".*_cache", "*.egg-info"
        ),
    )
    return copy


def test_the_quick_start_demo_and_the_checkout_installs_run(tmp_path: Path) -> None:
    """The README's demo line, for real: a fresh venv, `pip install .` (from the registry for
    its dependencies), the demo. Then the install page's path and git+file lines in it."""
    checkout = _copy_of_the_checkout(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DURABLE_BREAKER_")}
    env.pop("VIRTUAL_ENV", None)
    done = subprocess.run(
        ["bash", "-c", QUICK_DEMO],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "gpt-4o ends open; its audit trail:" in done.stdout, done.stdout
    assert (checkout / "durable_breaker.db").is_file()
    lines = [line for page in PAGES for line in _sh_lines(page) if CHECKOUT in line]
    assert lines, "the install page shows no install from a path or git+file"
    for line in lines:
        for command in _commands(line):
            if command[0].removeprefix(".venv/bin/") != "pip":
                continue
            specs = [spec.replace(CHECKOUT, str(ROOT)) for spec in command[2:]]
            installed = subprocess.run(
                [
                    str(checkout / ".venv/bin/pip"),
                    "install",
                    "--no-deps",
                    "--force-reinstall",
                    *specs,
                ],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
            )
            assert installed.returncode == 0, f"{line}: {installed.stderr[-3000:]}"
    version = subprocess.run(
        [str(checkout / ".venv/bin/durable-breaker"), "--version"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert version.stdout.strip() == f"durable-breaker {PYPROJECT['version']}"


def test_every_docs_page_is_in_the_site_nav() -> None:
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    nav = set(re.findall(r":\s*(\S+\.md)\s*$", config, re.MULTILINE))
    pages = {str(page.relative_to(DOCS)) for page in DOCS.rglob("*.md")}
    assert nav == pages
