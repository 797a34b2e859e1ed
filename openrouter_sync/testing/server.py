"""The fake OpenRouter server: a threaded ``http.server`` on 127.0.0.1 that speaks the real API's shapes.

Layout: ``FakeOpenRouter`` owns the state (script, counters, faults, rate limit) and a ``_Server``
(a ``ThreadingHTTPServer`` that points back at it as ``server.fake``); ``_Handler``, a module-level
``BaseHTTPRequestHandler``, answers one connection and reaches all state through ``self.server``.

Wire behaviour follows OpenRouter's: HTTP/1.1 with keep-alive; plain answers carry a
``Content-Length``; streams (``"stream": true``) are ``text/event-stream`` sent with
``Transfer-Encoding: chunked`` on a connection that stays open for the next request, start with
``: OPENROUTER PROCESSING`` comments and end with ``data: [DONE]``.
"""

from __future__ import annotations

import hashlib
import json
import random
import socket
import struct
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Deque, Optional, Sequence, Union, cast
from urllib.parse import parse_qs, urlsplit

MODELS = [
    {"id": "openai/gpt-4o-mini", "name": "OpenAI: GPT-4o-mini", "context_length": 128000,
     "pricing": {"prompt": "0.00000015", "completion": "0.0000006"},
     "supported_parameters": ["max_tokens", "temperature", "top_p", "response_format", "seed", "stop"]},
    {"id": "minimax/minimax-m1-80k", "name": "MiniMax: MiniMax M1 80k", "context_length": 1000000,
     "pricing": {"prompt": "0.00000055", "completion": "0.0000022"},
     "supported_parameters": ["max_tokens", "temperature", "top_p", "reasoning"]},
    {"id": "meta-llama/llama-3.3-70b-instruct:free", "name": "Meta: Llama 3.3 70B Instruct (free)",
     "context_length": 131072, "pricing": {"prompt": "0", "completion": "0"},
     "supported_parameters": ["max_tokens", "temperature", "top_p", "stop"]},
    {"id": "google/gemma-3-27b-it:free", "name": "Google: Gemma 3 27B (free)", "context_length": 96000,
     "pricing": {"prompt": "0", "completion": "0"}, "supported_parameters": ["max_tokens", "temperature"]},
]
#: USD per token for models not in ``MODELS`` (``:free`` models always cost 0).
_PRICE_IN, _PRICE_OUT = 1.5e-7, 6e-7
_PRICES = {m["id"]: (float(m["pricing"]["prompt"]), float(m["pricing"]["completion"]))  # type: ignore[index]
           for m in MODELS}
#: A model id ending in this marker answers streams as OpenAI-compatible servers do (usage only on request).
COMPAT_MARKER = ":compat"
STATS_PATH = "/_fake/stats"
FINGERPRINT = "fp_fake"


def fake_reply(prompt: str, model: str = "") -> str:
    """The fake server's deterministic answer to a prompt (the last user message)."""
    digest = hashlib.sha1(f"{model}\x00{prompt}".encode()).hexdigest()[:8]
    shown = prompt if len(prompt) <= 200 else prompt[:200] + "..."
    return f"Fake answer {digest} to: {shown}"


def price_of(model: str) -> tuple[float, float]:
    """USD per prompt token and per completion token that the fake server bills for ``model``."""
    if model.endswith(":free"):
        return 0.0, 0.0
    return _PRICES.get(model, (_PRICE_IN, _PRICE_OUT))


@dataclass
class Reply:
    """A scripted answer. ``body=None`` means the normal completion for the request.

    ``trickle`` sends the body one byte every so many seconds (a stream: one chunk); ``hang`` waits
    that long, then drops the connection; ``reset`` drops the connection with no answer;
    ``truncate`` sends half the body and drops the connection; ``stream_error_after`` (streaming)
    sends that many content chunks, then an error chunk; ``chunked`` sends a scripted ``body`` with
    ``Transfer-Encoding: chunked`` (one chunk per SSE event) instead of a ``Content-Length``.

    ``tool_calls`` answers with those calls (``[{"name": ..., "arguments": {...} or "..."}]`` or
    the API's own shape; ids are made up where missing), ``content`` null and finish_reason
    ``"tool_calls"``; ``message`` is merged into the answer's message (e.g. ``{"refusal": "..."}``,
    ``{"content": [parts]}``, ``{"annotations": [...]}``). Both work plain and streamed (a stream
    sends a tool call's arguments in pieces, as OpenAI does).
    """

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: Union[bytes, str, dict, list, None] = None
    delay: float = 0.0
    trickle: Optional[float] = None
    hang: Optional[float] = None
    reset: bool = False
    truncate: bool = False
    stream_error_after: Optional[int] = None
    stream_error_code: Union[int, str] = 502
    chunked: bool = False
    tool_calls: Optional[list[dict[str, Any]]] = None
    message: Optional[dict[str, Any]] = None


