"""The transport: one pooled ``requests.Session``, hard deadlines, bounded bodies, one error mapping.

Requests is used through its documented API: a ``PreparedRequest`` made by ``Request.prepare()``
once per endpoint and ``copy()``-ed per call, sent with ``Session.send`` (so test doubles that hook
the session or its adapter, like ``responses`` and ``requests-mock``, see every request). Proxies
and CA bundles come from the environment (``HTTPS_PROXY``, ``NO_PROXY``, ``REQUESTS_CA_BUNDLE``)
through ``Session.merge_environment_settings``, read once per transport. Redirects are never
followed (the key must not travel to another host): the session's ``get_redirect_target`` says
there is none, so a 3xx is an answer like any other, and cookies are never stored.

Bodies are read raw and decoded here (gzip and deflate, which is all we ask for), with a cap on
the decoded size, so a huge, endless or compressed-bomb body fails fast instead of filling memory.
"""

from __future__ import annotations

import http.client
import os
import socket
import threading
import zlib
from typing import Any, Iterator, Mapping, Optional

import requests
import urllib3
from requests.adapters import HTTPAdapter

from ._log import Secrets, encode_userinfo, url_secrets
from .deadline import POOL_CLASSES, Deadline
from .error_types import ErrorType

DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_MAX_RESPONSE_BYTES = 32 * 1024 * 1024
READ_SIZE = 65536
INFLATE_STEP = 1 << 20


_forks = 0  # forks this process has come from (a child must not use its parent's connections)


def _count_fork() -> None:
    global _forks
    _forks += 1


if hasattr(os, "register_at_fork"):  # no fork where it is missing (Windows)
    os.register_at_fork(after_in_child=_count_fork)


class TransportError(Exception):
    """An attempt that got no complete, usable answer. ``sent``: the whole request had been sent."""

    def __init__(self, error_type: ErrorType, message: str, sent: bool = False) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.sent = sent


def _reason(exc: BaseException) -> str:
    """A short reason for a network failure, without the nested repr chains urllib3 produces."""
    inner: BaseException = exc
    for _ in range(6):
        nxt = inner.args[0] if inner.args and isinstance(inner.args[0], BaseException) else None
        if nxt is None:
            reason = getattr(inner, "reason", None)
            nxt = reason if isinstance(reason, BaseException) else None
        if nxt is None:
            break
        inner = nxt
    if len(inner.args) > 1 and isinstance(inner.args[0], str):
        text = inner.args[0]  # e.g. ProtocolError("Connection broken: ...", IncompleteRead(...)): its message
    else:
        text = str(inner) or type(inner).__name__
    return text if inner is exc else f"{type(inner).__name__}: {text}"


class map_network_errors:  # named as the function it stands for: ``with map_network_errors(deadline):``
    """Run network I/O under ``deadline``; turn every low-level failure into a ``TransportError``.

    The single place where requests', urllib3's, http.client's and the socket layer's exceptions
    are translated (as httpx's ``map_httpcore_exceptions``): the request and every streamed read
    go through it. ``reading``: the answer's head has arrived, so a break now is a cut-off body.
    (A class, not a ``@contextmanager`` generator: it runs twice on every call.)
    """

    __slots__ = ("deadline", "reading")

    def __init__(self, deadline: Deadline, reading: bool = False) -> None:
        self.deadline = deadline
        self.reading = reading

    def __enter__(self) -> None:
        self.deadline.__enter__()

    def __exit__(self, kind: Optional[type], exc: Optional[BaseException], tb: Any) -> None:
        deadline = self.deadline
        deadline.__exit__()
        if exc is None or isinstance(exc, TransportError) or not isinstance(exc, _NETWORK_ERRORS):
            return
        sent = deadline.sent
        if deadline.passed:
            raise TransportError(ErrorType.TIMEOUT, f"the deadline passed ({_reason(exc)})", sent) from None
        if isinstance(exc, (requests.exceptions.Timeout, urllib3.exceptions.TimeoutError, socket.timeout)):
            raise TransportError(ErrorType.TIMEOUT, f"no answer in time ({_reason(exc)})", sent) from None
        if isinstance(exc, zlib.error):
            raise TransportError(ErrorType.INVALID_RESPONSE, f"the body does not decode: {exc}", True) from None
        if self.reading:
            raise TransportError(ErrorType.TRUNCATED_RESPONSE, f"the answer was cut off: {_reason(exc)}",
                                 True) from None
        raise TransportError(ErrorType.CONNECTION, _reason(exc), sent) from None


_NETWORK_ERRORS = (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, http.client.HTTPException,
                   OSError, zlib.error)


