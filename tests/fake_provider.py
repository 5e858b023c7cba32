"""A fake LLM provider on 127.0.0.1: answers every request with the status, headers and body
the test sets, the way the real providers send them, so that the real SDKs raise their real
errors."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    status: int = 200
    body: bytes = b"{}"
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"
    delay: float = 0.0  # seconds before answering (a slow provider, for client timeouts)


def json_body(payload: Any) -> bytes:
    """JSON as a provider writes it: non-ASCII escaped, so that a lone surrogate or a NUL in a
    message arrives as a \\uXXXX escape (the way a gateway's cut emoji reaches the SDKs)."""
    return json.dumps(payload, ensure_ascii=True).encode("ascii")


def openai_error(status: int, message: str, kind: str = "api_error") -> Reply:
    return Reply(status, json_body({"error": {"message": message, "type": kind, "code": None}}))


def anthropic_error(status: int, message: str, kind: str = "api_error") -> Reply:
    return Reply(status, json_body({"type": "error", "error": {"type": kind, "message": message}}))


class FakeProvider:
    """`reply` is what every request gets, unless `by_model` has a reply for the model its
    JSON body names; `requests` counts them, `models` lists the models asked for."""

    def __init__(self) -> None:
        self.reply = Reply()
        self.by_model: dict[str, Reply] = {}
        self.requests = 0
        self.models: list[str] = []
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                model = _model_of(self.rfile.read(length))
                provider.requests += 1
                provider.models.append(model)
                reply = provider.by_model.get(model, provider.reply)
                time.sleep(reply.delay)
                self.send_response(reply.status)
                self.send_header("content-type", reply.content_type)
                self.send_header("content-length", str(len(reply.body)))
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(reply.body)

            do_GET = do_POST

            def log_message(self, *args: Any) -> None:
                pass

        self._server = _QuietServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that timed out hangs up before its answer: expected, not news


def _model_of(body: bytes) -> str:
    try:
        payload = json.loads(body)
    except ValueError:
        return ""
    return str(payload.get("model", "")) if isinstance(payload, dict) else ""


@contextmanager
def fake_provider() -> Iterator[FakeProvider]:
    provider = FakeProvider()
    try:
        yield provider
    finally:
        provider.close()
