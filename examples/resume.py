"""Resume after an interruption: finished sheets are in the checkpoint and are not sent again.

The first run is interrupted after 5 sheets (as Ctrl-C would); the second run does only the rest.

    python examples/resume.py
"""

from __future__ import annotations

import os
import tempfile

from openrouter_sync import RunInterrupted, Sheet, run_sheets
from openrouter_sync.testing import demo_backend

SHEETS = [Sheet(f"Give me fact number {i} about octopuses.", id=f"fact-{i}") for i in range(20)]


def main() -> None:
    checkpoint = os.path.join(tempfile.mkdtemp(), "facts.jsonl")
    with demo_backend(model="openai/gpt-4o-mini", max_tokens=100) as backend:
        finished = 0

        def stop_after_five(index: int, result: object) -> None:
            nonlocal finished
            finished += 1
            if finished == 5:
                raise KeyboardInterrupt  # what Ctrl-C (or Jupyter's stop button) does

        try:
            run_sheets(backend, SHEETS, max_workers=2, checkpoint=checkpoint, on_result=stop_after_five)
        except RunInterrupted as exc:
            print(f"interrupted: {exc.summary.total} sheets finished and checkpointed")

        results = run_sheets(backend, SHEETS, max_workers=4, checkpoint=checkpoint)
    print(f"second run: {results.summary.from_checkpoint} from the checkpoint, "
          f"{results.summary.total - results.summary.from_checkpoint} sent now, {results.summary.failed} failed")
    assert all(r.success for r in results)


if __name__ == "__main__":
    main()