def _declared(content_length: str) -> int:
    """A ``Content-Length`` as a number (-1: none, or not one); a number of more digits than any
    real length counts as larger than every cap (Python refuses to convert over 4,300 digits)."""
    text = content_length.strip()
    if not text.isdigit() or not text.isascii():
        return -1
    return int(text) if len(text) <= 30 else 1 << 128


class BodyDecoder:
    """Decodes a body's ``Content-Encoding`` with a cap on the decoded size, as requests does:
    gzip of any number of members (bytes after the last complete member that are not one are
    ignored), and deflate with a zlib header or without one (raw), or in a gzip wrapper."""

    def __init__(self, encoding: str, limit: int) -> None:
        layers = [part.strip() for part in encoding.lower().split(",") if part.strip() not in ("", "identity")]
        encoding = layers[0] if len(layers) == 1 else ", ".join(layers)  # "gzip, identity" is gzip
        self.limit = limit
        self.size = 0
        self._compressed = encoding not in ("", "identity")
        self._gzip = encoding in ("gzip", "x-gzip")
        self._inflate: Optional[Any] = zlib.decompressobj(16 + zlib.MAX_WBITS) if self._gzip else None
        self._head = b""  # deflate: the first bytes, until they tell a zlib header from raw deflate
        self._members = 0  # gzip members finished
        self._ignoring = False  # what follows the last gzip member is not one: ignored
        if self._compressed and not self._gzip and encoding != "deflate":
            raise TransportError(ErrorType.INVALID_RESPONSE,
                                 f"the answer is encoded with {encoding!r}, which was not asked for", True)

    def decode(self, data: bytes) -> bytes:
        """Decode ``data``; a compressed body yields at most ``INFLATE_STEP`` bytes a call, the rest
        waits in ``pending`` (so a small read can never become a huge allocation)."""
        return self._count(self._step(data) if self._compressed else data)

    def _step(self, data: bytes) -> bytes:
        if self._ignoring:
            return b""
        inflate = self._inflate
        if inflate is None:  # deflate: which kind is known from the first two bytes
            self._head += data
            if len(self._head) < 2:
                return b""
            data, self._head = self._head, b""
            zlib_header = data[0] & 0x0F == 8 and ((data[0] << 8) | data[1]) % 31 == 0
            bits = zlib.MAX_WBITS if zlib_header else 16 + zlib.MAX_WBITS if data[:2] == b"\x1f\x8b" \
                else -zlib.MAX_WBITS
            inflate = self._inflate = zlib.decompressobj(bits)
        elif inflate.eof:
            rest = inflate.unused_data + data
            if not self._gzip or not rest:
                return b""  # the stream ended: what follows is not part of it
            inflate = self._inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)  # the next gzip member
            self._members += 1
            data = rest
        else:
            data = inflate.unconsumed_tail + data
        try:
            return inflate.decompress(data, INFLATE_STEP)  # type: ignore[no-any-return]
        except zlib.error:
            if self._members:  # not a member after complete ones (padding, garbage): ignored, as urllib3 does
                self._ignoring = True
                return b""
            raise

    @property
    def pending(self) -> bool:
        """Compressed input is waiting to be inflated (call ``decode(b"")``)."""
        inflate = self._inflate
        if inflate is None or self._ignoring:
            return False
        return bool(inflate.unconsumed_tail) or (self._gzip and inflate.eof and bool(inflate.unused_data))

    def flush(self) -> bytes:
        """What is left at the end of the body."""
        if not self._compressed or self._ignoring:
            return b""
        if self._inflate is None:  # a deflate body of fewer than two bytes
            self._inflate = zlib.decompressobj(-zlib.MAX_WBITS)
            return self._count(self._inflate.decompress(self._head) + self._inflate.flush())
        return self._count(b"" if self._inflate.eof else self._inflate.flush())

    def _count(self, data: bytes) -> bytes:
        self.size += len(data)
        if self.size > self.limit:
            self._too_large()
        return data

    @property
    def identity(self) -> bool:
        return not self._compressed

    def check_declared(self, content_length: str) -> None:
        """Fail before reading when an identity body declares more than the cap."""
        if not self._compressed and _declared(content_length) > self.limit:
            self._too_large()

    def _too_large(self) -> None:
        raise TransportError(ErrorType.RESPONSE_TOO_LARGE,
                             f"the answer is larger than max_response_bytes={self.limit}", True)


class DeadlineAdapter(HTTPAdapter):
    """An ``HTTPAdapter`` whose connections report their sockets to the running ``Deadline``."""

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any) -> None:
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)
        self.poolmanager.pool_classes_by_scheme = POOL_CLASSES  # type: ignore[assignment]

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        manager.pool_classes_by_scheme = POOL_CLASSES
        return manager


