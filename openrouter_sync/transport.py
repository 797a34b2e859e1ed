"""The transport: one pooled ``requests.Session`` per backend, with hard per-attempt deadlines.

The hot path skips what ``Session.request`` redoes on every call (environment and proxy
merging, cookie jars, hooks, redirects): the proxies are resolved once, a ``PreparedRequest``
is filled in directly and handed to the adapter.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Mapping, Optional

import requests
from requests.adapters import HTTPAdapter
from requests.utils import get_environ_proxies

from . import errors as E
from .deadline import POOL_CLASSES, Deadline

DEFAULT_CONNECT_TIMEOUT = 10.0


class TransportError(Exception):
    """An attempt that got no complete HTTP answer; ``error_type`` is timeout, connection or truncated."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type


class RawResponse:
    """Status, headers and the whole body of one answer (or the open body, when streaming)."""

    __slots__ = ("status", "headers", "content", "response", "deadline")

    def __init__(self, status: int, headers: Mapping[str, str], content: bytes,
                 response: Optional[requests.Response] = None, deadline: Optional[Deadline] = None) -> None:
        self.status = status
        self.headers = headers
        self.content = content
        self.response = response
        self.deadline = deadline  # streaming: still armed; the reader finishes it


class DeadlineAdapter(HTTPAdapter):
    """An ``HTTPAdapter`` whose pools report their connections to the running ``Deadline``."""

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any) -> None:
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)
        self.poolmanager.pool_classes_by_scheme = POOL_CLASSES  # type: ignore[assignment]

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        manager.pool_classes_by_scheme = POOL_CLASSES
        return manager


class Transport:
    """Owns the session and its connection pool; sends requests with a deadline each."""

    def __init__(self, base_url: str, headers: Mapping[str, str], *, pool_size: int = 32,
                 connect_timeout: float = DEFAULT_CONNECT_TIMEOUT, verify: Any = True) -> None:
        self.base_url = base_url.rstrip("/")
        self.connect_timeout = connect_timeout
        self._headers = dict(headers)
        self._session = requests.Session()
        self._session.headers.clear()
        self._verify = verify
        self._proxies = get_environ_proxies(self.base_url) or {}
        self._lock = threading.Lock()
        self._pool_size = 0
        self._adapter: DeadlineAdapter = self._mount(max(1, pool_size))
        self._closed = False

    def _mount(self, size: int) -> DeadlineAdapter:
        adapter = DeadlineAdapter(pool_connections=4, pool_maxsize=size, max_retries=0, pool_block=False)
        for prefix in ("http://", "https://"):
            self._session.mount(prefix, adapter)
        self._pool_size = size
        return adapter

    @property
    def pool_size(self) -> int:
        return self._pool_size

    def ensure_pool_size(self, size: int) -> None:
        """Grow the pool to at least ``size`` connections (for that many threads)."""
        with self._lock:
            if size > self._pool_size:
                old = self._adapter
                self._adapter = self._mount(size)
                old.close()

    @property
    def session(self) -> requests.Session:
        return self._session

    def request(self, method: str, path: str, *, body: Optional[bytes] = None, timeout: float,
                stream: bool = False, params: Optional[Mapping[str, str]] = None,
                extra_headers: Optional[Mapping[str, str]] = None, tag: object = None) -> RawResponse:
        """Send one request; the whole answer must arrive within ``timeout`` seconds.

        With ``stream=True`` a 200's body is left open: the caller reads ``response`` (under
        ``deadline.attached()``) and calls ``deadline.finish()`` before closing it.
        Raises ``TransportError`` when no complete answer arrives. ``tag`` groups attempts that
        ``deadline.abort_tagged`` may cut short together.
        """
        if self._closed:  # used again after close(): open a fresh pool, as the reference's lazy client did
            self._reopen()
        prepared = requests.PreparedRequest()
        prepared.method = method
        url = self.base_url + path
        if params:
            prepared.prepare_url(url, params)
        else:
            prepared.url = url
        headers = dict(self._headers)  # a plain dict: the adapter reads it, urllib3 sends it
        if extra_headers:
            headers.update(extra_headers)
        if body is not None:
            headers["Content-Length"] = str(len(body))  # else the adapter would send it chunked
        prepared.headers = headers  # type: ignore[assignment]
        prepared.body = body
        prepared.hooks = {"response": []}
        started = time.monotonic()
        deadline = Deadline(started + timeout, tag)
        deadline.start()
        try:
            with deadline.attached():
                # Session.send, not the adapter directly: test doubles that hook the session
                # (responses, requests-mock, a patched Session.send) see every request.
                response = self._session.send(
                    prepared, stream=True, timeout=(min(self.connect_timeout, timeout), timeout),
                    verify=self._verify, proxies=self._proxies, allow_redirects=False,
                )
                if stream and response.status_code == 200:
                    return RawResponse(response.status_code, response.headers, b"", response, deadline)
                content = response.content
        except requests.exceptions.RequestException as exc:
            deadline.finish()
            raise _transport_error(exc, deadline) from None
        except BaseException:
            deadline.finish()
            raise
        deadline.finish()
        if deadline.fired:
            raise TransportError(E.TIMEOUT, "the deadline passed before the answer was complete")
        return RawResponse(response.status_code, response.headers, content)

    def _reopen(self) -> None:
        with self._lock:
            if self._closed:
                self._session = requests.Session()
                self._session.headers.clear()
                self._adapter = self._mount(self._pool_size)
                self._closed = False

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._session.close()


def _transport_error(exc: requests.exceptions.RequestException, deadline: Deadline) -> TransportError:
    if deadline.fired:
        return TransportError(E.TIMEOUT, "the deadline passed before the answer was complete")
    reason = _describe(exc)
    if isinstance(exc, requests.exceptions.Timeout) or "timed out" in reason:
        return TransportError(E.TIMEOUT, f"no answer in time ({reason})")
    if isinstance(exc, requests.exceptions.ChunkedEncodingError) or "IncompleteRead" in reason:
        return TransportError(E.TRUNCATED_RESPONSE, f"the answer was cut off: {reason}")
    return TransportError(E.CONNECTION, reason)


def _describe(exc: BaseException) -> str:
    """A short reason for a network failure, without the nested repr chains urllib3 produces."""
    inner: Optional[BaseException] = exc
    seen = 0
    while inner is not None and seen < 6:
        nxt = inner.args[0] if inner.args and isinstance(inner.args[0], BaseException) else None
        if nxt is None:
            nxt = getattr(inner, "reason", None) if isinstance(getattr(inner, "reason", None), BaseException) else None
        if nxt is None:
            break
        inner, seen = nxt, seen + 1
    text = str(inner) if inner is not None else str(exc)
    return f"{type(inner).__name__}: {text}" if inner is not exc else text

