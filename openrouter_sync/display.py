"""HTML views for Jupyter: one result, or a run's results as a compact table.

A leaf module: it reads results and summaries by attribute and imports neither (``result.py``
imports it for ``_repr_html_``), so there is no import cycle.
"""

from __future__ import annotations

import html
from typing import Any, Iterable, Optional

from ._log import redact

_PREVIEW = 80


def _row(index: Optional[int], result: Any) -> str:
    if not result.success:
        status, colour = f"{result.error_type} ({result.exit_code})", "#c62828"
    elif result.finish_reason == "length":  # an answer cut by the token limit: usable, but say so
        status, colour = "ok, cut at max_tokens", "#ef6c00"
    else:
        status, colour = "ok", "#2e7d32"
    if result.from_checkpoint:
        status += " (checkpoint)"
    text = result.stdout if result.success else (result.error_message or result.stderr)
    preview = text[:_PREVIEW] + ("…" if len(text) > _PREVIEW else "")
    cost = "" if result.cost is None else f"${result.cost:.6f}"
    cells = [
        "" if index is None else str(index),
        html.escape(result.sheet_id or ""),
        f'<span style="color:{colour}">{html.escape(status)}</span>',
        html.escape(result.model or ""),
        str(result.tokens_used if result.tokens_used is not None else ""),
        cost,
        f"{result.duration_seconds:.2f}s",
        html.escape(preview),
    ]
    return "<tr>" + "".join(f"<td style='text-align:left'>{c}</td>" for c in cells) + "</tr>"


_HEAD = ("<tr>" + "".join(f"<th style='text-align:left'>{h}</th>" for h in
                          ("#", "sheet", "status", "model", "tokens", "cost", "time", "answer")) + "</tr>")


def result_html(result: Any) -> str:
    return redact(f"<table>{_HEAD}{_row(None, result)}</table>")


def results_html(results: Iterable[Any], summary: Optional[object] = None,
                 limit: int = 200) -> str:
    rows = []
    for index, result in enumerate(results):
        if index >= limit:
            rows.append(f"<tr><td colspan='8'>… {index} of more rows shown</td></tr>")
            break
        if result is not None:
            rows.append(_row(index, result))
    caption = ""
    if summary is not None:
        caption = f"<caption style='text-align:left'>{html.escape(str(summary).splitlines()[0])}</caption>"
    return redact(f"<table>{caption}{_HEAD}{''.join(rows)}</table>")
