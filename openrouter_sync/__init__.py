"""openrouter-sync: every OpenRouter model one blocking call away; hundreds of prompts at once, none lost.

    from openrouter_sync import OpenRouterBackend
    with OpenRouterBackend(model="openai/gpt-4o-mini") as backend:
        result = backend.execute("Explain quicksort")
        print(result.stdout if result.success else result.error_message)
"""

from typing import TYPE_CHECKING, Any

from ._version import __version__
from .backend import OpenRouterBackend
from .errors import OpenRouterError
from .result import ExecutionResult
from .retry import RetryPolicy

if TYPE_CHECKING:
    from .runner import RunInterrupted, RunResults, iter_sheets, run_sheets
    from .sheet import Sheet
    from .summary import RunSummary

# Imported on first use, so that "import openrouter_sync" costs little more than requests + tenacity.
_LAZY = {"Sheet": "sheet", "run_sheets": "runner", "iter_sheets": "runner", "RunInterrupted": "runner",
         "RunResults": "runner", "RunSummary": "summary"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'openrouter_sync' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "ExecutionResult",
    "OpenRouterBackend",
    "OpenRouterError",
    "RetryPolicy",
    "RunInterrupted",
    "RunResults",
    "RunSummary",
    "Sheet",
    "iter_sheets",
    "run_sheets",
    "__version__",
]
