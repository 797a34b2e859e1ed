"""Which waiting sheet a free worker takes next: the first, in input order, whose scopes are open.

A sheet for a model the server holds back (its gate shut, or its requests paced) would park a
worker inside the throttle while sheets for other models could run. The runner keeps a bounded
look-ahead of sheets here and hands out the first that could go now by the backend's throttle
(``Throttle.ready_in``), else the one that could go soonest. With one model there is nothing to
choose: sheets go in input order.
"""

from __future__ import annotations

from collections import Counter, deque
from typing import Any, Deque, Dict, Generic, Optional, TypeVar

from .call import scopes_for
from .sheet import Sheet
from .throttle import Throttle

__all__ = ["Handout"]

Item = TypeVar("Item")


class Handout(Generic[Item]):
    """Sheets waiting for a worker (each with what the runner keeps of it), up to ``lookahead``."""

    def __init__(self, backend: Any, lookahead: int) -> None:
        self._backend = backend
        self.lookahead = lookahead
        self._waiting: Deque[tuple[str, Item]] = deque()
        self._models: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._waiting)

    @property
    def full(self) -> bool:
        return len(self._waiting) >= self.lookahead

    def add(self, sheet: Sheet, item: Item) -> None:
        model = str((sheet.overrides or {}).get("model") or getattr(self._backend, "model", ""))
        self._waiting.append((model, item))
        self._models[model] += 1

    def take(self) -> Item:
        """The next sheet to hand out (raises ``IndexError`` when none waits)."""
        throttle = getattr(self._backend, "throttle", None) if len(self._models) > 1 else None
        index = 0
        if isinstance(throttle, Throttle):
            waits: Dict[str, float] = {}
            soonest: Optional[float] = None
            for at, (model, _) in enumerate(self._waiting):
                wait = waits.get(model)
                if wait is None:
                    wait = waits[model] = throttle.ready_in(scopes_for(model))
                if wait <= 0.0:
                    index = at
                    break
                if soonest is None or wait < soonest:
                    index, soonest = at, wait
                if len(waits) == len(self._models):
                    break  # every model seen, none open: the soonest so far is the answer
        model, item = self._waiting[index]
        del self._waiting[index]
        self._models[model] -= 1
        if not self._models[model]:
            del self._models[model]
        return item
