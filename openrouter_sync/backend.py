"""``OpenRouterBackend``: the blocking, thread-safe facade over the call pipeline."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from . import endpoints, reporting
from . import request as req
from ._log import redact
from .call import Pipeline, unconfigured_result
from .credentials import ApiKey
from .endpoints import GenerationInfo, KeyInfo, ModelInfo
from .overrides import SheetState
from .request import CallSpec, Defaults
from .result import ExecutionResult
from .retry import RetryPolicy
from .sheet import Sheet, as_sheet
from .streaming import Stream
from .throttle import KeyThrottles, Throttle
from .transport import DEFAULT_MAX_RESPONSE_BYTES, Transport

DEFAULT_MODEL = "minimax/minimax-m1-80k"
DEFAULT_BASE_URL = "https://openrouter.ai/api/v1"
DEFAULT_APP_URL = "https://github.com/openrouter-sync/openrouter-sync"
DEFAULT_APP_TITLE = "openrouter-sync"


class OpenRouterBackend:
    """Run prompts on OpenRouter (or any OpenAI-compatible endpoint), one blocking call each.

    One backend is safe to share between threads: it owns one pooled ``requests.Session`` and
    one compiled retry policy. Every backend for the same endpoint and key in this process
    shares one ``Throttle`` (``share_throttle=False`` opts out; ``throttle=`` passes your own).
    Calls never raise for network or API failures: they return a failed ``ExecutionResult``.

    Keyword-only extras: ``retry_policy``, ``pool_size`` (connections kept; size it to your
    thread count), ``requests_per_minute`` (client-side pacing, set on the shared throttle),
    ``adaptive_rate``, ``throttle``, ``share_throttle``, ``connect_timeout``,
    ``max_response_bytes`` (a larger answer fails as ``response_too_large``), ``app_url`` /
    ``app_title`` (the attribution headers ``HTTP-Referer`` and ``X-Title``: sent to OpenRouter's
    endpoint only, naming this library, unless you set them), ``api_key`` (instead of the
    environment), ``default_options`` (request options sent with every call), ``strict_options``
    (an unknown request option is an error instead of a warning), ``default_headers`` (sent with
    every request; the values of credential headers such as ``api-key`` are redacted like the
    key), ``require_key`` (False: a missing key is no error and requests carry no
    ``Authorization``, for servers that need no key; default: True for OpenRouter's endpoint, see
    ``request.is_openrouter_url``, and False for other servers).

    Per call, ``extra_headers={...}`` adds headers; ``max_tokens=None`` / ``temperature=None``
    leave those fields out of the body (the server's defaults).
    """

    def __init__(self, model: str = DEFAULT_MODEL, api_key_env: str = "OPENROUTER_API_KEY", max_tokens: int = 16384,
                 temperature: float = 0.7, timeout_seconds: float = 300.0, base_url: str = DEFAULT_BASE_URL, *,
                 retry_policy: Optional[RetryPolicy] = None, pool_size: int = 32,
                 requests_per_minute: Optional[float] = None, adaptive_rate: bool = True,
                 throttle: Optional[Throttle] = None, share_throttle: bool = True, connect_timeout: float = 10.0,
                 max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES, app_url: Optional[str] = None,
                 app_title: Optional[str] = None, api_key: Optional[str] = None,
                 default_options: Optional[Mapping[str, Any]] = None, strict_options: bool = False,
                 default_headers: Optional[Mapping[str, str]] = None,
                 require_key: Optional[bool] = None) -> None:
        req.check_settings(model=model, api_key_env=api_key_env, max_tokens=max_tokens, temperature=temperature,
                           timeout_seconds=timeout_seconds, connect_timeout=connect_timeout, pool_size=pool_size,
                           requests_per_minute=requests_per_minute, max_response_bytes=max_response_bytes,
                           default_options=default_options or {}, strict=bool(strict_options))
        if throttle is not None and not isinstance(throttle, Throttle):
            raise TypeError(f"throttle must be a Throttle, got {type(throttle).__name__}")
        self.base_url = req.check_base_url(base_url)
        self.model, self.api_key_env, self.max_tokens = model, api_key_env, max_tokens
        self.temperature = None if temperature is None else float(temperature)
        self.timeout_seconds = float(timeout_seconds)
        self.default_options: dict[str, Any] = dict(default_options or {})
        self.strict_options = bool(strict_options)
        self.working_directory = None
        openrouter = req.is_openrouter_url(self.base_url)
        self.require_key = openrouter if require_key is None else bool(require_key)
        self._key = ApiKey(api_key_env, api_key, required=self.require_key)
        weakref.finalize(self, self._key.release)  # a backend dropped without close() gives its key back too
        headers = req.check_headers(default_headers, hide=self._key.hide)
        if openrouter:
            app_url = DEFAULT_APP_URL if app_url is None else app_url
            app_title = DEFAULT_APP_TITLE if app_title is None else app_title
        self._state = SheetState()
        own = throttle if throttle is not None else None if share_throttle else Throttle()
        self._throttles = KeyThrottles(self.base_url, own, requests_per_minute=requests_per_minute,
                                       adaptive=adaptive_rate)
        self.transport = Transport(self.base_url, req.request_headers(app_url, app_title, headers), pool_size=pool_size,
                                   connect_timeout=float(connect_timeout),
                                   max_response_bytes=max_response_bytes)
        self.pipeline = Pipeline(self.transport, self._throttles,
                                 retry_policy if retry_policy is not None else RetryPolicy())
        self.activity = self.pipeline.activity  # calls waiting to retry right now

    @classmethod
    def from_config(cls, config: object) -> OpenRouterBackend:
        """A backend from any object (or mapping) with some of ``model``, ``timeout_seconds``,
        ``api_key_env``, ``max_tokens``, ``temperature`` and ``base_url``; the rest take the defaults."""

        def read(name: str, default: Any, kind: Union[type, tuple[type, ...]]) -> Any:
            value = config.get(name) if isinstance(config, Mapping) else getattr(config, name, None)
            return value if isinstance(value, kind) and not isinstance(value, bool) else default

        return cls(model=read("model", DEFAULT_MODEL, str) or DEFAULT_MODEL,
                   api_key_env=read("api_key_env", "OPENROUTER_API_KEY", str),
                   max_tokens=read("max_tokens", 16384, int), temperature=read("temperature", 0.7, (int, float)),
                   timeout_seconds=read("timeout_seconds", 300.0, (int, float)),
                   base_url=read("base_url", DEFAULT_BASE_URL, str))

    # ----- properties -----
    @property
    def name(self) -> str:
        """``openrouter:<model>``, as the reference names its backends."""
        return f"openrouter:{self.model}"

    @property
    def working_directory(self) -> Optional[Path]:
        """Kept for the reference's interface (None by default); calls do not use it."""
        return self._working_directory

    @working_directory.setter
    def working_directory(self, value: Union[str, Path, None]) -> None:
        self._working_directory = None if value is None else Path(value)

    @property
    def override_lock(self) -> threading.RLock:
        """The lock that guards the per-sheet override lifecycle (one per backend)."""
        return self._state.lock  # type: ignore[return-value]

    @property
    def retry_policy(self) -> RetryPolicy:
        """The policy every call follows; assign a new one at any time."""
        return self.pipeline.policy

    @retry_policy.setter
    def retry_policy(self, policy: RetryPolicy) -> None:
        self.pipeline.policy = policy

    @property
    def throttle(self) -> Throttle:
        """The rate-limit state this backend's calls go through (shared per endpoint and key)."""
        return self._throttles(self._key.get(hold=False)[0])

    # ----- the reference's per-sheet state -----
    def apply_overrides(self, overrides: Mapping[str, Any]) -> None:
        """Apply per-sheet overrides (``model``, ``temperature``, ``max_tokens``, request options) until
        :meth:`clear_overrides`. ``{}`` is a no-op. Prefer :meth:`execute_sheet` under threads."""
        self._state.apply(self, overrides)

    def clear_overrides(self) -> None:
        """Restore what :meth:`apply_overrides` changed; a no-op when nothing was applied."""
        self._state.clear(self)

    def set_preamble(self, preamble: Optional[str]) -> None:
        """Text put before the prompt of the following calls (None to remove)."""
        self._state.set_preamble(preamble)

    def set_prompt_extensions(self, extensions: Sequence[str]) -> None:
        """Texts put after the prompt of the following calls; blank entries are dropped."""
        self._state.set_extensions(extensions)

    def set_output_log_path(self, path: Optional[Path]) -> None:
        """Base path for output logs: ``<base>.stdout.log`` and ``<base>.stderr.log`` (None: off)."""
        self._state.set_output_log_path(path)

    # ----- calls -----
    def execute(self, prompt: str = "", *, timeout_seconds: Optional[float] = None, system: Optional[str] = None,
                messages: Optional[Sequence[Mapping[str, Any]]] = None, **options: Any) -> ExecutionResult:
        """Send a prompt (with the backend's current overrides, preamble and extensions); block until the
        answer, retrying per the policy. ``timeout_seconds`` bounds each attempt. Other keywords: ``model``,
        ``temperature``, ``max_tokens`` and request options (``provider=``, ``response_format=``, ...)."""
        return self.run_spec(self._spec(prompt, timeout_seconds, system, messages, options))

    def execute_sheet(self, sheet: Union[Sheet, str], *, cancel: Optional[threading.Event] = None) -> ExecutionResult:
        """Run one sheet. Everything per-sheet comes from the sheet, nothing from the backend's mutable
        state, so many threads may call this at once with different sheets."""
        return self.run_spec(self.spec_for_sheet(as_sheet(sheet)), cancel=cancel)

    def stream(self, prompt: str = "", *, timeout_seconds: Optional[float] = None, system: Optional[str] = None,
               messages: Optional[Sequence[Mapping[str, Any]]] = None, **options: Any) -> Stream:
        """Like :meth:`execute`, but yields the answer's text as it arrives: iterate the ``Stream``, use it
        as a context manager (an early exit closes the request), read ``stream.result`` at the end.
        Retries happen only before the first delta. ``timeout_seconds`` bounds the wait for the first
        event and then each wait for the next one (a stall), not the stream's length; the retry
        policy's ``max_elapsed_seconds`` bounds the whole call. ``stream.events()`` yields reasoning,
        text, refusal and tool-call deltas instead of text alone."""
        return self._stream(self._spec(prompt, timeout_seconds, system, messages, options))

    def stream_sheet(self, sheet: Union[Sheet, str], *, cancel: Optional[threading.Event] = None) -> ExecutionResult:
        """Run one sheet streaming (its text reaches its ``output_log_path`` as it arrives); return the result."""
        with self._stream(self.spec_for_sheet(as_sheet(sheet)), cancel) as stream:
            return stream.until_done()

    def spec_for_sheet(self, sheet: Sheet) -> CallSpec:
        """The resolved call for a sheet (backend defaults, then the sheet's own settings)."""
        return req.spec_for_sheet(self._defaults(), sheet)

    def run_spec(self, spec: CallSpec, *, cancel: Optional[threading.Event] = None) -> ExecutionResult:
        """Run a resolved call: key check, attempts under the retry policy, result, logs."""
        key, why = self._key.get()
        if key is None:
            result = unconfigured_result(spec, why)
        else:
            result = self.pipeline.run(spec, key, cancel=cancel).to_result(spec)
        reporting.report(result, spec)
        return result

    def _stream(self, spec: CallSpec, cancel: Optional[threading.Event] = None) -> Stream:
        key, why = self._key.get()
        if key is None:
            result = unconfigured_result(spec, why)
            reporting.report(result, spec)
            return Stream.finished(spec, result)
        return Stream(spec, lambda: self.pipeline.run(spec, key, stream=True, cancel=cancel), reporting.report)

    def _defaults(self) -> Defaults:
        model, temperature, max_tokens = self._state.base(self)
        return Defaults(model, temperature, max_tokens, self.timeout_seconds, self.default_options, self.strict_options)

    def _spec(self, prompt: str, timeout: Optional[float], system: Optional[str],
              messages: Optional[Sequence[Mapping[str, Any]]], options: Mapping[str, Any]) -> CallSpec:
        state = self._state
        with state.lock:  # one consistent view of the reference's mutable state
            defaults = Defaults(self.model, self.temperature, self.max_tokens, self.timeout_seconds,
                                {**self.default_options, **state.options}, self.strict_options)
            preamble, extensions, log_path = state.preamble, state.extensions, state.output_log_path
        built = req.build_messages(prompt, preamble=preamble, extensions=extensions, system=system, messages=messages)
        return req.resolve(defaults, options, built, timeout=timeout, output_log_path=log_path, what="option")

    # ----- other endpoints -----
    def list_models(self, *, free: bool = False) -> list[ModelInfo]:
        """The models ``GET /models`` lists (``free=True``: only free ones). Raises ``OpenRouterError`` on failure."""
        return endpoints.list_models(self.transport, self._key.get()[0], timeout=self.timeout_seconds, free=free)

    def key_info(self) -> KeyInfo:
        """Limits and usage of the key (``GET /key``). Raises an ``OpenRouterError`` when the call fails."""
        return endpoints.key_info(self.transport, *self._key.get(), timeout=self.timeout_seconds)

    def generation(self, generation_id: str) -> GenerationInfo:
        """Stats of one generation (``GET /generation?id=``): cost, tokens, latency. May 404 for a short
        while after the request. Raises an ``OpenRouterError`` when the call fails."""
        return endpoints.generation(self.transport, *self._key.get(), generation_id, timeout=self.timeout_seconds)

    def health_check(self) -> bool:
        """True when ``GET /models`` with the key answers 200; False without a key or on any failure."""
        return endpoints.health_check(self.transport, self._key.get()[0], timeout=self.timeout_seconds)

    def availability_check(self) -> bool:
        """True when a usable API key is configured; sends nothing."""
        return self._key.present

    # ----- lifecycle -----
    def close(self) -> None:
        """Close the connection pool, let go of the process-wide throttles and let redaction forget
        the key (unless another open backend holds them). Safe to call more than once; a later call
        opens a fresh pool and holds the key again."""
        self.transport.close()
        self._throttles.close()
        self._key.release()

    def __enter__(self) -> OpenRouterBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        key = self._key.get()[0]
        key = "set" if key else "not needed" if key == "" else "missing"
        return redact(f"OpenRouterBackend(model={self.model!r}, base_url={self.base_url!r}, "
                      f"api_key_env={self.api_key_env!r}, key={key})")

