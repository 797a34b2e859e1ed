"""openrouter-sync: every OpenRouter model one blocking call away; hundreds of prompts at once, none lost.

    from openrouter_sync import OpenRouterBackend
    with OpenRouterBackend(model="openai/gpt-4o-mini") as backend:
        result = backend.execute("Explain quicksort")
        print(result.stdout if result.success else result.error_message)
"""

from .backend import OpenRouterBackend
from .errors import OpenRouterError
from .result import ExecutionResult
from .retry import RetryPolicy
from .runner import RunInterrupted, RunResults, iter_sheets, run_sheets
from .sheet import Sheet
from .summary import RunSummary

__version__ = "0.1.0"

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
