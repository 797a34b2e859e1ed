"""openrouter-sync: every OpenRouter model one blocking call away; hundreds of prompts at once, none lost.

    from openrouter_sync import OpenRouterBackend
    with OpenRouterBackend(model="openai/gpt-4o-mini") as backend:
        result = backend.execute("Explain quicksort")
        print(result.stdout if result.success else result.error_message)
"""

from typing import TYPE_CHECKING, Any

from ._version import __version__
from .backend import OpenRouterBackend
from .error_types import ErrorType
from .errors import OpenRouterError
from .result import ExecutionResult
from .retry import RetryPolicy

if TYPE_CHECKING:
    from .checkpoint import CheckpointError, CheckpointLocked, CheckpointMismatch
    from .endpoints import GenerationInfo, KeyInfo, ModelInfo
    from .errors import (
        AuthenticationError,
        BadRequestError,
        CancelledError,
        ConfigurationError,
        ConnectionFailedError,
        InsufficientCreditsError,
        ModerationError,
        ProviderError,
        RateLimitError,
        RefusedError,
        RequestTimeoutError,
    )
    from .events import StreamEvent
    from .progress import ProgressInfo
    from .request import CallSpec, UnknownOptionWarning
    from .runner import RunAborted, RunInterrupted, RunResults, iter_sheets, run_sheets
    from .sheet import Sheet
    from .summary import RunSummary
    from .throttle import Throttle

_ERRORS = ("AuthenticationError", "BadRequestError", "CancelledError", "ConfigurationError", "ConnectionFailedError",
           "InsufficientCreditsError", "ModerationError", "ProviderError", "RateLimitError", "RefusedError",
           "RequestTimeoutError")

# Imported on first use, so that "import openrouter_sync" costs little more than requests + tenacity.
_LAZY = {"Sheet": "sheet", "run_sheets": "runner", "iter_sheets": "runner", "RunInterrupted": "runner",
         "RunAborted": "runner",
         "RunResults": "runner", "RunSummary": "summary", "ProgressInfo": "progress", "Throttle": "throttle",
         "CallSpec": "request", "UnknownOptionWarning": "request", "StreamEvent": "events",
         "ModelInfo": "endpoints", "KeyInfo": "endpoints", "GenerationInfo": "endpoints",
         "CheckpointError": "checkpoint", "CheckpointLocked": "checkpoint", "CheckpointMismatch": "checkpoint",
         **dict.fromkeys(_ERRORS, "errors")}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None and name.endswith("Error"):
        module = "errors"  # any error class errors.py defines
    if module is None:
        raise AttributeError(f"module 'openrouter_sync' has no attribute {name!r}")
    from importlib import import_module

    try:
        value = getattr(import_module(f".{module}", __name__), name)
    except AttributeError:
        raise AttributeError(f"module 'openrouter_sync' has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "CallSpec",
    "CheckpointError",
    "CheckpointLocked",
    "CheckpointMismatch",
    "ErrorType",
    "ExecutionResult",
    "GenerationInfo",
    "KeyInfo",
    "ModelInfo",
    "OpenRouterBackend",
    "OpenRouterError",
    "ProgressInfo",
    "RetryPolicy",
    "RunAborted",
    "RunInterrupted",
    "RunResults",
    "RunSummary",
    "Sheet",
    "StreamEvent",
    "Throttle",
    "UnknownOptionWarning",
    "iter_sheets",
    "run_sheets",
    "__version__",
    # the exceptions of result.raise_for_error()
    "AuthenticationError",
    "BadRequestError",
    "CancelledError",
    "ConfigurationError",
    "ConnectionFailedError",
    "InsufficientCreditsError",
    "ModerationError",
    "ProviderError",
    "RateLimitError",
    "RefusedError",
    "RequestTimeoutError",
]
