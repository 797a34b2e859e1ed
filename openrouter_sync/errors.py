"""Error types (the ``error_type`` strings) and the opt-in exception hierarchy.

Calls never raise for network or API failures; they return a failed ``ExecutionResult``.
Scripts that prefer exceptions call ``result.raise_for_error()``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .result import ExecutionResult

# error_type values, with the HTTP status (or pseudo-status) that produces each.
CONFIGURATION = "configuration"  # no key: exit_code 1, no request made
BAD_REQUEST = "bad_request"  # 400
AUTHENTICATION = "authentication"  # 401
INSUFFICIENT_CREDITS = "insufficient_credits"  # 402
MODERATION = "moderation"  # 403: flagged by a guardrail; the message names the reasons
NOT_FOUND = "not_found"  # 404: unknown model or endpoint
SERVER_TIMEOUT = "server_timeout"  # 408 from the server
PAYLOAD_TOO_LARGE = "payload_too_large"  # 413
UNPROCESSABLE = "unprocessable"  # 422
RATE_LIMIT = "rate_limit"  # 429
API_ERROR = "api_error"  # 500 and other unlisted 5xx
BAD_GATEWAY = "bad_gateway"  # 502: the model or its provider is down or answered badly
SERVICE_UNAVAILABLE = "service_unavailable"  # 503: no provider meets the routing requirements
GATEWAY_TIMEOUT = "gateway_timeout"  # 504, 524
OVERLOADED = "overloaded"  # 529: the provider is overloaded
HTTP_ERROR = "http_error"  # any other unexpected status
PROVIDER_ERROR = "provider_error"  # a 200 that carries an error (top level or finish_reason "error")
INVALID_RESPONSE = "invalid_response"  # a 200 whose body is not JSON or not a completion
TRUNCATED_RESPONSE = "truncated_response"  # the body ended before it was complete
CONNECTION = "connection"  # could not connect, or the connection broke: exit_code 503
TIMEOUT = "timeout"  # the per-call deadline passed: exit_code 408, exit_reason "timeout"
CANCELLED = "cancelled"  # a run was interrupted before this sheet finished

STATUS_ERROR_TYPES: dict[int, str] = {
    400: BAD_REQUEST,
    401: AUTHENTICATION,
    402: INSUFFICIENT_CREDITS,
    403: MODERATION,
    404: NOT_FOUND,
    408: SERVER_TIMEOUT,
    413: PAYLOAD_TOO_LARGE,
    422: UNPROCESSABLE,
    429: RATE_LIMIT,
    500: API_ERROR,
    502: BAD_GATEWAY,
    503: SERVICE_UNAVAILABLE,
    504: GATEWAY_TIMEOUT,
    524: GATEWAY_TIMEOUT,
    529: OVERLOADED,
}


def error_type_for_status(status: int) -> str:
    """The ``error_type`` of an HTTP error status."""
    known = STATUS_ERROR_TYPES.get(status)
    if known is not None:
        return known
    return API_ERROR if status >= 500 else HTTP_ERROR


class OpenRouterError(Exception):
    """A failed call, raised by ``ExecutionResult.raise_for_error()``; ``.result`` holds it."""

    def __init__(self, result: ExecutionResult) -> None:
        super().__init__(f"{result.error_type} (exit {result.exit_code}): {result.error_message}")
        self.result = result


class ConfigurationError(OpenRouterError):
    """The API key is missing (or another local setting is wrong)."""


class AuthenticationError(OpenRouterError):
    """The key was refused (401)."""


class InsufficientCreditsError(OpenRouterError):
    """The account is out of credits (402)."""


class ModerationError(OpenRouterError):
    """The input was flagged by moderation (403)."""


class RateLimitError(OpenRouterError):
    """Rate limited (429) after all retries; ``.result.rate_limit_wait_seconds`` says how long to wait."""


class RequestTimeoutError(OpenRouterError):
    """The call's deadline passed, or the server timed out."""


class ConnectionFailedError(OpenRouterError):
    """The server could not be reached or the connection broke."""


class BadRequestError(OpenRouterError):
    """The request was refused as invalid (400, 404, 413, 422)."""


class ProviderError(OpenRouterError):
    """The server or the model's provider failed (5xx, a 200 carrying an error, a bad body)."""


class CancelledError(OpenRouterError):
    """The sheet was cancelled before it finished."""


_EXCEPTIONS: dict[str, type[OpenRouterError]] = {
    CONFIGURATION: ConfigurationError,
    AUTHENTICATION: AuthenticationError,
    INSUFFICIENT_CREDITS: InsufficientCreditsError,
    MODERATION: ModerationError,
    RATE_LIMIT: RateLimitError,
    TIMEOUT: RequestTimeoutError,
    SERVER_TIMEOUT: RequestTimeoutError,
    GATEWAY_TIMEOUT: RequestTimeoutError,
    CONNECTION: ConnectionFailedError,
    BAD_REQUEST: BadRequestError,
    NOT_FOUND: BadRequestError,
    PAYLOAD_TOO_LARGE: BadRequestError,
    UNPROCESSABLE: BadRequestError,
    CANCELLED: CancelledError,
}


def error_for(result: ExecutionResult) -> OpenRouterError:
    """The exception that matches a failed result's ``error_type``."""
    return _EXCEPTIONS.get(result.error_type or "", ProviderError)(result)
