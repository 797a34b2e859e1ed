"""A batch of sheets with per-sheet models and settings, run on 8 threads, in input order.

    python examples/batch_sheets.py
"""

from __future__ import annotations

from openrouter_sync import Sheet, run_sheets
from openrouter_sync.testing import demo_backend

SHEETS = [
    "What is a mutex? One sentence.",  # a plain string is a sheet too
    Sheet("Translate 'good morning' to French.", id="translate", overrides={"model": "openai/gpt-4o-mini"}),
    Sheet("List three prime numbers.", id="primes", overrides={"temperature": 0.0, "max_tokens": 50}),
    Sheet("Summarise the plot of Hamlet.", id="hamlet", system="Answer in exactly one sentence.",
          overrides={"model": "meta-llama/llama-3.3-70b-instruct:free"}),
    Sheet("Write a haiku about queues.", id="haiku", preamble="You are a poet.", extensions=["No rhymes."]),
]


def main() -> None:
    with demo_backend(model="openai/gpt-4o-mini", max_tokens=300) as backend:
        results = run_sheets(backend, SHEETS, max_workers=8, progress=True)
    for result in results:
        status = "ok " if result.success else f"ERR {result.error_type}"
        print(f"{status} {result.sheet_id or '(no id)':<24} {result.model:<40} {result.stdout[:60]!r}")
    print(results.summary)


if __name__ == "__main__":
    main()
