"""Tool calling in a few lines: append the assistant's tool calls and their results to a conversation.

    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    while True:
        result = backend.execute(messages=messages, tools=TOOLS)
        if not append_tool_turn(messages, result, {"get_weather": get_weather}):
            break  # a final answer: result.stdout
    print(result.stdout)

The tool calls are ``result.tool_calls`` exactly as the API returned them (folded from the deltas
for a stream); each is answered by one ``{"role": "tool", "tool_call_id": ..., "content": ...}``.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Mapping, MutableSequence

from .result import ExecutionResult

Functions = Mapping[str, Callable[..., Any]]


def assistant_message(result: ExecutionResult) -> dict[str, Any]:
    """The assistant's turn of a result, to send back: its text (None when it has none) and its tool calls."""
    message: dict[str, Any] = {"role": "assistant", "content": result.stdout or None}
    if result.tool_calls:
        message["tool_calls"] = result.tool_calls
    return message


def tool_message(call_id: str, output: Any) -> dict[str, Any]:
    """The answer to one tool call: ``output`` as is when it is a string, else as JSON."""
    content = output if isinstance(output, str) else json.dumps(output, ensure_ascii=False, default=str)
    return {"role": "tool", "tool_call_id": call_id, "content": content}


def call_tool(call: Mapping[str, Any], functions: Functions) -> Any:
    """Run one tool call: ``functions[name](**arguments)``. An unknown name or arguments that are
    not a JSON object give an error text for the model (it can correct itself); an exception
    raised by the function propagates."""
    given = call.get("function")
    function: Mapping[str, Any] = given if isinstance(given, Mapping) else {}
    name = function.get("name")
    if not isinstance(name, str) or name not in functions:
        return f"error: there is no tool named {name!r}; the tools are {', '.join(sorted(functions))}"
    raw = function.get("arguments") or "{}"
    try:
        arguments = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError as exc:
        return f"error: the arguments are not valid JSON ({exc}): {str(raw)[:200]}"
    if not isinstance(arguments, dict):
        return f"error: the arguments must be a JSON object, got {type(arguments).__name__}"
    return functions[name](**arguments)


def append_tool_turn(messages: MutableSequence[dict[str, Any]], result: ExecutionResult,
                     functions: Functions) -> bool:
    """Append ``result``'s assistant turn to ``messages`` and, when it called tools, one tool
    message per call (run with :func:`call_tool`). Returns True when tools were called (send
    ``messages`` again), False for a final answer. A failed result raises its ``OpenRouterError``
    (``raise_for_error``), so a tool loop never goes on from a failure."""
    result.raise_for_error()
    messages.append(assistant_message(result))
    for call in result.tool_calls:
        messages.append(tool_message(str(call.get("id") or ""), call_tool(call, functions)))
    return bool(result.tool_calls)