@dataclass
class RateLimit:
    """A token bucket: ``rate`` requests a second, ``burst`` at once. 429s carry the wait in ``style``:
    ``retry-after`` (fractional seconds), ``retry-after-int``, ``retry-after-ms``, ``http-date``,
    ``reset-ms``/``reset-s`` (``X-RateLimit-Reset`` epoch), ``body`` (``retry_after_seconds``),
    ``metadata`` (inside ``error.metadata.headers``), ``text`` ("retry after N seconds"), ``none``."""

    rate: float = 50.0
    burst: int = 10
    style: str = "retry-after"
    delay_rejections: bool = False  # False: a 429 is answered at once (as OpenRouter does); True: after the latency


@dataclass
class Faults:
    """Answer a share of chat requests badly, chosen with a seeded random generator.

    Kinds: an HTTP status as a string ("500", "502", "503", "524", "529"), ``reset``,
    ``truncate``, ``error200`` (finish_reason "error"), ``error200-top`` (top-level error), ``html``
    (a non-JSON 200), ``hang`` (answers after ``hang_seconds``)."""

    probability: float = 0.25
    kinds: Sequence[str] = ("500", "502", "503", "reset", "truncate", "error200", "html")
    seed: int = 0
    hang_seconds: float = 2.0


@dataclass
class RecordedRequest:
    """One request the server received: ``headers`` with lower-case names, ``json`` the parsed body (None
    if it was not JSON), ``prompt`` the last user message's content, ``status`` the status it was answered with."""

    method: str
    path: str
    headers: dict[str, str]
    json: Any
    prompt: Optional[str]
    status: int = 0


class _Bucket:
    def __init__(self, limit: RateLimit) -> None:
        self.limit = limit
        self.tokens = float(limit.burst)
        self.stamp = time.monotonic()
        self.lock = threading.Lock()

    def take(self) -> Optional[float]:
        """None when a token was taken, else the seconds until one is available."""
        with self.lock:
            now = time.monotonic()
            self.tokens = min(float(self.limit.burst), self.tokens + (now - self.stamp) * self.limit.rate)
            self.stamp = now
            if self.tokens >= 1.0:
                self.tokens -= 1.0
                return None
            return (1.0 - self.tokens) / self.limit.rate


