"""``ErrorType``: the names of every way a call can fail (the ``error_type`` of a failed result).

A ``str`` enum: each member equals its plain string (``ErrorType.RATE_LIMIT == "rate_limit"``),
serialises to JSON as that string and prints as it, so results stay easy to compare and store.
This module imports nothing from the package: every other module may depend on it.
"""

from __future__ import annotations

from enum import Enum


class ErrorType(str, Enum):
    """Why a call failed. The HTTP status (or pseudo-status) that produces each is in the comment."""

    CONFIGURATION = "configuration"  # no usable key: exit_code 1, no request made
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
    REDIRECT = "redirect"  # 3xx: redirects are never followed (the key must not travel elsewhere)
    HTTP_ERROR = "http_error"  # any other unexpected status
    REFUSED = "refused"  # a 200 whose answer is a refusal (message.refusal): not retried; the text is in error_message
    PROVIDER_ERROR = "provider_error"  # a 200 that carries an error (top level, finish_reason "error", mid-stream)
    INVALID_RESPONSE = "invalid_response"  # a 200 whose body is not JSON, not a completion, or badly encoded
    TRUNCATED_RESPONSE = "truncated_response"  # the body ended before it was complete
    RESPONSE_TOO_LARGE = "response_too_large"  # the body passed max_response_bytes (after decoding)
    CONNECTION = "connection"  # could not connect, or the connection broke: exit_code 503
    TIMEOUT = "timeout"  # the per-attempt deadline passed: exit_code 408, exit_reason "timeout"
    CANCELLED = "cancelled"  # a run was interrupted before this sheet finished
    BUDGET_EXCEEDED = "budget_exceeded"  # not sent: the run's spending cap (max_cost) was reached
    INVALID_SHEET = "invalid_sheet"  # a sheet whose settings are invalid (run_sheets goes on)
    INTERNAL_ERROR = "internal_error"  # a bug raised inside one sheet (run_sheets goes on)

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    def __repr__(self) -> str:
        return repr(self.value)


STATUS_ERROR_TYPES: dict[int, ErrorType] = {
    400: ErrorType.BAD_REQUEST,
    401: ErrorType.AUTHENTICATION,
    402: ErrorType.INSUFFICIENT_CREDITS,
    403: ErrorType.MODERATION,
    404: ErrorType.NOT_FOUND,
    408: ErrorType.SERVER_TIMEOUT,
    413: ErrorType.PAYLOAD_TOO_LARGE,
    422: ErrorType.UNPROCESSABLE,
    429: ErrorType.RATE_LIMIT,
    500: ErrorType.API_ERROR,
    502: ErrorType.BAD_GATEWAY,
    503: ErrorType.SERVICE_UNAVAILABLE,
    504: ErrorType.GATEWAY_TIMEOUT,
    524: ErrorType.GATEWAY_TIMEOUT,
    529: ErrorType.OVERLOADED,
}


def error_type_for_status(status: int) -> ErrorType:
    """The ``ErrorType`` of an HTTP status that is not a success."""
    known = STATUS_ERROR_TYPES.get(status)
    if known is not None:
        return known
    if 300 <= status < 400:
        return ErrorType.REDIRECT
    return ErrorType.API_ERROR if status >= 500 else ErrorType.HTTP_ERROR

