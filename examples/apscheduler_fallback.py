"""An APScheduler job that asks the first healthy model, through the real openai SDK.

Every 0.3 s the job summarises the next document with `breaker.fallback(MODELS, ask)`:
gpt-4o first, gpt-4o-mini when gpt-4o's circuit is open or its call fails. When gpt-4o
recovers, a probe finds it and the job is back on it. Every process running this job shares
the circuits through the database, and every transition lands in its audit trail.

With no --base-url, the example starts a stand-in OpenAI-compatible server on 127.0.0.1 where
gpt-4o is overloaded (503, Retry-After: 2) for its first three requests.

    pip install durable-breaker 'apscheduler>=3.10,<4' openai
    python examples/apscheduler_fallback.py [--url sqlite:///example.db] [--base-url URL]
"""

from __future__ import annotations

import argparse
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import openai
from apscheduler.schedulers.blocking import BlockingScheduler  # type: ignore[import-untyped]

from durable_breaker import CircuitBreaker, CircuitBreakerConfig, CircuitOpenError

MODELS = ["gpt-4o", "gpt-4o-mini"]  # in order of preference
DOCUMENTS = [f"report {n}" for n in range(1, 21)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="sqlite:///example.db")
    parser.add_argument("--base-url", help="an OpenAI-compatible API (default: a stand-in)")
    args = parser.parse_args()

    config = CircuitBreakerConfig(failure_threshold=2, cooldown=timedelta(seconds=1))
    breaker = CircuitBreaker(args.url, config, namespace="example-fallback")
    breaker.on_transition(
        lambda t: print(f"  {t.key}: {t.from_state} -> {t.to_state} ({t.reason or t.trigger})")
    )
    with stand_in_server() if args.base_url is None else nullcontext(args.base_url) as base_url:
        # No SDK retries: the breaker decides when a model is tried again.
        client = openai.OpenAI(base_url=base_url, api_key="sk-example", max_retries=0)
        run(breaker, client)
    breaker.close()


def run(breaker: CircuitBreaker, client: openai.OpenAI) -> None:
    scheduler = BlockingScheduler()
    documents = iter(DOCUMENTS)
    current = next(documents)

    def ask(model: str) -> str:
        reply = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": f"Summarise {current}"}]
        )
        return f"{current}: answered by {reply.model}"

    def summarize() -> None:
        nonlocal current
        try:
            print(breaker.fallback(MODELS, ask))
        except CircuitOpenError as every_circuit_open:
            wait = every_circuit_open.retry_after or 1.0  # None: only a reset reopens the way
            print(f"{current}: every model is open, next try in {wait:.1f}s")
            job.modify(next_run_time=datetime.now(UTC) + timedelta(seconds=wait))
            return
        except openai.APIError as error:  # every model tried failed, or the request is bad
            print(f"{current}: failed ({error})")
        current = next(documents, "")
        if not current:
            scheduler.shutdown(wait=False)

    job = scheduler.add_job(summarize, "interval", seconds=0.3, next_run_time=datetime.now(UTC))
    scheduler.start()


@contextmanager
def nullcontext(value: str) -> Iterator[str]:
    yield value


@contextmanager
def stand_in_server() -> Iterator[str]:
    """An OpenAI-compatible server on 127.0.0.1: gpt-4o answers 503 three times, then works."""
    failures_left = {"gpt-4o": 3}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            request = json.loads(self.rfile.read(int(self.headers["content-length"])))
            model = request["model"]
            if failures_left.get(model, 0) > 0:
                failures_left[model] -= 1
                self.reply(503, {"error": {"message": "overloaded", "type": "server_error"}})
            else:
                message = {"role": "assistant", "content": "a summary"}
                choice = {"index": 0, "message": message, "finish_reason": "stop"}
                self.reply(200, {"id": "1", "object": "chat.completion", "created": 0,
                                 "model": model, "choices": [choice]})  # fmt: skip

        def reply(self, status: int, payload: dict[str, Any]) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            if status == 503:
                self.send_header("retry-after", "2")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


if __name__ == "__main__":
    main()
