"""ExecutionResult with __slots__: small, and every public behaviour kept (pickling, equality, copies, repr)."""

from __future__ import annotations

import copy
import dataclasses
import json
import pickle
import sys

import pytest

from openrouter_sync import ExecutionResult
from openrouter_sync._log import register_secret, release_secret


def _result(**kw: object) -> ExecutionResult:
    base: dict[str, object] = dict(success=True, stdout="an answer", stderr="", duration_seconds=0.25, exit_code=0,
                                   model="m/x", tokens_used=3, input_tokens=1, output_tokens=2, cost=0.5,
                                   tool_calls=[{"id": "c", "type": "function",
                                                "function": {"name": "f", "arguments": "{}"}}],
                                   warnings=["w"], raw={"id": "gen-1"})
    base.update(kw)
    return ExecutionResult(**base)  # type: ignore[arg-type]


def test_a_result_has_no_instance_dict_and_costs_a_pointer_per_field() -> None:
    result = _result()
    assert not hasattr(result, "__dict__")
    assert sys.getsizeof(result) <= 16 + 8 * len(dataclasses.fields(ExecutionResult)) + 16
    with pytest.raises(AttributeError):
        result.not_a_field = 1  # type: ignore[attr-defined]


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_pickling_round_trips_at_every_protocol(protocol: int) -> None:
    result = _result()
    back = pickle.loads(pickle.dumps(result, protocol))
    assert back == result and back is not result and back.tool_calls == result.tool_calls
    assert back.output == result.output and back.raw == {"id": "gen-1"}


def test_a_pickled_instance_dict_state_is_still_read() -> None:
    """A state as pickles of the class without slots held it (a dict of fields) is restored."""
    result = _result()
    fresh = ExecutionResult.__new__(ExecutionResult)
    fresh.__setstate__(dataclasses.asdict(result))  # type: ignore[attr-defined]
    assert fresh == result


def test_equality_copies_replace_and_dicts_are_as_before() -> None:
    result = _result()
    assert result == _result(started_at=result.started_at) and result != _result(stdout="other")
    assert copy.copy(result) == result and copy.deepcopy(result) == result
    assert copy.deepcopy(result).tool_calls is not result.tool_calls
    assert dataclasses.replace(result, stdout="new").stdout == "new"
    assert ExecutionResult.from_dict(result.to_dict()) == result
    assert dataclasses.is_dataclass(ExecutionResult) and [f.name for f in dataclasses.fields(result)][:4] == [
        "success", "stdout", "stderr", "duration_seconds"]
    with pytest.raises(ValueError):
        ExecutionResult(success=True, stdout="", stderr="", duration_seconds=0.0, exit_code=2)


def test_repr_and_str_still_hide_secrets() -> None:
    secret = "sk-or-v1-" + "s1ots" * 10
    register_secret(secret)
    try:
        result = _result(stdout=f"echo {secret}", success=False, exit_code=400, error_message=f"bad {secret}")
        assert secret not in repr(result) and secret not in str(result)
        assert "raw=" not in repr(result)  # still left out of repr
    finally:
        release_secret(secret)


def test_from_dict_still_refuses_wrong_types_and_widens_nothing() -> None:
    data = _result().to_dict()
    assert ExecutionResult.from_dict({**data, "duration_seconds": 2}).duration_seconds == 2
    for name, bad in (("success", "yes"), ("attempts", True), ("cost", "1"), ("warnings", [1])):
        with pytest.raises(ValueError, match=name):
            ExecutionResult.from_dict({**data, name: bad})


def test_restored_results_share_the_strings_that_repeat() -> None:
    """A resume holds many results that name the same model, provider and reasons: one string each."""
    data = json.loads(json.dumps(_result(model="some/model", provider="P", finish_reason="stop").to_dict()))
    again = json.loads(json.dumps(data))
    first, second = ExecutionResult.from_dict(data), ExecutionResult.from_dict(again)
    assert data["model"] is not again["model"]  # json.loads makes a new string each time
    for name in ("model", "provider", "exit_reason", "finish_reason"):
        assert getattr(first, name) is getattr(second, name), name
    assert first == second and first.stdout is not second.stdout  # answers are not interned
