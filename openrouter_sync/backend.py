"""``OpenRouterBackend``: the blocking, thread-safe facade over transport, retries and classification."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence, Union

from . import errors as E
from ._log import logger, redact, register_secret
from ._version import __version__
from .classify import Outcome, classify_response, transport_outcome
from .request import (
    OVERRIDE_KEYS,
    REQUEST_OPTIONS,
    CallSpec,
    build_messages,
    check_max_tokens,
    check_model,
    check_options,
    check_temperature,
    check_timeout,
)
from .result import ExecutionResult, utc_now
from .retry import Activity, CallState, Interrupted, RetryPolicy, compile_policy
from .throttle import Throttle
from .transport import RawResponse, Transport, TransportError

if TYPE_CHECKING:  # imported where used: most programs never stream nor list models
    from .endpoints import GenerationInfo, KeyInfo, ModelInfo
    from .sheet import Sheet
    from .streaming import Stream

DEFAULT_MODEL = "minimax/minimax-m1-80k"
DEFAULT_BASE_URL = "https://openrouter.ai/api/v1"
DEFAULT_APP_URL = "https://github.com/openrouter-sync/openrouter-sync"
DEFAULT_APP_TITLE = "openrouter-sync"


class OpenRouterBackend:
    """Run prompts on OpenRouter (or any OpenAI-compatible endpoint), one blocking call each.

    One backend is safe to share between threads: it owns one pooled ``requests.Session``,
    one compiled retry policy and (shared with every backend for the same endpoint and key)
    one ``Throttle``. Calls never raise for network or API failures: they return a failed
    ``ExecutionResult`` with an ``error_type``.

    Keyword-only extras: ``retry_policy``, ``pool_size`` (connections kept per host; size it to
    your thread count), ``requests_per_minute`` (client-side pacing), ``adaptive_rate`` (learn
    the server's rate from 429s), ``throttle`` (a ``Throttle`` to share with other backends on
    the same account), ``connect_timeout``, ``app_url`` / ``app_title`` (attribution headers),
    ``api_key`` (instead of the environment), ``default_options`` (request options sent with
    every call).

    Every thread using this backend shares its throttle: when one call is told to wait, the
    others wait too. With ``RetryPolicy(max_attempts=1)`` calls do not wait for that shared
    back-off (one call, one request, at once); fixed ``requests_per_minute`` pacing still applies.
    """

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        api_key_env: str = "OPENROUTER_API_KEY",
        max_tokens: int = 16384,
        temperature: float = 0.7,
        timeout_seconds: float = 300.0,
        base_url: str = DEFAULT_BASE_URL,
        *,
        retry_policy: Optional[RetryPolicy] = None,
        pool_size: int = 32,
        requests_per_minute: Optional[float] = None,
        adaptive_rate: bool = True,
        connect_timeout: float = 10.0,
        app_url: str = DEFAULT_APP_URL,
        app_title: str = DEFAULT_APP_TITLE,
        api_key: Optional[str] = None,
        default_options: Optional[Mapping[str, Any]] = None,
        throttle: Optional[Throttle] = None,
    ) -> None:
        check_model(model)
        if not isinstance(api_key_env, str) or not api_key_env.strip():
            raise ValueError("api_key_env must be a non-empty string")
        check_max_tokens(max_tokens)
        check_timeout(timeout_seconds)
        check_temperature(temperature)
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http:// or https:// URL, got {base_url!r}")
        if retry_policy is not None and not isinstance(retry_policy, RetryPolicy):
            raise TypeError(f"retry_policy must be a RetryPolicy, got {type(retry_policy).__name__}")
        if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 1:
            raise ValueError(f"pool_size must be an integer >= 1, got {pool_size!r}")
        check_timeout(connect_timeout, "connect_timeout")
        check_options(default_options or {}, REQUEST_OPTIONS | {"extra_body"})
        if throttle is not None and not isinstance(throttle, Throttle):
            raise TypeError(f"throttle must be a Throttle, got {type(throttle).__name__}")

        self.model = model
        self.api_key_env = api_key_env
        self.max_tokens = max_tokens
        self.temperature = float(temperature)
        self.timeout_seconds = float(timeout_seconds)
        self.base_url = base_url.rstrip("/")
        self.retry_policy = retry_policy if retry_policy is not None else RetryPolicy()  # compiles it
        self.default_options: dict[str, Any] = dict(default_options or {})
        self._app_url, self._app_title = app_url, app_title
        self._working_directory: Optional[Path] = None

        self._explicit_key = api_key
        self._api_key: Optional[str] = api_key or os.environ.get(api_key_env) or None
        register_secret(self._api_key)

        self._override_lock = threading.RLock()
        self._saved: Optional[dict[str, Any]] = None
        self._override_options: dict[str, Any] = {}
        self._preamble: Optional[str] = None
        self._prompt_extensions: list[str] = []
        self._output_log_path: Optional[Path] = None

        self.activity = Activity()  # calls waiting to retry right now
        self._transport = Transport(self.base_url, self._headers(self._api_key), pool_size=pool_size,
                                    connect_timeout=connect_timeout)
        self.throttle: Throttle = throttle if throttle is not None else Throttle(adaptive=adaptive_rate)
        if requests_per_minute is not None:
            self.throttle.set_requests_per_minute(requests_per_minute)

    # ----- configuration -------------------------------------------------------------------

    @classmethod
    def from_config(cls, config: object) -> OpenRouterBackend:
        """A backend from any object with (some of) ``model``, ``timeout_seconds``, ``api_key_env``,
        ``max_tokens``, ``temperature`` (and ``base_url``) attributes, or from a mapping."""

        def read(name: str, default: Any, kind: Union[type, tuple[type, ...]]) -> Any:
            value = config.get(name) if isinstance(config, Mapping) else getattr(config, name, None)
            return value if isinstance(value, kind) and not isinstance(value, bool) else default

        return cls(
            model=read("model", DEFAULT_MODEL, str) or DEFAULT_MODEL,
            api_key_env=read("api_key_env", "OPENROUTER_API_KEY", str),
            max_tokens=read("max_tokens", 16384, int),
            temperature=read("temperature", 0.7, (int, float)),
            timeout_seconds=read("timeout_seconds", 300.0, (int, float)),
            base_url=read("base_url", DEFAULT_BASE_URL, str),
        )

    @property
    def name(self) -> str:
        return f"openrouter:{self.model}"

    @property
    def working_directory(self) -> Optional[Path]:
        return self._working_directory

    @working_directory.setter
    def working_directory(self, value: Union[str, Path, None]) -> None:
        self._working_directory = None if value is None else Path(value)

    @property
    def override_lock(self) -> threading.RLock:
        """The lock that guards the per-sheet override lifecycle (one per backend)."""
        return self._override_lock  # type: ignore[return-value]

    @property
    def retry_policy(self) -> RetryPolicy:
        """The policy every call follows; assign a new one at any time."""
        return self._retry_policy

    @retry_policy.setter
    def retry_policy(self, policy: RetryPolicy) -> None:
        if not isinstance(policy, RetryPolicy):
            raise TypeError(f"retry_policy must be a RetryPolicy, got {type(policy).__name__}")
        self._retrying = compile_policy(policy)
        self._retry_policy = policy

    @property
    def transport(self) -> Transport:
        return self._transport

    def _headers(self, key: Optional[str]) -> dict[str, str]:
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "HTTP-Referer": self._app_url,
            "X-Title": self._app_title,
            "X-OpenRouter-Title": self._app_title,
            "User-Agent": f"openrouter-sync/{__version__}",
        }
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _key(self) -> Optional[str]:
        """The API key; read again from the environment if it was missing at construction."""
        key = self._api_key
        if key is None and self._explicit_key is None:
            key = os.environ.get(self.api_key_env) or None
            if key is not None:
                register_secret(key)
                with self._override_lock:
                    if self._api_key is None:
                        self._api_key = key
                        self._transport = Transport(self.base_url, self._headers(key),
                                                    pool_size=self._transport.pool_size,
                                                    connect_timeout=self._transport.connect_timeout)
        return key

    # ----- the reference's per-sheet state -------------------------------------------------

    def apply_overrides(self, overrides: Mapping[str, Any]) -> None:
        """Apply per-sheet overrides (``model``, ``temperature``, ``max_tokens``, request options)
        until :meth:`clear_overrides`. ``{}`` is a no-op. Prefer :meth:`execute_sheet` under threads."""
        if not overrides:
            return
        check_options(overrides, OVERRIDE_KEYS, "override")
        # Coerced as the reference does (str / float / int), then checked.
        model = check_model(str(overrides["model"])) if "model" in overrides else None
        temperature = check_temperature(_coerce(overrides["temperature"], float, "temperature")) \
            if "temperature" in overrides else None
        max_tokens = check_max_tokens(_coerce(overrides["max_tokens"], int, "max_tokens")) \
            if "max_tokens" in overrides else None
        with self._override_lock:
            if self._saved is None:
                self._saved = {"model": self.model, "temperature": self.temperature, "max_tokens": self.max_tokens}
            if model is not None:
                self.model = model
            if temperature is not None:
                self.temperature = temperature
            if max_tokens is not None:
                self.max_tokens = max_tokens
            self._override_options = {k: v for k, v in overrides.items()
                                      if k not in ("model", "temperature", "max_tokens")}

    def clear_overrides(self) -> None:
        """Restore what :meth:`apply_overrides` changed; a no-op when nothing was applied."""
        with self._override_lock:
            if self._saved is None:
                return
            self.model = self._saved["model"]
            self.temperature = self._saved["temperature"]
            self.max_tokens = self._saved["max_tokens"]
            self._saved = None
            self._override_options = {}

    def set_preamble(self, preamble: Optional[str]) -> None:
        """Text put before the prompt of the following calls (None to remove)."""
        if preamble is not None and not isinstance(preamble, str):
            raise TypeError(f"preamble must be a string or None, got {type(preamble).__name__}")
        self._preamble = preamble

    def set_prompt_extensions(self, extensions: Sequence[str]) -> None:
        """Texts put after the prompt of the following calls; blank entries are dropped."""
        if isinstance(extensions, str):
            raise TypeError("extensions must be a list of strings, not a string")
        self._prompt_extensions = [e for e in extensions if e and e.strip()]

    def set_output_log_path(self, path: Optional[Path]) -> None:
        """Base path for output logs: ``<base>.stdout.log`` and ``<base>.stderr.log`` (None: off)."""
        self._output_log_path = None if path is None else Path(path)

    # ----- calls ---------------------------------------------------------------------------

    def execute(self, prompt: str = "", *, timeout_seconds: Optional[float] = None,
                system: Optional[str] = None, messages: Optional[Sequence[Mapping[str, Any]]] = None,
                **options: Any) -> ExecutionResult:
        """Send a prompt (with the backend's current overrides, preamble and extensions); block
        until the answer, retrying per the policy. ``timeout_seconds`` bounds each attempt.
        Extra keyword arguments are request options (``provider=``, ``response_format=``, ...)."""
        spec = self._spec_from_state(prompt, timeout_seconds, system, messages, options)
        return self.run_spec(spec)

    def execute_sheet(self, sheet: Union[Sheet, str], *, cancel: Optional[threading.Event] = None) -> ExecutionResult:
        """Run one sheet. Everything per-sheet comes from the sheet, nothing from the backend's
        mutable state, so many threads may call this at once with different sheets."""
        from .sheet import Sheet

        if isinstance(sheet, str):
            sheet = Sheet(prompt=sheet)
        elif not isinstance(sheet, Sheet):
            raise TypeError(f"execute_sheet takes a Sheet or a str, got {type(sheet).__name__}")
        return self.run_spec(self.spec_for_sheet(sheet), cancel=cancel)

    def stream(self, prompt: str = "", *, timeout_seconds: Optional[float] = None, system: Optional[str] = None,
               messages: Optional[Sequence[Mapping[str, Any]]] = None, **options: Any) -> Stream:
        """Like :meth:`execute`, but yields the answer's text as it arrives.

        Returns a ``Stream``: iterate it for text deltas; use it as a context manager so an early
        exit closes the request; read ``stream.result`` once it has ended. Retries happen only
        before the first token. With an output log path set, text is appended to
        ``<base>.stdout.log`` as it arrives."""
        from .streaming import Stream

        spec = self._spec_from_state(prompt, timeout_seconds, system, messages, options)
        return Stream(self, spec)

    def stream_sheet(self, sheet: Union[Sheet, str], *, cancel: Optional[threading.Event] = None) -> ExecutionResult:
        """Run one sheet streaming (its text reaches its ``output_log_path`` as it arrives); return the result."""
        from .sheet import Sheet
        from .streaming import Stream

        if isinstance(sheet, str):
            sheet = Sheet(prompt=sheet)
        with Stream(self, self.spec_for_sheet(sheet), cancel) as stream:
            return stream.until_done()

    # ----- other endpoints -----------------------------------------------------------------

    def _get(self, path: str, params: Optional[Mapping[str, str]] = None, auth: bool = True) -> Any:
        key = self._key()
        if auth and not key:
            message = f"API key not found in environment variable: {self.api_key_env}"
            raise E.ConfigurationError(ExecutionResult(False, "", message, 0.0, exit_code=1,
                                                       error_type=E.CONFIGURATION, error_message=message))
        started_at, start = utc_now(), time.monotonic()
        timeout = min(30.0, self.timeout_seconds)
        try:
            raw = self._transport.request("GET", path, params=params, timeout=timeout)
        except TransportError as exc:
            outcome = transport_outcome(exc.error_type, str(exc), timeout)
        else:
            if raw.status == 200:
                try:
                    return json.loads(raw.content).get("data")
                except (ValueError, AttributeError):
                    outcome = Outcome(E.INVALID_RESPONSE, 502, f"GET {path}: the answer is not the expected JSON", 200)
            else:
                outcome = classify_response(raw.status, raw.headers, raw.content)
        result = outcome.to_result(requested_model=self.model, duration=time.monotonic() - start,
                                   started_at=started_at)
        raise E.error_for(result)

    def list_models(self, *, free: bool = False) -> list[ModelInfo]:
        """The models ``GET /models`` lists (``free=True``: only those that cost nothing).
        Raises an ``OpenRouterError`` when the call fails."""
        from .endpoints import ModelInfo

        models = [ModelInfo.from_api(item) for item in self._get("/models", auth=False) or []
                  if isinstance(item, dict)]
        return [m for m in models if m.is_free] if free else models

    def key_info(self) -> KeyInfo:
        """Limits and usage of the key (``GET /key``). Raises an ``OpenRouterError`` when the call fails."""
        from .endpoints import KeyInfo

        return KeyInfo.from_api(self._get("/key") or {})

    def generation(self, generation_id: str) -> GenerationInfo:
        """Stats of one generation (``GET /generation?id=``): cost, tokens, latency. May 404 for a
        short while after the request. Raises an ``OpenRouterError`` when the call fails."""
        if not isinstance(generation_id, str) or not generation_id:
            raise ValueError("generation_id must be a non-empty string")
        from .endpoints import GenerationInfo

        return GenerationInfo.from_api(self._get("/generation", params={"id": generation_id}) or {})

    def _base_settings(self) -> tuple[str, float, int]:
        saved = self._saved
        if saved is not None:
            return saved["model"], saved["temperature"], saved["max_tokens"]
        return self.model, self.temperature, self.max_tokens

    def spec_for_sheet(self, sheet: Sheet) -> CallSpec:
        """The resolved call for a sheet (backend defaults, then the sheet's own settings)."""
        model, temperature, max_tokens = self._base_settings()
        overrides = sheet.overrides
        options = dict(self.default_options)
        if overrides:
            model = check_model(overrides.get("model", model))
            temperature = check_temperature(overrides.get("temperature", temperature))
            max_tokens = check_max_tokens(overrides.get("max_tokens", max_tokens))
            options.update({k: v for k, v in overrides.items() if k not in ("model", "temperature", "max_tokens")})
        messages = build_messages(sheet.prompt, preamble=sheet.preamble, extensions=sheet.extensions,
                                  system=sheet.system, messages=sheet.messages)
        return CallSpec(model, temperature, max_tokens, sheet.timeout_seconds or self.timeout_seconds,
                        messages, options, sheet.output_log_path, sheet.id)

    def _spec_from_state(self, prompt: str, timeout_seconds: Optional[float], system: Optional[str],
                         messages: Optional[Sequence[Mapping[str, Any]]], options: Mapping[str, Any]) -> CallSpec:
        check_options(options, REQUEST_OPTIONS | {"extra_body"})
        timeout = self.timeout_seconds if timeout_seconds is None else check_timeout(timeout_seconds)
        with self._override_lock:
            model, temperature, max_tokens = self.model, self.temperature, self.max_tokens
            merged = dict(self.default_options)
            merged.update(self._override_options)
            preamble, extensions, log_path = self._preamble, self._prompt_extensions, self._output_log_path
        merged.update(options)
        built = build_messages(prompt, preamble=preamble, extensions=extensions, system=system, messages=messages)
        return CallSpec(model, temperature, max_tokens, timeout, built, merged, log_path)

    def run_spec(self, spec: CallSpec, *, cancel: Optional[threading.Event] = None) -> ExecutionResult:
        """Run a resolved call: key check, attempts under the retry policy, result, logs."""
        started_at = utc_now()
        start = time.monotonic()
        key = self._key()
        if not key:
            message = (f"API key not found in environment variable: {self.api_key_env}. "
                       f"Set it with: export {self.api_key_env}=your-key")
            logger.error("configuration error: %s is not set; no request sent", self.api_key_env)
            _write_log(spec.stderr_log, message)
            return ExecutionResult(success=False, stdout="", stderr=message, duration_seconds=time.monotonic() - start,
                                   exit_code=1, started_at=started_at, error_type=E.CONFIGURATION,
                                   error_message=message, model=spec.model, sheet_id=spec.sheet_id)
        state = CallState(cancel, self.activity)
        body = spec.body()
        outcome = self._attempt(state, body, spec.timeout)
        attempts = 1
        if not outcome.ok and self.retry_policy.max_attempts > 1 and self.retry_policy.is_retryable(outcome):
            # Only now bring in tenacity (most calls succeed first time): it is handed the first
            # outcome as its attempt 1, then runs the rest under the policy.
            outcome = self._retrying(_replay_first(outcome, self._attempt), state, body, spec.timeout)
            attempts = self._retrying.statistics.get("attempt_number", 1)
        duration = time.monotonic() - start
        result = outcome.to_result(requested_model=spec.model, duration=duration, started_at=started_at,
                                   attempts=attempts, waited=state.waited)
        if state.give_up_wait is not None and result.rate_limited:
            result.rate_limit_wait_seconds = state.give_up_wait
        result.sheet_id = spec.sheet_id
        self._report(result, spec)
        return result

    def _attempt(self, state: CallState, body: bytes, timeout: float) -> Outcome:
        sent = self._send(state, body, timeout)
        if isinstance(sent, Outcome):
            return sent
        raw, ticket = sent
        outcome = classify_response(raw.status, raw.headers, raw.content)
        self._observe(outcome, ticket)
        return outcome

    def _send(self, state: CallState, body: bytes, timeout: float, *, stream: bool = False,
              extra_headers: Optional[Mapping[str, str]] = None) -> Union[Outcome, tuple[RawResponse, float]]:
        """Wait for the throttle, then POST a completion: the answer with its throttle ticket, or the
        ``Outcome`` of an attempt that got no answer (not sent, timed out, connection failed)."""
        throttle = self.throttle
        policy = self.retry_policy
        ticket, waited = throttle.acquire(state.sleep, policy.max_wait_seconds, gate=policy.max_attempts > 1)
        state.waited += waited
        if ticket is None:
            return Outcome(E.RATE_LIMIT, 429, f"HTTP 429 (rate_limit): not sent: every request to this endpoint "
                                              f"must wait {waited:.1f}s more", retry_after=waited,
                           retry_source="shared back-off")
        try:
            raw = self._transport.request("POST", "/chat/completions", body=body, timeout=timeout, stream=stream,
                                          tag=state.cancel, extra_headers=extra_headers)
        except TransportError as exc:
            throttle.on_answer(ticket)
            if state.cancel is not None and state.cancel.is_set():
                raise Interrupted() from None
            return transport_outcome(exc.error_type, str(exc), timeout)
        return raw, ticket

    def _observe(self, outcome: Outcome, ticket: Optional[float]) -> None:
        """Tell the throttle what an answer said."""
        if outcome.status == 429:
            self.throttle.on_rate_limited(ticket, outcome.retry_after)
        else:
            self.throttle.on_answer(ticket)
            if outcome.retry_after and self.retry_policy.is_retryable(outcome):
                self.throttle.block(outcome.retry_after)

    def _report(self, result: ExecutionResult, spec: CallSpec, stdout_logged: bool = False) -> None:
        if result.success:
            if not stdout_logged:
                _write_log(spec.stdout_log, result.stdout)
            if logger.isEnabledFor(logging.INFO):
                logger.info("ok %s in %.2fs: %s tokens, $%s, %d attempt(s)", result.model, result.duration_seconds,
                            result.tokens_used, "?" if result.cost is None else f"{result.cost:.6f}", result.attempts)
        else:
            _write_log(spec.stderr_log, result.stderr)
            logger.warning("failed %s in %.2fs after %d attempt(s): %s", spec.model, result.duration_seconds,
                           result.attempts, result.error_message)

    # ----- checks and lifecycle ------------------------------------------------------------

    def health_check(self) -> bool:
        """True when ``GET /models`` with the key answers 200; False without a key or on any failure."""
        key = self._key()
        if not key:
            logger.warning("health check failed: no API key (set %s)", self.api_key_env)
            return False
        try:
            raw = self._transport.request("GET", "/models", timeout=min(10.0, self.timeout_seconds))
        except TransportError as exc:
            logger.warning("health check failed: %s", exc)
            return False
        if raw.status != 200:
            logger.warning("health check failed: HTTP %d", raw.status)
        return raw.status == 200

    def availability_check(self) -> bool:
        """True when an API key is configured; sends nothing."""
        return bool(self._key())

    def close(self) -> None:
        """Close the connection pool. Safe to call more than once; a later call opens a fresh pool."""
        self._transport.close()

    def __enter__(self) -> OpenRouterBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        key = "set" if self._api_key else "missing"
        return redact(f"OpenRouterBackend(model={self.model!r}, base_url={self.base_url!r}, "
                      f"api_key_env={self.api_key_env!r}, key={key})")


def _coerce(value: Any, kind: type, name: str) -> Any:
    """``float("0.5")`` / ``int("100")`` as the reference's apply_overrides does; a clear error otherwise."""
    if isinstance(value, str):
        try:
            return kind(value)
        except ValueError:
            raise ValueError(f"{name} must be a number, got {value!r}") from None
    return value


def _replay_first(first: Outcome, attempt: Any) -> Any:
    """An attempt function whose first call returns ``first`` (already obtained) and whose
    later calls make real attempts."""
    pending = [first]

    def replay(state: CallState, body: bytes, timeout: float) -> Outcome:
        return pending.pop() if pending else attempt(state, body, timeout)  # type: ignore[no-any-return]

    return replay


def _write_log(path: Optional[Path], text: str) -> None:
    """Append to an output log file, creating its folder; a log that cannot be written is reported, not raised."""
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(redact(text))
    except OSError as exc:
        logger.warning("could not write output log %s: %s", path, exc)
