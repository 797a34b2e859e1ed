"""SettingsMemo: a run resolves a sheet's settings once per combination of the backend's defaults and
the sheet's overrides, and gives exactly what settings_for gives, whatever changed in between."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest

from openrouter_sync import CheckpointMismatch, ExecutionResult, OpenRouterBackend, Sheet, iter_sheets, run_sheets
from openrouter_sync.checkpoint import Checkpoint, SettingsMemo, endpoint_of, settings_for
from openrouter_sync.request import CallSpec

MODEL = "openai/gpt-4o-mini"
ENDPOINT = "http://127.0.0.1:9/api/v1"  # no server: nothing here may be sent


@pytest.fixture
def backend() -> Any:
    with OpenRouterBackend(model=MODEL, base_url=ENDPOINT, api_key="k" * 40) as made:
        yield made


def _same(memo: SettingsMemo, backend: Any, sheet: Sheet) -> Any:
    got = memo(sheet)
    want = settings_for(backend, sheet, ENDPOINT)
    assert got == want and repr(got) == repr(want), (got, want)  # repr: 1, 1.0 and True are told apart
    return got


def test_the_memo_gives_what_settings_for_gives_after_every_change(backend: Any) -> None:
    memo = SettingsMemo(backend, ENDPOINT)
    sheet = Sheet("q", id="a")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an unknown option below warns
        first = _same(memo, backend, sheet)
        assert _same(memo, backend, Sheet("other", id="b")) is first  # remembered, not resolved again
        backend.temperature = 0.2
        assert _same(memo, backend, sheet)["temperature"] == 0.2
        backend.model = "other/model"
        backend.max_tokens = 100
        assert _same(memo, backend, sheet)["model"] == "other/model"
        backend.default_options["seed"] = 1  # changed in place, not replaced
        assert _same(memo, backend, sheet)["options"] == {"seed": 1}
        backend.default_options["seed"] = True
        assert _same(memo, backend, sheet)["options"] == {"seed": True}
        backend.default_options.clear()
        backend.strict_options = True
        _same(memo, backend, sheet)
        backend.strict_options = False
        backend.apply_overrides({"model": "applied/model", "temperature": 0.9})
        _same(memo, backend, sheet)
        backend.clear_overrides()
        for overrides in ({"temperature": 1}, {"temperature": 1.0}, {"max_tokens": 7}, {"seed": 1}, {"seed": 1.0},
                          {"provider": {"order": ["a", "b"]}}, {"provider": {"order": ("a", "b")}},
                          {"unknown_option_xyz": 1}, {"extra_headers": {"X-A": "1"}}):
            _same(memo, backend, Sheet("q", id="c", overrides=overrides))
            _same(memo, backend, Sheet("q", id="c", overrides=overrides))


def test_a_sheet_whose_own_content_is_invalid_has_no_settings_even_when_remembered(backend: Any) -> None:
    memo = SettingsMemo(backend, ENDPOINT)
    assert memo(Sheet("q", id="a")) is not None
    for change in ({"system": 123}, {"timeout_seconds": -1}, {"prompt": ""}, {"messages": "not a list"}):
        sheet = Sheet("q", id="b")
        for name, value in change.items():
            setattr(sheet, name, value)  # after construction: only a call's own checks find it
        assert settings_for(backend, sheet, ENDPOINT) is None
        assert memo(sheet) is None, change


def test_overrides_that_are_invalid_are_never_remembered_as_valid(backend: Any) -> None:
    memo = SettingsMemo(backend, ENDPOINT)
    valid = Sheet("q", id="a", overrides={"temperature": 0.5})
    assert memo(valid) is not None
    broken = Sheet("q", id="b", overrides={"temperature": 0.5})
    broken.overrides = {"temperature": 0.5, 7: "x"}  # a name that is not a string: refused by a call
    assert settings_for(backend, broken, ENDPOINT) is None and memo(broken) is None
    nan = Sheet("q", id="c")
    nan.overrides = {"temperature": float("nan")}
    assert settings_for(backend, nan, ENDPOINT) is None and memo(nan) is None


def test_a_backend_that_resolves_sheets_its_own_way_is_asked_every_time(backend: Any) -> None:
    class ByLength(OpenRouterBackend):
        def spec_for_sheet(self, sheet: Sheet) -> CallSpec:
            spec = super().spec_for_sheet(sheet)
            return CallSpec(spec.model, 0.1 * len(sheet.prompt), spec.max_tokens, spec.timeout, spec.messages,
                            spec.options)

    with ByLength(model=MODEL, base_url=ENDPOINT, api_key="k" * 40) as own:
        memo = SettingsMemo(own, ENDPOINT)
        assert memo(Sheet("ab"))["temperature"] != memo(Sheet("abcd"))["temperature"]  # type: ignore[index]


def _checkpoint(path: Path, backend: Any, sheets: list[Sheet]) -> None:
    checkpoint = Checkpoint(path)
    try:
        for index, sheet in enumerate(sheets):
            result = ExecutionResult(success=True, stdout=f"answer {index}", stderr="", duration_seconds=0.1,
                                     exit_code=0, model=MODEL)
            checkpoint.write(sheet.key, index, result, settings=settings_for(backend, sheet, endpoint_of(backend)),
                             sheet=sheet)
    finally:
        checkpoint.close()


def test_a_backend_setting_changed_in_place_is_still_a_mismatch(tmp_path: Path, backend: Any) -> None:
    path = tmp_path / "c.jsonl"
    sheets = [Sheet(f"q{i}", id=f"s{i}") for i in range(5)]
    _checkpoint(path, backend, sheets)
    assert all(r.from_checkpoint for r in run_sheets(backend, sheets, checkpoint=path))
    backend.default_options["seed"] = 3
    with pytest.raises(CheckpointMismatch, match="options") as caught:
        run_sheets(backend, sheets, checkpoint=path, on_mismatch="refuse")
    assert len(caught.value.found) == 5


def test_a_setting_changed_during_a_resume_counts_from_the_next_sheet(tmp_path: Path, backend: Any) -> None:
    path = tmp_path / "c.jsonl"
    sheets = [Sheet(f"q{i}", id=f"s{i}") for i in range(5)]
    _checkpoint(path, backend, sheets)
    restored = []
    with pytest.raises(CheckpointMismatch, match="temperature") as caught:
        for index, _sheet, result in iter_sheets(backend, iter(sheets), checkpoint=path, on_mismatch="refuse"):
            restored.append(index)
            assert result.from_checkpoint
            if index == 1:
                backend.temperature = 0.3
    assert restored == [0, 1] and caught.value.found[0][:2] == (2, "s2")
