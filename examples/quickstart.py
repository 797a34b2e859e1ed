"""One blocking call. Offline on the built-in fake server without a key; on OpenRouter with OPENROUTER_API_KEY.

    python examples/quickstart.py ["your prompt"]
"""

from __future__ import annotations

import contextlib
import os
import sys

from openrouter_sync import OpenRouterBackend
from openrouter_sync.testing import FakeOpenRouter


def main() -> int:
    prompt = " ".join(sys.argv[1:]) or "In one sentence, why do HTTP clients pool connections?"
    online = bool(os.environ.get("OPENROUTER_API_KEY"))
    with contextlib.ExitStack() as stack:
        if online:
            backend = stack.enter_context(OpenRouterBackend(model="openai/gpt-4o-mini", max_tokens=200))
            print("Using OpenRouter (OPENROUTER_API_KEY is set).")
        else:
            fake = stack.enter_context(FakeOpenRouter())
            backend = stack.enter_context(
                OpenRouterBackend(model="openai/gpt-4o-mini", base_url=fake.base_url, api_key="offline-demo-key")
            )
            print(f"No OPENROUTER_API_KEY: using the built-in offline fake server at {fake.base_url}.")
            print("Its answers are deterministic fakes, not a model's.")
        result = backend.execute(prompt)
    if not result.success:
        print(f"failed: {result.error_type} (exit {result.exit_code}): {result.error_message}", file=sys.stderr)
        return 1
    print(f"\n{result.stdout}\n")
    cost = "unknown" if result.cost is None else f"${result.cost:.6f}"
    print(f"model {result.model}, {result.tokens_used} tokens, cost {cost}, {result.duration_seconds:.2f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