class NoCookieJar(requests.cookies.RequestsCookieJar):
    """A cookie jar that never stores a cookie (a session's jar is documented as replaceable)."""

    def extract_cookies(self, response: Any, request: Any) -> None:
        return None

    def set_cookie(self, cookie: Any, *args: Any, **kwargs: Any) -> None:
        return None

    def copy(self) -> NoCookieJar:
        return self  # it never holds anything: one jar serves every request (``PreparedRequest.copy``)


_NO_COOKIES = NoCookieJar()


class NoRedirectSession(requests.Session):
    """A session that follows no redirect and keeps no cookie."""

    def __init__(self) -> None:
        super().__init__()
        self.cookies = _NO_COOKIES

    def get_redirect_target(self, resp: requests.Response) -> None:
        return None


class Response:
    """An answer whose head has arrived; its body is read (bounded) with :meth:`read` or :meth:`chunks`.

    The status is the answer, whatever its body: the body of an error status that cannot be read
    (an encoding not asked for, one that does not decode, cut off, too large) reads as empty, so
    a br-compressed 429 is still a rate limit and a 401 still an authentication failure."""

    def __init__(self, raw: requests.Response, deadline: Deadline, limit: int) -> None:
        self.status = raw.status_code
        self.headers: Mapping[str, str] = raw.headers
        self.deadline = deadline
        self._raw = raw
        self.body_problem: Optional[TransportError] = None  # why the body could not be read
        try:
            self._decoder = BodyDecoder(raw.headers.get("Content-Encoding", ""), limit)
            self._decoder.check_declared(raw.headers.get("Content-Length", ""))
        except TransportError as exc:
            self.body_problem = exc
            self._decoder = BodyDecoder("", limit)
            if self.ok:  # an answer that cannot be read is no answer
                self.close()
                raise

    @property
    def ok(self) -> bool:
        """A 2xx status: the body is the answer (else the status is, and the body only explains it)."""
        return 200 <= self.status < 300

    def chunks(self) -> Iterator[bytes]:
        """Decoded pieces of the body as they arrive (each read bounded by the deadline)."""
        if self.body_problem is not None:
            raise self.body_problem
        raw = self._raw.raw
        read = getattr(raw, "read1", None) or raw.read  # read1: return what has arrived, don't wait for more
        while True:
            with map_network_errors(self.deadline, reading=True):
                data = read(READ_SIZE, decode_content=False)
                piece = self._decoder.decode(data) if data else self._decoder.flush()
            if piece:
                yield piece
            while self._decoder.pending:
                if self.deadline.passed:
                    raise TransportError(ErrorType.TIMEOUT, "the deadline passed while decoding the answer", True)
                with map_network_errors(self.deadline, reading=True):
                    piece = self._decoder.decode(b"")
                yield piece
            if not data:
                if self.deadline.fired:  # the watchdog shut the socket: this end of file is ours, not the server's
                    raise TransportError(ErrorType.TIMEOUT, "the deadline passed before the answer was complete", True)
                return
            if self.deadline.passed:  # decoding is CPU work the watchdog cannot cut
                raise TransportError(ErrorType.TIMEOUT, "the deadline passed while decoding the answer", True)

    def read(self) -> bytes:
        """The whole decoded body (for an error status whose body cannot be read: empty, and
        ``body_problem`` says why)."""
        if self.ok:
            return self._read()
        if self.body_problem is not None:
            return b""
        try:
            return self._read()
        except TransportError as exc:
            self.body_problem = exc
            return b""

    def _read(self) -> bytes:
        length = _declared(self._raw.headers.get("Content-Length", ""))
        if self._decoder.identity and length >= 0:  # the common case: one read of a known length
            with map_network_errors(self.deadline, reading=True):
                data: bytes = self._raw.raw.read(decode_content=False)  # urllib3 enforces the length
            if len(data) != length:
                raise TransportError(ErrorType.TRUNCATED_RESPONSE, "the answer was cut off", True)
            return data
        return b"".join(self.chunks())

    def close(self) -> None:
        """Release the connection (closing it if the body was not read to the end)."""
        self.deadline.finish()  # first: the socket stops being ours to cut
        self._raw.close()


