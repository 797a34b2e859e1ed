"""``RunSummary``: what a batch did, as data and as text."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Optional

from .result import ExecutionResult


@dataclass
class RunSummary:
    """Counts by outcome, tokens, cost, wall time and the slowest sheets of a run."""

    total: int = 0
    succeeded: int = 0
    failed: int = 0
    from_checkpoint: int = 0
    by_error_type: dict[str, int] = field(default_factory=dict)
    retried: int = 0
    attempts: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    tokens: int = 0
    cost: float = 0.0
    wall_seconds: float = 0.0
    slowest: list[tuple[str, float]] = field(default_factory=list)

    @classmethod
    def from_results(cls, results: Iterable[Optional[ExecutionResult]], wall_seconds: float = 0.0,
                     slowest: int = 5) -> RunSummary:
        summary = cls(wall_seconds=wall_seconds)
        errors: Counter[str] = Counter()
        timed: list[tuple[float, str]] = []
        for index, result in enumerate(results):
            if result is None:
                continue
            summary.total += 1
            summary.from_checkpoint += result.from_checkpoint
            if result.success:
                summary.succeeded += 1
            else:
                summary.failed += 1
                errors[result.error_type or "unknown"] += 1
            summary.attempts += result.attempts
            summary.retried += result.attempts > 1
            summary.input_tokens += result.input_tokens or 0
            summary.output_tokens += result.output_tokens or 0
            summary.tokens += result.tokens_used or 0
            summary.cost += result.cost or 0.0
            timed.append((result.duration_seconds, result.sheet_id or f"#{index}"))
        summary.by_error_type = dict(errors.most_common())
        summary.slowest = [(name, round(seconds, 3)) for seconds, name in sorted(timed, reverse=True)[:slowest]]
        return summary

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        lines = [
            f"{self.total} sheets: {self.succeeded} ok, {self.failed} failed"
            + (f" ({self.from_checkpoint} from checkpoint)" if self.from_checkpoint else "")
            + f" in {self.wall_seconds:.1f}s",
            f"tokens: {self.tokens} ({self.input_tokens} in, {self.output_tokens} out); cost ${self.cost:.6f}; "
            f"{self.attempts} attempts, {self.retried} sheets retried",
        ]
        if self.by_error_type:
            lines.append("failures: " + ", ".join(f"{k} {v}" for k, v in self.by_error_type.items()))
        if self.slowest:
            lines.append("slowest: " + ", ".join(f"{name} {sec:.2f}s" for name, sec in self.slowest))
        return "\n".join(lines)