class FakeOpenRouter:
    """A local OpenRouter look-alike. Use as a context manager; ``base_url`` is its ``/api/v1``.

    Counters: ``request_count``, ``connection_count``, ``status_counts``, ``answers_per_prompt``
    (successful chat answers per prompt), ``requests`` (each ``RecordedRequest``; keep off with
    ``record=False`` for huge runs). ``stats_url`` serves them as JSON (for a server run in another
    process); ``/_fake/stats`` answers under any prefix, so ``<base_url>/_fake/stats`` works too.

    Billing: usage and ``cost`` come from ``MODELS``' prices (a default for unknown models);
    ``:free`` models cost 0.

    Streamed usage: OpenRouter always ends a stream with a usage chunk; OpenAI-compatible servers
    (OpenAI, LiteLLM's proxy) send it only when the request has ``stream_options:
    {"include_usage": true}``. This server sends the usage chunk when the request asks for it, or
    else when ``stream_usage="always"`` (the default, as OpenRouter) and the model id does not end
    in ``:compat`` (e.g. ``openai/gpt-4o-mini:compat``). With ``stream_usage="requested"``, every
    model behaves as an OpenAI-compatible server.

    Auth: a ``Bearer`` token in ``Authorization`` (``require_key``: that one); ``keyless=True``
    accepts any request, as vLLM or Ollama do; ``key_header="api-key"`` wants the key in that
    header instead (Azure-style), ``require_key`` being its value.
    """

    def __init__(self, *, latency: float = 0.0, rate_limit: Optional[RateLimit] = None,
                 faults: Optional[Faults] = None, require_key: Optional[str] = None,
                 processing_comments: int = 1, record: bool = True, max_lifetime: float = 900.0,
                 host: str = "127.0.0.1", port: int = 0,
                 handler: Optional[Callable[[RecordedRequest], Optional[Reply]]] = None,
                 stream_usage: str = "always", keyless: bool = False,
                 key_header: Optional[str] = None) -> None:
        if stream_usage not in ("always", "requested"):
            raise ValueError(f"stream_usage must be 'always' or 'requested', got {stream_usage!r}")
        self.latency = latency
        self.rate_limit = rate_limit
        self.faults = faults
        self.require_key = require_key
        self.processing_comments = processing_comments
        self.record = record
        self.handler = handler
        self.max_lifetime = max_lifetime
        self.stream_usage = stream_usage
        self.keyless = keyless
        self.key_header = key_header
        self._host, self._port = host, port
        self._bucket = _Bucket(rate_limit) if rate_limit else None
        self._rng = random.Random(faults.seed if faults else 0)
        self._lock = threading.Lock()
        self._script: Deque[Reply] = deque()
        self._server: Optional[_Server] = None
        self._thread: Optional[threading.Thread] = None
        self._timer: Optional[threading.Timer] = None
        self._sockets: set[socket.socket] = set()
        self._gen = 0
        self.generations: dict[str, dict[str, Any]] = {}
        self.reset_counts()

    # ----- lifecycle -----
    def start(self) -> FakeOpenRouter:
        """Listen on a free port (or ``port``) and serve in a daemon thread; stops itself after ``max_lifetime``."""
        server = _Server((self._host, self._port), _Handler, self)
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-openrouter", daemon=True)
        self._thread.start()
        self._timer = threading.Timer(self.max_lifetime, self.stop)
        self._timer.daemon = True
        self._timer.start()
        return self

    def stop(self) -> None:
        """Stop serving and cut every open connection. Safe to call more than once."""
        server, self._server = self._server, None
        if server is None:
            return
        if self._timer is not None:
            self._timer.cancel()
        server.shutdown()
        server.server_close()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def __enter__(self) -> FakeOpenRouter:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The port it listens on (only while running)."""
        assert self._server is not None, "the server is not running"
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>/api/v1``: pass it as ``OpenRouterBackend(base_url=...)``."""
        return f"{self.url}/api/v1"

    @property
    def stats_url(self) -> str:
        """Where ``GET`` returns ``stats()`` as JSON."""
        return f"{self.url}{STATS_PATH}"

    # ----- scripting and counters -----
    def script(self, *replies: Reply) -> None:
        """Queue answers for the next chat requests, in order (then normal behaviour resumes)."""
        with self._lock:
            self._script.extend(replies)

    def reset_counts(self) -> None:
        """Zero every counter and forget the recorded requests."""
        with self._lock:
            self.request_count = 0
            self.connection_count = 0
            self.status_counts: Counter[int] = Counter()
            self.answers_per_prompt: Counter[str] = Counter()
            self.requests: list[RecordedRequest] = []

    def stats(self) -> dict[str, Any]:
        """The counters as plain data (also served at ``stats_url``)."""
        with self._lock:
            return {"request_count": self.request_count, "connection_count": self.connection_count,
                    "status_counts": {str(k): v for k, v in self.status_counts.items()},
                    "answers_per_prompt": dict(self.answers_per_prompt)}

    def sends_stream_usage(self, payload: dict[str, Any], model: str) -> bool:
        """Whether a stream for this request ends with a usage chunk (see the class docstring)."""
        options = payload.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage") is True:
            return True
        return self.stream_usage == "always" and not model.endswith(COMPAT_MARKER)

    # ----- used by the handler -----
    def next_scripted(self) -> Optional[Reply]:
        """Take the next scripted ``Reply`` (None when the script is empty). Used by the request handler."""
        with self._lock:
            return self._script.popleft() if self._script else None

    def draw_fault(self) -> Optional[str]:
        """A fault kind for this request, drawn with ``faults.probability``, or None. Used by the request handler."""
        faults = self.faults
        if not faults or not faults.kinds:
            return None
        with self._lock:
            if self._rng.random() >= faults.probability:
                return None
            return self._rng.choice(list(faults.kinds))

    def rate_limited(self) -> Optional[Reply]:
        """A 429 when the token bucket is empty, else None (a token was taken)."""
        if self._bucket is None:
            return None
        wait = self._bucket.take()
        return None if wait is None else _rate_limited_reply(self._bucket.limit.style, wait, self._bucket.limit)

    def new_generation_id(self) -> str:
        """A fresh generation id shaped like OpenRouter's (``gen-<number>-<hex>``)."""
        with self._lock:
            self._gen += 1
            n = self._gen
        return f"gen-{1783514921 + n}-{hashlib.sha1(str(n).encode()).hexdigest()[:20]}"

    def remember_generation(self, gen_id: str, data: dict[str, Any]) -> None:
        """Keep a generation's stats for ``GET /generation?id=``."""
        with self._lock:
            self.generations[gen_id] = data

    def connection_opened(self, sock: socket.socket) -> None:
        """Count a new connection (and keep its socket, so ``stop`` can cut it)."""
        with self._lock:
            self.connection_count += 1
            self._sockets.add(sock)

    def connection_closed(self, sock: socket.socket) -> None:
        """Forget a closed connection's socket."""
        with self._lock:
            self._sockets.discard(sock)

    def record_request(self, recorded: RecordedRequest) -> None:
        """Count a request, and keep it in ``requests`` unless ``record=False``."""
        with self._lock:
            self.request_count += 1
            if self.record:
                self.requests.append(recorded)

    def count(self, status: int, recorded: RecordedRequest, answered: bool = False) -> None:
        """Count the status a request was answered with (and, for a chat answer, its prompt)."""
        recorded.status = status
        with self._lock:
            self.status_counts[status] += 1
            if answered and recorded.prompt is not None:
                self.answers_per_prompt[recorded.prompt] += 1


