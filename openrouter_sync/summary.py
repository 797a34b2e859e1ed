"""``RunSummary``: what a batch did, as data and as text."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Optional, Sequence

from ._log import redact
from .error_types import ErrorType
from .result import ExecutionResult

#: How many failed / cut sheets the text names (all of them are in the data).
_NAMED = 10


def plural(count: int, noun: str) -> str:
    """``1 sheet``, ``2 sheets``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _reason(result: ExecutionResult) -> str:
    text = (result.error_message or result.stderr or "").strip().splitlines()
    first = text[0] if text else ""
    return redact(first[:120] + ("…" if len(first) > 120 else ""))


@dataclass
class RunSummary:
    """What a run did.

    ``total``/``succeeded``/``failed`` count every finished sheet, ``from_checkpoint`` those
    restored from the checkpoint. Work figures (``sent``, ``attempts``, ``retried``, tokens,
    ``cost``, ``slowest``) count only what this run sent. ``cost`` is None when no answer of this
    run reported one. ``failures`` name each failed sheet ``(label, error_type, reason)``;
    ``truncated`` names the answers cut by the token limit (``finish_reason == "length"``).
    ``tool_call_answers`` counts the successful answers that are tool calls (no text is expected
    of them); ``empty`` names the other successful answers that hold no text at all.
    ``checkpoint_error`` is set when the checkpoint could not be written (it is incomplete).
    ``max_cost`` is the run's spending cap (None: none); ``earlier_cost`` what the checkpoint's
    records say earlier runs of the batch spent (it counts toward the cap, not toward ``cost``);
    ``budget_exceeded`` counts the sheets not sent because the cap was reached.
    """

    total: int = 0
    succeeded: int = 0
    failed: int = 0
    from_checkpoint: int = 0
    by_error_type: dict[str, int] = field(default_factory=dict)
    sent: int = 0
    retried: int = 0
    attempts: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    tokens: int = 0
    cost: Optional[float] = None
    wall_seconds: float = 0.0
    slowest: list[tuple[str, float]] = field(default_factory=list)
    failures: list[tuple[str, str, str]] = field(default_factory=list)
    truncated: list[str] = field(default_factory=list)
    checkpoint_error: Optional[str] = None
    checkpoint_unwritten: int = 0
    max_cost: Optional[float] = None
    earlier_cost: float = 0.0
    budget_exceeded: int = 0
    tool_call_answers: int = 0
    empty: list[str] = field(default_factory=list)

    @classmethod
    def from_results(cls, results: Iterable[Optional[ExecutionResult]], wall_seconds: float = 0.0,
                     slowest: int = 5, labels: Optional[Sequence[str]] = None,
                     checkpoint_error: Optional[str] = None, checkpoint_unwritten: int = 0,
                     max_cost: Optional[float] = None, earlier_cost: float = 0.0) -> RunSummary:
        """Summarise results (None entries: unfinished). ``labels[i]`` names result ``i``
        (default: its sheet id, else ``#i``)."""
        summary = cls(wall_seconds=wall_seconds, checkpoint_error=checkpoint_error,
                      checkpoint_unwritten=checkpoint_unwritten, max_cost=max_cost, earlier_cost=earlier_cost)
        errors: Counter[str] = Counter()
        timed: list[tuple[float, str]] = []
        cost: Optional[float] = None
        for index, result in enumerate(results):
            if result is None:
                continue
            label = labels[index] if labels is not None and index < len(labels) else (result.sheet_id or f"#{index}")
            summary.total += 1
            if result.success:
                summary.succeeded += 1
                if result.finish_reason == "length":
                    summary.truncated.append(label)
                if result.tool_calls:
                    summary.tool_call_answers += 1
                elif not result.stdout.strip():
                    summary.empty.append(label)
            else:
                summary.failed += 1
                errors[str(result.error_type or "unknown")] += 1
                summary.failures.append((label, str(result.error_type or "unknown"), _reason(result)))
            if result.from_checkpoint:
                summary.from_checkpoint += 1
                continue
            summary.sent += 1
            summary.attempts += result.attempts
            summary.retried += result.attempts > 1
            summary.input_tokens += result.input_tokens or 0
            summary.output_tokens += result.output_tokens or 0
            summary.tokens += result.tokens_used or 0
            if result.cost is not None:
                cost = (cost or 0.0) + result.cost
            timed.append((result.duration_seconds, label))
        summary.cost = cost
        summary.by_error_type = dict(errors.most_common())
        summary.budget_exceeded = errors[ErrorType.BUDGET_EXCEEDED.value]
        summary.slowest = [(name, round(seconds, 3)) for seconds, name in sorted(timed, reverse=True)[:slowest]]
        return summary

    @property
    def checkpoint_complete(self) -> bool:
        """False when some finished sheets could not be written to the checkpoint."""
        return self.checkpoint_error is None

    def checkpoint_line(self) -> str:
        """The warning shown when the checkpoint is incomplete (empty when it is complete)."""
        if self.checkpoint_error is None:
            return ""
        return (f"CHECKPOINT INCOMPLETE: {plural(self.checkpoint_unwritten, 'finished sheet')} not recorded "
                f"({self.checkpoint_error}); they will run again on resume")

    def to_dict(self) -> dict[str, Any]:
        """Every field as plain data (for JSON)."""
        return asdict(self)

    def __str__(self) -> str:
        head = f"{plural(self.total, 'sheet')}: {self.succeeded} ok, {self.failed} failed"
        kinds = [f"{plural(self.tool_call_answers, 'tool-call answer')}"] if self.tool_call_answers else []
        if self.empty:
            kinds.append(f"{len(self.empty)} empty")
        if kinds:
            head = head.replace(" ok,", f" ok ({', '.join(kinds)}),", 1)
        if self.from_checkpoint:
            head += f" ({self.from_checkpoint} from checkpoint, {self.sent} sent now)"
        cost = "cost unknown" if self.cost is None else f"cost ${self.cost:.6f}"
        work = (f"tokens {self.tokens} ({self.input_tokens} in, {self.output_tokens} out); {cost}; "
                f"{plural(self.attempts, 'attempt')}, {plural(self.retried, 'sheet')} retried")
        if self.from_checkpoint:
            work = f"this run: {work}" if self.sent else "this run sent nothing"
        lines = [f"{head} in {self.wall_seconds:.1f}s", work]
        if self.by_error_type:
            lines.append("failures: " + ", ".join(f"{k} {v}" for k, v in self.by_error_type.items()))
            listed = [failure for failure in self.failures if failure[1] != ErrorType.BUDGET_EXCEEDED]  # a line below
            named = [f"  {label}: {kind}: {reason}" if reason else f"  {label}: {kind}"
                     for label, kind, reason in listed[:_NAMED]]
            if len(listed) > _NAMED:
                named.append(f"  ... and {len(listed) - _NAMED} more")
            lines.extend(named)
        if self.truncated:
            shown = ", ".join(self.truncated[:_NAMED]) + (" ..." if len(self.truncated) > _NAMED else "")
            lines.append(f"cut by the token limit (finish_reason \"length\"): {plural(len(self.truncated), 'sheet')}: "
                         f"{shown}")
        if self.budget_exceeded:
            cap = "" if self.max_cost is None else f" ${self.max_cost:g}"
            spent = self.earlier_cost + (self.cost or 0.0)
            earlier = f", ${self.earlier_cost:.6f} of it by earlier runs" if self.earlier_cost else ""
            lines.append(f"spending cap{cap} reached (${spent:.6f} spent{earlier}): "
                         f"{plural(self.budget_exceeded, 'sheet')} not sent; a rerun with a higher cap sends them")
        if self.empty:
            shown = ", ".join(self.empty[:_NAMED]) + (" ..." if len(self.empty) > _NAMED else "")
            lines.append(f"empty answers (no text, no tool calls): {shown}")
        if self.slowest:
            lines.append("slowest: " + ", ".join(f"{name} {sec:.2f}s" for name, sec in self.slowest))
        if self.checkpoint_error is not None:
            lines.append(self.checkpoint_line())
        return "\n".join(lines)
