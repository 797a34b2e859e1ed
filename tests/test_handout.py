"""A free worker takes a sheet whose scopes are open: a held model does not park the workers."""

from __future__ import annotations

from typing import List, Sequence

from openrouter_sync import OpenRouterBackend, Sheet, run_sheets
from openrouter_sync.handout import Handout
from openrouter_sync.testing import FakeOpenRouter
from openrouter_sync.throttle import Throttle


class _Held(Throttle):
    """A throttle that says one model's scope stays shut."""

    def __init__(self, held: str) -> None:
        super().__init__()
        self.held = held
        self.asked: List[Sequence[str]] = []

    def ready_in(self, scopes: Sequence[str] = ()) -> float:
        self.asked.append(tuple(scopes))
        return 5.0 if f"model:{self.held}" in scopes else 0.0


class _Backend:
    model = "a/default"

    def __init__(self, throttle: Throttle) -> None:
        self.throttle = throttle


def _sheets(models: Sequence[str]) -> List[Sheet]:
    return [Sheet(prompt=f"p{i}", id=f"s{i}", overrides={"model": m}) for i, m in enumerate(models)]


def test_the_first_sheet_whose_model_is_open_is_handed_out() -> None:
    handout: Handout[int] = Handout(_Backend(_Held("slow/x")), lookahead=8)
    for i, sheet in enumerate(_sheets(["slow/x", "slow/x", "fast/y", "slow/x", "fast/y"])):
        handout.add(sheet, i)
    assert [handout.take() for _ in range(5)] == [2, 4, 0, 1, 3]


def test_with_one_model_sheets_go_in_input_order_without_asking_the_throttle() -> None:
    throttle = _Held("slow/x")
    handout: Handout[int] = Handout(_Backend(throttle), lookahead=8)
    for i, sheet in enumerate(_sheets(["slow/x"] * 4)):
        handout.add(sheet, i)
    assert [handout.take() for _ in range(4)] == [0, 1, 2, 3] and throttle.asked == []


def test_when_every_model_is_held_the_one_open_soonest_goes_first() -> None:
    class Soonest(Throttle):
        def ready_in(self, scopes: Sequence[str] = ()) -> float:
            return 1.0 if "model:b/soon" in scopes else 9.0

    handout: Handout[int] = Handout(_Backend(Soonest()), lookahead=8)
    for i, sheet in enumerate(_sheets(["a/late", "b/soon", "a/late"])):
        handout.add(sheet, i)
    assert handout.take() == 1


def test_a_held_model_does_not_hold_up_the_others(fake: FakeOpenRouter, key: str) -> None:
    throttle = Throttle()
    throttle.block(0.8, "model:slow/held")  # as a provider's 429 would shut it
    order: List[str] = []
    sheets = _sheets(["slow/held" if i % 2 else "fast/open" for i in range(20)])
    with OpenRouterBackend(base_url=fake.base_url, api_key=key, throttle=throttle) as backend:
        results = run_sheets(backend, sheets, max_workers=4,
                             on_result=lambda i, r: order.append(str(sheets[i].overrides["model"])))
    assert all(r.success for r in results)
    assert order[:10] == ["fast/open"] * 10  # none of the open model's sheets waited behind the held ones
