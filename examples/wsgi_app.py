"""A WSGI (Flask-style) handler that calls a model: one shared backend for every request thread.

The backend is created once at import time and shared; it is thread-safe and pools connections.
This script serves one request through wsgiref's test machinery and prints the response.
A real deployment would run ``app`` under gunicorn or mod_wsgi.

    python examples/wsgi_app.py
"""

from __future__ import annotations

import atexit
import contextlib
import io
import json
from typing import Any, Callable, Iterable
from wsgiref.util import setup_testing_defaults

from openrouter_sync import RetryPolicy
from openrouter_sync.testing import demo_backend

# A web request cannot wait minutes: at most 3 attempts and 25 s in all (waits included), and a
# request that was sent but not answered is not sent again (the provider may have billed it).
WEB_POLICY = RetryPolicy(max_attempts=3, max_wait_seconds=5, max_elapsed_seconds=25, retry_unanswered=False)

_stack = contextlib.ExitStack()
backend = _stack.enter_context(demo_backend(model="openai/gpt-4o-mini", max_tokens=200, timeout_seconds=20,
                                            retry_policy=WEB_POLICY))
atexit.register(_stack.close)


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    length = int(environ.get("CONTENT_LENGTH") or 0)
    try:
        question = json.loads(environ["wsgi.input"].read(length) or b"{}")["question"]
    except (ValueError, KeyError):
        start_response("400 Bad Request", [("Content-Type", "application/json")])
        return [b'{"error": "send {\\"question\\": \\"...\\"}"}']
    result = backend.execute(question)  # bounded by WEB_POLICY: about 25 s at most
    if result.success:
        status, body = "200 OK", {"answer": result.stdout, "model": result.model, "cost": result.cost}
    elif result.rate_limited:
        status, body = "503 Service Unavailable", {"error": "busy, retry later",
                                                   "retry_after": result.rate_limit_wait_seconds}
    else:
        status, body = "502 Bad Gateway", {"error": result.error_type}
    start_response(status, [("Content-Type", "application/json")])
    return [json.dumps(body).encode()]


def main() -> None:
    payload = json.dumps({"question": "What is WSGI?"}).encode()
    environ: dict[str, Any] = {"REQUEST_METHOD": "POST", "CONTENT_LENGTH": str(len(payload)),
                               "wsgi.input": io.BytesIO(payload)}
    setup_testing_defaults(environ)
    seen: list[str] = []
    body = b"".join(app(environ, lambda status, headers: seen.append(status)))
    print(seen[0], body.decode())


if __name__ == "__main__":
    main()
