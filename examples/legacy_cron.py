"""Dropping the library into an old synchronous codebase: a cron-style job.

No event loop, no framework: a function that takes rows and returns rows. Failures come back as
values, so one bad row never takes the job down; rate limits are waited out politely.

    python examples/legacy_cron.py
"""

from __future__ import annotations

import logging

from openrouter_sync import RetryPolicy, Sheet, run_sheets
from openrouter_sync.testing import demo_backend

logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")

TICKETS = [
    {"id": 101, "text": "My invoice shows the wrong amount."},
    {"id": 102, "text": "The app crashes when I upload a photo."},
    {"id": 103, "text": "How do I reset my password?"},
]


def classify_tickets(backend: object, tickets: list[dict]) -> list[dict]:
    sheets = [Sheet(t["text"], id=f"ticket-{t['id']}", system="Classify as billing, bug or account. One word.")
              for t in tickets]
    results = run_sheets(backend, sheets, max_workers=4)
    return [{"id": t["id"], "label": r.stdout.strip() if r.success else None,
             "error": None if r.success else r.error_type} for t, r in zip(tickets, results)]


def main() -> None:
    policy = RetryPolicy(max_attempts=5, max_wait_seconds=60)  # a nightly job can afford to wait a minute
    with demo_backend(model="openai/gpt-4o-mini", max_tokens=5, retry_policy=policy,
                      requests_per_minute=120) as backend:
        for row in classify_tickets(backend, TICKETS):
            print(row)


if __name__ == "__main__":
    main()
