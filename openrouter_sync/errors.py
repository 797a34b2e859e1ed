"""The opt-in exception hierarchy, one class per family of ``ErrorType``.

Calls never raise for network or API failures; they return a failed ``ExecutionResult``.
Scripts that prefer exceptions call ``result.raise_for_error()``.
"""

from __future__ import annotations

from typing import Any

from .error_types import ErrorType


class OpenRouterError(Exception):
    """A failed call, raised by ``ExecutionResult.raise_for_error()``; ``.result`` holds it."""

    def __init__(self, result: Any) -> None:  # an ExecutionResult (not imported: result.py imports this module)
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


class RefusedError(OpenRouterError):
    """The model refused to answer (``message.refusal``); ``.result.refusal`` holds its words."""


class CancelledError(OpenRouterError):
    """The sheet was cancelled before it finished."""


class BudgetExceededError(CancelledError):
    """The sheet was not sent: its run's spending cap (``max_cost``) had been reached."""


_EXCEPTIONS: dict[ErrorType, type[OpenRouterError]] = {
    ErrorType.CONFIGURATION: ConfigurationError,
    ErrorType.AUTHENTICATION: AuthenticationError,
    ErrorType.INSUFFICIENT_CREDITS: InsufficientCreditsError,
    ErrorType.MODERATION: ModerationError,
    ErrorType.RATE_LIMIT: RateLimitError,
    ErrorType.TIMEOUT: RequestTimeoutError,
    ErrorType.SERVER_TIMEOUT: RequestTimeoutError,
    ErrorType.GATEWAY_TIMEOUT: RequestTimeoutError,
    ErrorType.CONNECTION: ConnectionFailedError,
    ErrorType.BAD_REQUEST: BadRequestError,
    ErrorType.NOT_FOUND: BadRequestError,
    ErrorType.PAYLOAD_TOO_LARGE: BadRequestError,
    ErrorType.UNPROCESSABLE: BadRequestError,
    ErrorType.INVALID_SHEET: BadRequestError,
    ErrorType.CANCELLED: CancelledError,
    ErrorType.BUDGET_EXCEEDED: BudgetExceededError,
    ErrorType.REFUSED: RefusedError,
}


def error_for(result: Any) -> OpenRouterError:
    """The exception that matches a failed result's ``error_type`` (``ProviderError`` for the rest)."""
    try:
        kind = ErrorType(result.error_type)
    except ValueError:
        return ProviderError(result)
    return _EXCEPTIONS.get(kind, ProviderError)(result)
