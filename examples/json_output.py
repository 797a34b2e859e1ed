"""Structured output: ask for JSON that follows a schema and get it parsed.

    python examples/json_output.py
"""

from __future__ import annotations

from openrouter_sync.testing import demo_backend

SCHEMA = {
    "type": "json_schema",
    "json_schema": {
        "name": "answer",
        "strict": True,
        "schema": {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]},
    },
}


def main() -> None:
    with demo_backend(model="openai/gpt-4o-mini", max_tokens=200) as backend:
        result = backend.execute("What is the capital of France? Reply as JSON.", response_format=SCHEMA)
    data = result.raise_for_error().json()  # raises a clear error if the call failed or the JSON is invalid
    print(data["answer"])


if __name__ == "__main__":
    main()