class _Server(ThreadingHTTPServer):
    """The listening socket; ``fake`` is the ``FakeOpenRouter`` whose state the handlers use."""

    request_queue_size = 512  # many clients connect at once: never let a SYN wait for a retry
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler],
                 fake: FakeOpenRouter) -> None:
        self.fake = fake
        super().__init__(address, handler)


def tool_call(name: str, arguments: Union[str, dict[str, Any]], call_id: str) -> dict[str, Any]:
    """One tool call in the API's shape."""
    args = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": args}}


def _scripted_calls(calls: Sequence[dict[str, Any]], seed: str) -> list[dict[str, Any]]:
    out = []
    for n, call in enumerate(calls):
        call_id = str(call.get("id") or f"call_{hashlib.sha1(f'{seed}{n}'.encode()).hexdigest()[:24]}")
        if isinstance(call.get("function"), dict):
            out.append({"type": "function", **call, "id": call_id})
        else:
            out.append(tool_call(str(call.get("name")), call.get("arguments") or {}, call_id))
    return out


def _auto_tool_calls(payload: dict[str, Any], prompt: str) -> Optional[list[dict[str, Any]]]:
    """The fake's own tool use: a request offering ``tools`` whose last message is the user's
    gets a call of the first tool (or the one ``tool_choice`` names), its required arguments made
    up from their types (strings get the prompt); after the tool results it answers in text."""
    tools = payload.get("tools")
    messages = payload.get("messages") or []
    choice = payload.get("tool_choice")
    if not isinstance(tools, list) or not tools or choice == "none" or not messages:
        return None
    if not isinstance(messages[-1], dict) or messages[-1].get("role") != "user":
        return None
    functions = [t["function"] for t in tools if isinstance(t, dict) and isinstance(t.get("function"), dict)]
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        wanted = choice["function"].get("name")
        functions = [f for f in functions if f.get("name") == wanted] or functions
    if not functions:
        return None
    function = functions[0]
    given = function.get("parameters")
    params: dict[str, Any] = given if isinstance(given, dict) else {}
    props: dict[str, Any] = params["properties"] if isinstance(params.get("properties"), dict) else {}
    made_up = {"string": prompt[:80], "integer": 1, "number": 1.5, "boolean": True, "array": [], "object": {}}
    arguments = {name: made_up.get(str((props.get(name) or {}).get("type")))
                 for name in params.get("required") or [] if isinstance(name, str)}
    return _scripted_calls([{"name": function.get("name"), "arguments": arguments}], prompt)


