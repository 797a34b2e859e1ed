"""Watch a long answer arrive, then read its usage and cost.

    python examples/streaming.py
"""

from __future__ import annotations

import sys

from openrouter_sync.testing import demo_backend


def main() -> None:
    with demo_backend(model="openai/gpt-4o-mini", max_tokens=400) as backend:
        with backend.stream("Tell a short story about a patient HTTP client.", system="Be vivid.") as stream:
            for delta in stream:
                sys.stdout.write(delta)
                sys.stdout.flush()
        result = stream.result
    assert result is not None
    print(f"\n\n[{result.finish_reason}; {result.tokens_used} tokens; cost {result.cost}; ok={result.success}]")


if __name__ == "__main__":
    main()
