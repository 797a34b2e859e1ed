"""A tiny raw-socket HTTP server toolkit for hostile-server tests (no framework, standard library only).

``HostileServer(handler)`` binds 127.0.0.1 on a free port and runs one thread per connection. For
each request it parses the head and the body, records a ``Request`` (``server.requests``), and calls
``handler(sock, request)`` with the raw socket: the handler writes whatever bytes it likes, using the
helpers below or not. A handler that returns ``True`` keeps the connection for the next request;
anything else closes it. Every wait inside a handler should go through ``request.wait(seconds)``
(False once the server is stopping), so ``stop()`` ends every thread promptly. The server stops
itself after ``lifetime`` seconds; use it as a context manager.

``HostileServer(handler, slow_connect=True)`` fills its accept queue so that a ``connect()`` to it
hangs (the kernel drops the SYN) until ``release()``.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
import zlib
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence, Union

Handler = Callable[[socket.socket, "Request"], Optional[bool]]
KEY = "sk-or-v1-" + "a" * 64
MODEL = "openai/gpt-4o-mini"
BLOCK = 64 * 1024


@dataclass
class Request:
    """One parsed request: ``headers`` have lower-case names; ``at`` is ``time.monotonic()`` on arrival."""

    method: str
    path: str
    version: str
    headers: dict[str, str]
    body: bytes
    at: float
    server: HostileServer = field(repr=False)

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    @property
    def prompt(self) -> Optional[str]:
        """The last user message of a chat request."""
        payload = self.json()
        messages = payload.get("messages") if isinstance(payload, dict) else None
        for message in reversed(messages or []):
            if isinstance(message, dict) and message.get("role") == "user":
                return str(message.get("content"))
        return None

    @property
    def streaming(self) -> bool:
        payload = self.json()
        return isinstance(payload, dict) and payload.get("stream") is True

    def wait(self, seconds: float) -> bool:
        """Sleep, unless the server stops first; True when the full time passed."""
        return not self.server.stopping.wait(seconds)


class HostileServer:
    """See the module docstring. ``url`` is ``http(s)://127.0.0.1:<port>``; ``base_url`` adds ``/api/v1``."""

    def __init__(self, handler: Handler, *, lifetime: float = 5.0, tls: Optional[ssl.SSLContext] = None,
                 slow_connect: bool = False, read_timeout: float = 5.0) -> None:
        self.handler = handler
        self.lifetime = lifetime
        self.tls = tls
        self.slow_connect = slow_connect
        self.read_timeout = read_timeout
        self.requests: list[Request] = []
        self.connections = 0
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._fillers: list[socket.socket] = []
        self._listener: Optional[socket.socket] = None
        self._timer: Optional[threading.Timer] = None
        self._released = threading.Event()

    # ----- lifecycle -----
    def start(self) -> HostileServer:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(0 if self.slow_connect else 128)
        listener.settimeout(0.05)
        self._listener = listener
        self.port = int(listener.getsockname()[1])
        if self.slow_connect:
            filler = socket.create_connection(("127.0.0.1", self.port), timeout=1.0)  # the queue is now full
            self._fillers.append(filler)
        else:
            self._released.set()
        self._spawn(self._accept_loop, "hostile-accept")
        self._timer = threading.Timer(self.lifetime, self.stop)
        self._timer.daemon = True
        self._timer.start()
        return self

    def release(self) -> None:
        """Start accepting (a ``slow_connect`` server): pending and later connects go through."""
        for filler in self._fillers:
            filler.close()
        self._released.set()

    def stop(self) -> None:
        if self.stopping.is_set():
            return
        self.stopping.set()
        if self._timer is not None:
            self._timer.cancel()
        for filler in self._fillers:
            filler.close()
        with self._lock:
            sockets = list(self._sockets)
        close_all(sockets, self._threads, self._listener)

    def __enter__(self) -> HostileServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/api/v1"

    @property
    def request_count(self) -> int:
        with self._lock:
            return len(self.requests)

    # ----- internals -----
    def _spawn(self, target: Callable[..., None], name: str, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self.stopping.is_set():
            if not self._released.wait(0.05):
                continue
            try:
                sock, _ = self._listener.accept()
            except (socket.timeout, BlockingIOError):
                continue
            except OSError:
                return
            with self._lock:
                self.connections += 1
            self._spawn(self._serve, "hostile-conn", sock)

    def _serve(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.add(sock)
        try:
            sock.settimeout(self.read_timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.tls is not None:
                tls_sock = self.tls.wrap_socket(sock, server_side=True)
                with self._lock:
                    self._sockets.add(tls_sock)
                sock = tls_sock
            reader = _Reader(sock)
            while not self.stopping.is_set():
                request = reader.request(self)
                if request is None:
                    return
                with self._lock:
                    self.requests.append(request)
                if self.handler(sock, request) is not True:
                    return
        except (OSError, ssl.SSLError, ValueError):
            pass  # the client went away, or spoke nonsense: not the server's problem
        finally:
            with self._lock:
                self._sockets.discard(sock)
            try:
                sock.close()
            except OSError:
                pass


class _Reader:
    """Reads requests off one connection (keep-alive aware)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def _fill(self) -> bool:
        data = self.sock.recv(BLOCK)
        self.buffer += data
        return bool(data)

    def _line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            if len(self.buffer) > 1 << 20 or not self._fill():
                raise ValueError("no line")
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line

    def _exactly(self, n: int) -> bytes:
        while len(self.buffer) < n:
            if not self._fill():
                raise ValueError("short body")
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def request(self, server: HostileServer) -> Optional[Request]:
        while b"\r\n\r\n" not in self.buffer:
            if len(self.buffer) > 1 << 20:
                raise ValueError("head too large")
            if not self._fill():
                return None
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        method, path, version = lines[0].split(" ", 2)
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if "chunked" in headers.get("transfer-encoding", "").lower():
            parts = []
            while True:
                size = int(self._line().split(b";")[0], 16)
                if size == 0:
                    while self._line():
                        pass
                    break
                parts.append(self._exactly(size))
                self._line()
            body = b"".join(parts)
        else:
            body = self._exactly(int(headers.get("content-length") or 0))
        return Request(method, path, version, headers, body, time.monotonic(), server)


# ----- writing -------------------------------------------------------------------------------------

def send(sock: socket.socket, data: bytes) -> bool:
    """Write bytes; False when the client has gone away."""
    try:
        sock.sendall(data)
        return True
    except OSError:
        return False


def head(status: int = 200, headers: Optional[Mapping[str, str]] = None, reason: str = "X") -> bytes:
    """A status line and headers, as bytes (no body). Header values are sent as given."""
    lines = [f"HTTP/1.1 {status} {reason}"] + [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def as_bytes(body: Union[bytes, str, dict, list]) -> bytes:
    if isinstance(body, (dict, list)):
        return json.dumps(body).encode()
    return body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body


def respond(sock: socket.socket, status: int = 200, body: Union[bytes, str, dict, list] = b"",
            headers: Optional[Mapping[str, str]] = None, *, close: bool = False) -> bool:
    """A whole response with a ``Content-Length`` (``close=True`` adds ``Connection: close``)."""
    data = as_bytes(body)
    all_headers = {"Content-Type": "application/json", **(headers or {}), "Content-Length": str(len(data))}
    if close:
        all_headers["Connection"] = "close"
    return send(sock, head(status, all_headers) + data)


def trickle(sock: socket.socket, request: Request, data: bytes, *, interval: float, step: int = 1) -> bool:
    """Send ``data`` ``step`` bytes every ``interval`` seconds; False when cut short."""
    for i in range(0, len(data), step):
        if not send(sock, data[i:i + step]):
            return False
        if i + step < len(data) and not request.wait(interval):
            return False
    return True


def respond_trickled(sock: socket.socket, request: Request, body: Union[bytes, str, dict, list], *,
                     interval: float, step: int = 1, content_length: bool = True, status: int = 200) -> bool:
    """``Connection: close`` and a body trickled out (with a ``Content-Length``, or close-delimited)."""
    data = as_bytes(body)
    headers = {"Content-Type": "application/json", "Connection": "close"}
    if content_length:
        headers["Content-Length"] = str(len(data))
    return send(sock, head(status, headers)) and trickle(sock, request, data, interval=interval, step=step)


def chunk(data: bytes) -> bytes:
    """One chunk of a ``Transfer-Encoding: chunked`` body."""
    return b"%x\r\n%s\r\n" % (len(data), data) if data else b""


LAST_CHUNK = b"0\r\n\r\n"
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


def event(data: Union[str, dict, list]) -> bytes:
    """One SSE event (``data: ...`` then a blank line)."""
    text = data if isinstance(data, str) else json.dumps(data)
    return f"data: {text}\n\n".encode("utf-8", "surrogatepass")


def delta_chunk(content: Any = "", finish: Any = None, **extra: Any) -> dict[str, Any]:
    """A ``chat.completion.chunk`` with one choice whose ``delta.content`` is ``content``."""
    return {"id": "gen-hostile", "object": "chat.completion.chunk", "model": MODEL,
            "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": finish}], **extra}


def raw_delta_chunk(delta: Any) -> dict[str, Any]:
    """A chunk whose ``delta`` is whatever is given (a string, a list...)."""
    return {"id": "gen-hostile", "object": "chat.completion.chunk", "model": MODEL,
            "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}


USAGE = {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8, "cost": 0.00001}


def sse_answer(pieces: Sequence[str]) -> list[bytes]:
    """The events of a complete streamed answer: one delta per piece, the finish, usage, ``[DONE]``."""
    return ([event(delta_chunk(p)) for p in pieces] + [event(delta_chunk("", "stop")),
            event({"id": "gen-hostile", "choices": [], "usage": USAGE}), event("[DONE]")])


def stream_chunked(sock: socket.socket, request: Request, events: Iterable[bytes], *, heartbeat: float = 0.0,
                   heartbeats: int = 0, interval: float = 0.0, end: bool = True,
                   headers: Optional[Mapping[str, str]] = None) -> bool:
    """A chunked keep-alive event stream: before each event, ``heartbeats`` comment lines
    ``heartbeat`` seconds apart; ``interval`` seconds after each event; the last chunk when ``end``."""
    if not send(sock, head(200, {**SSE_HEADERS, **(headers or {}), "Transfer-Encoding": "chunked"})):
        return False
    for data in events:
        for _ in range(heartbeats):
            if not send(sock, chunk(b": OPENROUTER PROCESSING\n\n")) or not request.wait(heartbeat):
                return False
        if not send(sock, chunk(data)):
            return False
        if interval and not request.wait(interval):
            return False
    return send(sock, LAST_CHUNK) if end else True


def stream_close_delimited(sock: socket.socket, request: Request, events: Iterable[bytes], *,
                           interval: float = 0.0) -> bool:
    """A ``Connection: close`` event stream with no length: the body ends when the connection closes."""
    if not send(sock, head(200, {**SSE_HEADERS, "Connection": "close"})):
        return False
    for data in events:
        if not send(sock, data):
            return False
        if interval and not request.wait(interval):
            return False
    return True


def comments_forever() -> Iterator[bytes]:
    """Keep-alive comments, forever (pace them with ``interval``)."""
    while True:
        yield b": keep-alive\n\n"


def hold(request: Request, seconds: float = 30.0) -> None:
    """Say nothing for a while (until the client closes, the time passes, or the server stops)."""
    request.wait(seconds)


def hold_until_closed(sock: socket.socket, request: Request, seconds: float = 30.0) -> bool:
    """Say nothing until the client closes the connection; True when it did (within ``seconds``)."""
    end = time.monotonic() + seconds
    sock.settimeout(0.05)
    while time.monotonic() < end and not request.server.stopping.is_set():
        try:
            if sock.recv(BLOCK) == b"":
                return True
        except socket.timeout:
            continue
        except OSError:
            return True
    return False


# ----- bodies --------------------------------------------------------------------------------------

def completion(text: str = "Hello there!", *, model: str = MODEL) -> dict[str, Any]:
    """A successful chat completion carrying ``text``."""
    return {"id": "gen-hostile-1", "object": "chat.completion", "created": 1783514921, "model": model,
            "provider": "Hostile", "choices": [{"index": 0, "finish_reason": "stop",
                                                "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8, "cost": 0.00001}}


def completion_raw(content_json: str) -> bytes:
    """A completion whose ``message.content`` is the given raw JSON text (e.g. a lone surrogate escape)."""
    text = json.dumps(completion("@@"))
    return text.replace('"@@"', content_json).encode()


def error_body(status: int, message: str) -> dict[str, Any]:
    return {"error": {"code": status, "message": message}, "user_id": "user_hostile"}


def nested_json(depth: int = 100_000) -> bytes:
    """A legal JSON document nested ``depth`` levels deep (a list of lists ...)."""
    return b"[" * depth + b"]" * depth


def nested_completion(depth: int = 100_000) -> bytes:
    """A completion whose content is nested ``depth`` levels deep."""
    return completion_raw("[" * depth + "]" * depth)


def lone_surrogate_completion(text_before: str = "Hello ", text_after: str = " world") -> bytes:
    """A completion whose content holds a lone high surrogate escape: ``"Hello \\ud83d world"``."""
    return completion_raw(json.dumps(text_before)[:-1] + "\\ud83d" + json.dumps(text_after)[1:])


def gzip_bytes(data: bytes) -> bytes:
    compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
    return compressor.compress(data) + compressor.flush()


@lru_cache(maxsize=1)
def _zero_member() -> bytes:
    """One gzip member of 64 MiB of zeros (about 64 KB), built without holding 64 MiB."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = bytes(1 << 20)
    return b"".join(compressor.compress(block) for _ in range(64)) + compressor.flush()


def gzip_bomb(compressed_size: int = 1 << 20) -> bytes:
    """About ``compressed_size`` bytes of gzip (concatenated members) that inflate to ~1000x as many zeros."""
    member = _zero_member()
    return member * max(1, compressed_size // len(member))


def gzip_stream_without_newlines(request: Request, *, piece: int = BLOCK) -> Iterator[bytes]:
    """An endless gzip stream (sync-flushed pieces) of ``data: xxxx...`` that never sends a newline."""
    compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
    yield compressor.compress(b"data: ") + compressor.flush(zlib.Z_SYNC_FLUSH)
    block = b"x" * piece
    while not request.server.stopping.is_set():
        yield compressor.compress(block) + compressor.flush(zlib.Z_SYNC_FLUSH)


def send_lazily(sock: socket.socket, request: Request, total: int, *, prefix: bytes = b"",
                fill: bytes = b"a") -> bool:
    """Send ``prefix`` then ``fill`` up to ``total`` bytes, a block at a time (never all in memory)."""
    if not send(sock, prefix):
        return False
    block = fill * (BLOCK // len(fill))
    sent = len(prefix)
    while sent < total and not request.server.stopping.is_set():
        piece = block[: total - sent]
        if not send(sock, piece):
            return False
        sent += len(piece)
    return sent >= total


def respond_huge(sock: socket.socket, request: Request, total: int = 200 * 1024 * 1024) -> bool:
    """A 200 response of ``total`` bytes with a ``Content-Length``, sent lazily: the JSON of a
    completion whose content never ends."""
    prefix = b'{"id":"gen-huge","object":"chat.completion","choices":[{"message":{"content":"'
    return (send(sock, head(200, {"Content-Type": "application/json", "Content-Length": str(total)}))
            and send_lazily(sock, request, total, prefix=prefix))


def respond_endless_chunked(sock: socket.socket, request: Request) -> bool:
    """A chunked 200 that never ends (until the client goes away or the server stops)."""
    headers = {"Content-Type": "application/json", "Transfer-Encoding": "chunked"}
    if not send(sock, head(200, headers)):
        return False
    if not send(sock, chunk(b'{"choices":[{"message":{"content":"')):
        return False
    block = chunk(b"a" * BLOCK)
    while not request.server.stopping.is_set():
        if not send(sock, block):
            return False
    return False


def respond_gzip_bomb(sock: socket.socket, request: Request, *, stream: bool = False) -> bool:
    """A 200 with ``Content-Encoding: gzip`` whose ~1 MB body inflates to ~1 GiB of zeros."""
    data = gzip_bomb()
    content_type = "text/event-stream" if stream else "application/json"
    headers = {"Content-Type": content_type, "Content-Encoding": "gzip", "Content-Length": str(len(data))}
    return send(sock, head(200, headers)) and _send_blocks(sock, request, data)


def _send_blocks(sock: socket.socket, request: Request, data: bytes) -> bool:
    for i in range(0, len(data), BLOCK):
        if request.server.stopping.is_set() or not send(sock, data[i:i + BLOCK]):
            return False
    return True


def redirect(sock: socket.socket, request: Request, status: int, location: str) -> bool:
    """A redirect with a ``Location`` and a small body."""
    return respond(sock, status, error_body(status, "moved"), {"Location": location})


# ----- ready-made handlers -------------------------------------------------------------------------

def ok_handler(text: str = "Hello there!") -> Handler:
    """Answer every chat request with ``text`` (streamed when asked), ``/models`` and ``/key`` too."""

    def handle(sock: socket.socket, request: Request) -> bool:
        if request.method == "GET" and request.path.rstrip("/").endswith("/models"):
            return respond(sock, 200, {"data": [{"id": MODEL, "name": "m", "pricing": {"prompt": "0",
                                                                                       "completion": "0"}}]})
        if request.method == "GET" and request.path.rstrip("/").endswith("/key"):
            return respond(sock, 200, {"data": {"label": "k", "limit": None, "usage": 0.0}})
        if request.streaming:
            return stream_chunked(sock, request, sse_answer([text[i:i + 4] for i in range(0, len(text), 4)]))
        return respond(sock, 200, completion(text))

    return handle


def echo_handler(delay: float = 0.0) -> Handler:
    """Answer each chat request with ``echo: <prompt>`` (after ``delay``), keeping connections alive."""

    def handle(sock: socket.socket, request: Request) -> bool:
        if delay and not request.wait(delay):
            return False
        return respond(sock, 200, completion(f"echo: {request.prompt}"))

    return handle


def make_backend(server: HostileServer, timeout: float = 0.5, *, key: str = KEY, retry_policy: Any = None,
                 **options: Any) -> Any:
    """An ``OpenRouterBackend`` on ``server``: one attempt (unless ``retry_policy``), ``timeout`` seconds."""
    from openrouter_sync import OpenRouterBackend, RetryPolicy

    policy = retry_policy if retry_policy is not None else RetryPolicy(max_attempts=1)
    return OpenRouterBackend(model=MODEL, base_url=server.base_url, api_key=key, timeout_seconds=timeout,
                             retry_policy=policy, **options)


def timed(call: Callable[[], Any]) -> tuple[Any, float]:
    """``call()`` and how long it took."""
    start = time.monotonic()
    value = call()
    return value, time.monotonic() - start


def tls_context(ca: Any) -> ssl.SSLContext:
    """A server-side TLS context with a certificate for 127.0.0.1 issued by the ``trustme.CA`` ``ca``."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


def close_all(sockets: list[socket.socket], threads: list[threading.Thread],
              listener: Optional[socket.socket]) -> None:
    """Stop a test server: cut its connections, wait for its threads, close its listener."""
    for sock in sockets:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
    for thread in list(threads):
        if thread is not threading.current_thread():
            thread.join(2.0)
    if listener is not None:
        listener.close()