def _tool_results(payload: dict[str, Any]) -> str:
    """The results of the tool calls the conversation ends with (for the fake's text answer)."""
    results = []
    for message in reversed(payload.get("messages") or []):
        if not isinstance(message, dict) or message.get("role") != "tool":
            break
        results.append(str(message.get("content")))
    return "; ".join(reversed(results))


def _completion(fake: FakeOpenRouter, payload: dict[str, Any], prompt: str,
                reply: Optional[Reply] = None) -> tuple[dict[str, Any], str]:
    model = payload.get("model") or (payload.get("models") or ["openai/gpt-4o-mini"])[0]
    model = str(model)
    text = fake_reply(prompt, model)
    results = _tool_results(payload)
    if results:
        text += f" (tool results: {results[:200]})"
    fmt = payload.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema"):
        text = json.dumps({"answer": text, "prompt_chars": len(prompt)})
    all_text = "".join(str(m.get("content") or "") for m in payload.get("messages") or [] if isinstance(m, dict))
    prompt_tokens = max(1, len(all_text) // 4)
    completion_tokens = max(1, len(text) // 4)
    max_tokens = payload.get("max_completion_tokens", payload.get("max_tokens"))
    finish = "stop"
    if isinstance(max_tokens, int) and completion_tokens > max_tokens:
        text, completion_tokens, finish = text[: max_tokens * 4], max_tokens, "length"
    gen_id = fake.new_generation_id()
    price_in, price_out = price_of(model)
    cost = round(prompt_tokens * price_in + completion_tokens * price_out, 10)
    message: dict[str, Any] = {"role": "assistant", "content": text, "reasoning": None}
    if payload.get("reasoning"):
        message["reasoning"] = f"Thinking about: {prompt[:40]}"
    calls = _scripted_calls(reply.tool_calls, prompt) if reply is not None and reply.tool_calls is not None \
        else _auto_tool_calls(payload, prompt)
    if calls:
        message["content"], message["tool_calls"], finish = None, calls, "tool_calls"
    if reply is not None and reply.message:
        message.update(reply.message)
    body = {
        "id": gen_id, "object": "chat.completion", "created": int(time.time()), "model": model,
        "provider": "FakeProvider", "system_fingerprint": FINGERPRINT,
        "choices": [{"index": 0, "finish_reason": finish, "native_finish_reason": finish, "message": message}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens, "cost": cost,
                  "prompt_tokens_details": {"cached_tokens": 0},
                  "completion_tokens_details": {"reasoning_tokens": 0}},
    }
    fake.remember_generation(gen_id, {
        "id": gen_id, "model": model, "provider_name": "FakeProvider", "total_cost": cost,
        "tokens_prompt": prompt_tokens, "tokens_completion": completion_tokens,
        "native_tokens_prompt": prompt_tokens, "native_tokens_completion": completion_tokens,
        "latency": int(fake.latency * 1000), "generation_time": 1, "finish_reason": finish,
    })
    return body, text


def _error_body(status: int, message: str, metadata: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": status, "message": message}
    if metadata:
        error["metadata"] = metadata
    return {"error": error, "user_id": "user_fake"}


def _rate_limited_reply(style: str, wait: float, limit: RateLimit) -> Reply:
    reset_ms = int((time.time() + wait) * 1000)
    rl = {"X-RateLimit-Limit": str(limit.burst), "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(reset_ms)}
    message = "Rate limit exceeded: fake-per-second"
    headers: dict[str, str] = {}
    metadata: dict[str, Any] = {}
    body_extra: dict[str, Any] = {}
    if style == "retry-after":
        headers["Retry-After"] = f"{wait:.3f}"
    elif style == "retry-after-int":
        headers["Retry-After"] = str(max(1, int(wait + 0.999)))
    elif style == "retry-after-ms":
        headers["retry-after-ms"] = str(int(wait * 1000) + 1)
    elif style == "http-date":
        headers["Retry-After"] = formatdate(time.time() + max(1.0, wait), usegmt=True)
    elif style == "reset-ms":
        headers.update(rl)
    elif style == "reset-s":
        headers.update(rl, **{"X-RateLimit-Reset": f"{time.time() + wait:.3f}"})
    elif style == "metadata":
        metadata["headers"] = rl
    elif style == "body":
        body_extra["retry_after_seconds"] = round(wait, 3)
    elif style == "text":
        message += f". Please retry after {max(1, int(wait + 0.999))} seconds"
    body = _error_body(429, message, metadata or None)
    body.update(body_extra)
    return Reply(429, headers, body)


def _fault_reply(kind: str, faults: Faults) -> Reply:
    if kind.isdigit():
        status = int(kind)
        return Reply(status, {}, _error_body(status, f"Fake fault {status}", {"provider_name": "FakeProvider"}))
    if kind == "reset":
        return Reply(reset=True)
    if kind == "truncate":
        return Reply(truncate=True)
    if kind == "error200":
        return Reply(200, {}, "error200")
    if kind == "error200-top":
        return Reply(200, {}, _error_body(502, "Provider returned error"))
    if kind == "html":
        return Reply(200, {"Content-Type": "text/html"}, "<html><body>502 Bad Gateway</body></html>")
    if kind == "hang":
        return Reply(hang=faults.hang_seconds)
    raise ValueError(f"unknown fault kind {kind!r}")


def _event(data: Union[dict, str]) -> bytes:
    """One SSE event carrying ``data`` (a JSON object or a literal such as ``[DONE]``)."""
    text = data if isinstance(data, str) else json.dumps(data)
    return f"data: {text}\n\n".encode()


def _sse_pieces(data: bytes) -> list[bytes]:
    """An SSE body cut after each blank line (one piece per event or comment)."""
    pieces = [piece + b"\n\n" for piece in data.split(b"\n\n")]
    pieces[-1] = pieces[-1][:-2]
    return [piece for piece in pieces if piece]


class _Handler(BaseHTTPRequestHandler):
    """One connection to the fake server; state lives on ``self.server.fake``."""

    protocol_version = "HTTP/1.1"
    server_version = "FakeOpenRouter/1.0"
    server: _Server

    @property
    def fake(self) -> FakeOpenRouter:
        return self.server.fake

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no 40 ms Nagle stalls
        self.fake.connection_opened(self.connection)

    def handle(self) -> None:
        try:
            super().handle()
        except (ConnectionError, socket.timeout, OSError):
            pass  # the client went away (a deadline, a reset): not the server's problem

    def finish(self) -> None:
        self.fake.connection_closed(self.connection)
        try:
            super().finish()
        except OSError:
            pass

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    # ----- plumbing -----
    def _send(self, status: int, body: Union[bytes, str, dict, list], headers: Optional[dict[str, str]] = None,
              reply: Optional[Reply] = None) -> None:
        if isinstance(body, (dict, list)):
            data = json.dumps(body).encode("utf-8")
            content_type = "application/json"
        else:
            data = body.encode("utf-8") if isinstance(body, str) else body
            content_type = "text/plain"
        headers = dict(headers or {})
        headers.setdefault("Content-Type", content_type)
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        if reply is not None and reply.chunked:
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            is_sse = headers["Content-Type"].startswith("text/event-stream")
            pieces = _sse_pieces(data) if is_sse else [data]
            if reply.truncate:
                self._write_chunks(pieces[: max(1, len(pieces) // 2)], reply.trickle)
                return self._reset()
            self._write_chunks(pieces, reply.trickle)
            self._end_chunks()
            return None
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if reply is not None and reply.truncate:
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return None
        if reply is not None and reply.trickle:
            for i in range(len(data)):
                self.wfile.write(data[i:i + 1])
                self.wfile.flush()
                time.sleep(reply.trickle)
            return None
        self.wfile.write(data)
        return None

    def _chunk(self, data: bytes) -> None:
        """Write one chunk of a ``Transfer-Encoding: chunked`` body (and flush it)."""
        if data:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

    def _write_chunks(self, pieces: Sequence[bytes], trickle: Optional[float]) -> None:
        for piece in pieces:
            self._chunk(piece)
            if trickle:
                time.sleep(trickle)

    def _end_chunks(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _reset(self) -> None:
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.connection.close()

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            parts: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _read_json(self) -> Any:
        raw = self._read_body()
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            return None

    def _record(self, payload: Any) -> RecordedRequest:
        prompt = None
        if isinstance(payload, dict):
            for message in reversed(payload.get("messages") or []):
                if isinstance(message, dict) and message.get("role") == "user":
                    prompt = str(message.get("content"))
                    break
        recorded = RecordedRequest(self.command, urlsplit(self.path).path,
                                   {k.lower(): v for k, v in self.headers.items()}, payload, prompt)
        self.fake.record_request(recorded)
        return recorded

    def _authorized(self) -> bool:
        fake = self.fake
        if fake.keyless:
            return True
        if fake.key_header is not None:
            given = self.headers.get(fake.key_header) or ""
            return given == fake.require_key if fake.require_key is not None else bool(given)
        auth = self.headers.get("Authorization") or ""
        if self.fake.require_key is not None:
            return auth == f"Bearer {self.fake.require_key}"
        return auth.startswith("Bearer ") and len(auth) > len("Bearer ")

    # ----- routes -----
    def do_GET(self) -> None:
        fake = self.fake
        parts = urlsplit(self.path)
        path = parts.path.rstrip("/")
        if path.endswith(STATS_PATH):  # for a server run in another process (see __main__); not counted
            return self._send(200, fake.stats())
        recorded = self._record(None)
        if path.endswith("/models"):
            fake.count(200, recorded)
            return self._send(200, {"data": MODELS})
        if not self._authorized():
            fake.count(401, recorded)
            return self._send(401, _error_body(401, "No auth credentials found"))
        if path.endswith("/key"):
            fake.count(200, recorded)
            return self._send(200, {"data": {"label": "sk-or-v1-fak...key", "limit": 10.0, "limit_remaining": 9.5,
                                             "usage": 0.5, "usage_daily": 0.1, "is_free_tier": False,
                                             "rate_limit": {"requests": 20, "interval": "10s"}}})
        if path.endswith("/generation"):
            gen_id = (parse_qs(parts.query).get("id") or [""])[0]
            data = fake.generations.get(gen_id)
            if data is None:
                fake.count(404, recorded)
                return self._send(404, _error_body(404, f"Generation {gen_id} not found"))
            fake.count(200, recorded)
            return self._send(200, {"data": data})
        fake.count(404, recorded)
        return self._send(404, _error_body(404, f"Not found: {parts.path}"))

    def do_POST(self) -> None:
        fake = self.fake
        payload = self._read_json()
        recorded = self._record(payload)
        if not urlsplit(self.path).path.rstrip("/").endswith("/chat/completions"):
            fake.count(404, recorded)
            return self._send(404, _error_body(404, f"Not found: {self.path}"))
        limited = fake.rate_limited()
        if fake.latency and (limited is None or cast(RateLimit, fake.rate_limit).delay_rejections):
            time.sleep(fake.latency)
        reply = fake.next_scripted()
        if reply is None and fake.handler is not None:
            reply = fake.handler(recorded)
        if reply is None and not self._authorized():
            fake.count(401, recorded)
            return self._send(401, _error_body(401, "No auth credentials found"))
        if not isinstance(payload, dict) or not isinstance(payload.get("messages"), list):
            fake.count(400, recorded)
            return self._send(400, _error_body(400, "Input required: specify \"messages\""))
        if reply is None:
            reply = limited
        if reply is None and fake.faults is not None:
            kind = fake.draw_fault()
            if kind is not None:
                reply = _fault_reply(kind, fake.faults)
        return self._answer(reply or Reply(), payload, recorded)

    def _answer(self, reply: Reply, payload: dict[str, Any], recorded: RecordedRequest) -> None:
        fake = self.fake
        if reply.delay:
            time.sleep(reply.delay)
        if reply.hang:
            time.sleep(reply.hang)
            fake.count(0, recorded)
            return self._reset()
        if reply.reset:
            fake.count(0, recorded)
            return self._reset()
        prompt = recorded.prompt or ""
        if reply.status == 200 and reply.body is None and payload.get("stream"):
            return self._stream(reply, payload, prompt, recorded)
        body: Union[bytes, str, dict, list]
        answered = False
        if reply.body is None and reply.status == 200:
            body, _ = _completion(fake, payload, prompt, reply)
            answered = not reply.truncate
        elif reply.body == "error200":
            body, _ = _completion(fake, payload, prompt)
            choice = body["choices"][0]
            choice["finish_reason"] = "error"
            choice["error"] = {"code": 502, "message": "Provider disconnected mid-stream"}
            choice["message"]["content"] = choice["message"]["content"][:10]
        elif reply.body is None:
            body = _error_body(reply.status, f"Scripted error {reply.status}")
        else:
            body = reply.body
        headers = dict(reply.headers)
        if isinstance(body, dict) and isinstance(body.get("id"), str):
            headers.setdefault("X-Generation-Id", body["id"])
        fake.count(reply.status if not reply.truncate else 0, recorded, answered)
        return self._send(reply.status, body, headers, reply)

    def _stream_tool_call(self, base: dict[str, Any], position: int, call: dict[str, Any]) -> None:
        """One tool call as OpenAI streams it: id, type and name first, then the arguments in pieces."""
        function = call.get("function") or {}
        head = {"index": position, "id": call.get("id"), "type": call.get("type", "function"),
                "function": {"name": function.get("name"), "arguments": ""}}
        delta = {"role": "assistant", "content": None, "tool_calls": [head]}
        self._chunk(_event({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}))
        arguments = str(function.get("arguments") or "")
        for i in range(0, len(arguments), 10):
            piece = {"index": position, "function": {"arguments": arguments[i:i + 10]}}
            self._chunk(_event({**base, "choices": [{"index": 0, "delta": {"tool_calls": [piece]},
                                                     "finish_reason": None}]}))

    def _stream(self, reply: Reply, payload: dict[str, Any], prompt: str, recorded: RecordedRequest) -> None:
        """A chunked, keep-alive event stream: comments, content deltas, finish, usage, ``[DONE]``."""
        fake = self.fake
        body, text = _completion(fake, payload, prompt, reply)
        said = body["choices"][0]["message"]
        text = said["content"] if isinstance(said.get("content"), str) else ""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("X-Generation-Id", body["id"])
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        base = {"id": body["id"], "object": "chat.completion.chunk", "created": body["created"],
                "model": body["model"], "provider": "FakeProvider", "system_fingerprint": FINGERPRINT}
        try:
            for _ in range(fake.processing_comments):
                self._chunk(b": OPENROUTER PROCESSING\n\n")
            if said.get("reasoning"):
                self._chunk(_event({**base, "choices": [{"index": 0, "delta": {
                    "role": "assistant", "content": "", "reasoning": said["reasoning"]}, "finish_reason": None}]}))
            extras = {k: v for k, v in said.items() if k not in ("role", "content", "reasoning", "tool_calls")}
            if extras:  # refusal, annotations, images, ...: one delta
                self._chunk(_event({**base, "choices": [{"index": 0, "delta": extras, "finish_reason": None}]}))
            for position, call in enumerate(said.get("tool_calls") or []):
                self._stream_tool_call(base, position, call)
            pieces = [text[i:i + 8] for i in range(0, len(text), 8)] or ([] if said.get("tool_calls") else [""])
            for index, piece in enumerate(pieces):
                if reply.stream_error_after is not None and index >= reply.stream_error_after:
                    error = {"code": reply.stream_error_code, "message": "Provider disconnected mid-stream"}
                    self._chunk(_event({**base, "error": error, "choices": [
                        {"index": 0, "delta": {"content": ""}, "finish_reason": "error"}]}))
                    self._end_chunks()
                    fake.count(200, recorded)
                    return None
                if reply.truncate and index >= len(pieces) // 2:
                    fake.count(0, recorded)
                    return self._reset()
                delta: dict[str, Any] = {"content": piece}
                if index == 0:
                    delta["role"] = "assistant"
                self._chunk(_event({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}))
                if reply.trickle:
                    time.sleep(reply.trickle)
            finish = body["choices"][0]["finish_reason"]
            last = {"index": 0, "delta": {"content": ""}, "finish_reason": finish,
                    "native_finish_reason": finish}
            tail = _event({**base, "choices": [last]})
            if fake.sends_stream_usage(payload, body["model"]):
                tail += _event({**base, "choices": [], "usage": body["usage"]})
            self._chunk(tail + _event("[DONE]"))
            self._end_chunks()
            fake.count(200, recorded, answered=True)
        except OSError:
            self.close_connection = True
            fake.count(0, recorded)
        return None