class Transport:
    """Owns the session and its connection pool; sends requests with a deadline each."""

    def __init__(self, base_url: str, headers: Mapping[str, str], *, pool_size: int = 32,
                 connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
                 max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES) -> None:
        self.base_url = base_url.rstrip("/")
        self.connect_timeout = connect_timeout
        self.max_response_bytes = max_response_bytes
        self._headers = dict(headers)
        self._lock = threading.Lock()
        self._templates: dict[tuple[str, str, Optional[str]], requests.PreparedRequest] = {}
        self._pool_size = max(1, pool_size)
        self._session, self._adapter = self._open_session()
        self._env = self._session.merge_environment_settings(self.base_url + "/", {}, None, None, None)
        proxies = {name: str(url) if "://" in str(url) else f"http://{url}"  # as requests reads a bare host
                   for name, url in (self._env["proxies"] or {}).items() if url}
        # A proxy's password is a secret while this transport is open, in every form it may be shown in.
        self._secrets = Secrets(form for url in proxies.values() for form in url_secrets(url))
        self._env["proxies"] = {name: encode_userinfo(url) for name, url in proxies.items()}  # as urllib3 needs
        # A CA bundle only matters where TLS is spoken, to the endpoint or to a proxy (requests
        # would stat its path on every request); decided once, as the environment is read once.
        urls = (self.base_url, *(self._env["proxies"] or {}).values())
        tls = any(str(url).lower().startswith("https:") for url in urls)
        self._verify = True if self._env["verify"] is None or not tls else self._env["verify"]
        self._closed = False
        self._forks = _forks

    def _open_session(self) -> tuple[requests.Session, DeadlineAdapter]:
        session = NoRedirectSession()
        adapter = DeadlineAdapter(pool_connections=4, pool_maxsize=self._pool_size, max_retries=0)
        for prefix in ("http://", "https://"):
            session.mount(prefix, adapter)
        return session, adapter

    @property
    def pool_size(self) -> int:
        return self._pool_size

    def ensure_pool_size(self, size: int) -> None:
        """Grow the pool to at least ``size`` connections (for that many threads)."""
        with self._lock:
            if size > self._pool_size:
                self._pool_size = size
                old = self._adapter
                self._adapter = DeadlineAdapter(pool_connections=4, pool_maxsize=size, max_retries=0)
                for prefix in ("http://", "https://"):
                    self._session.mount(prefix, self._adapter)
                old.close()

    def _template(self, method: str, path: str, key: Optional[str]) -> requests.PreparedRequest:
        found = self._templates.get((method, path, key))
        if found is None:
            headers = dict(self._headers)
            if key and not any(name.lower() == "authorization" for name in headers):  # a given one wins
                headers["Authorization"] = f"Bearer {key}"
            found = requests.Request(method, self.base_url + path, headers=headers, cookies=_NO_COOKIES).prepare()
            with self._lock:
                if len(self._templates) > 64:
                    self._templates.clear()
                self._templates[(method, path, key)] = found
        return found

    def open(self, method: str, path: str, deadline: Deadline, *, key: Optional[str] = None,
             body: Optional[bytes] = None, params: Optional[Mapping[str, str]] = None,
             headers: Optional[Mapping[str, str]] = None) -> Response:
        """Send one request and wait for the answer's head. Raises ``TransportError``."""
        if self._closed or self._forks != _forks:
            self._reopen()  # after close(), as the reference's lazy client did; or in a forked child
        timeout = max(0.001, min(self.connect_timeout, deadline.remaining())), max(0.001, deadline.remaining())
        env = self._env
        with map_network_errors(deadline):
            if params:
                template = self._template(method, path, key)
                prepared = requests.Request(method, self.base_url + path, headers=template.headers,
                                            params=params, cookies=_NO_COOKIES).prepare()
            else:
                prepared = self._template(method, path, key).copy()
            if headers:
                prepared.headers.update(headers)
            if body is not None:
                prepared.prepare_body(body, None)
            raw = self._session.send(prepared, stream=True, timeout=timeout, verify=self._verify, cert=env["cert"],
                                     proxies=env["proxies"], allow_redirects=False)
        return Response(raw, deadline, self.max_response_bytes)

    def request(self, method: str, path: str, deadline: Deadline, **kwargs: Any) -> tuple[Response, bytes]:
        """Send one request and read the whole answer; the deadline is finished either way."""
        try:
            response = self.open(method, path, deadline, **kwargs)
            try:
                return response, response.read()
            finally:
                response.close()
        finally:
            deadline.finish()

    def _reopen(self) -> None:
        self._secrets.hold()
        if self._forks != _forks:
            # A forked child (gunicorn --preload, Celery prefork, multiprocessing) must never use the
            # parent's pooled connections: two processes reading one socket cross their answers.
            # They are abandoned, not closed (closing could disturb the parent's use of them).
            self._lock = threading.Lock()
            self._session, self._adapter = self._open_session()
            self._forks = _forks
            self._closed = False
            return
        with self._lock:
            if self._closed:
                self._session, self._adapter = self._open_session()
                self._closed = False

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._session.close()
        self._secrets.release()
