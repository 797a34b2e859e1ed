"""A tool loop: the model asks for a function call, we run it and send the result back.

    python examples/tools.py
"""

from __future__ import annotations

from openrouter_sync.testing import demo_backend
from openrouter_sync.tools import append_tool_turn

TOOLS = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}]


def get_weather(city: str) -> dict[str, object]:
    return {"city": city, "temperature_c": 18, "sky": "clear"}


def main() -> None:
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    with demo_backend(model="openai/gpt-4o-mini", max_tokens=300) as backend:
        for _ in range(5):  # a bound: a model may keep calling tools
            result = backend.execute(messages=messages, tools=TOOLS)
            for call in result.tool_calls:
                print(f"tool call: {call['function']['name']}({call['function']['arguments']})")
            if not append_tool_turn(messages, result, {"get_weather": get_weather}):
                break
    print(f"answer: {result.stdout}")
    print(f"[{len(messages)} messages; finish_reason {result.finish_reason}; cost {result.cost}]")


if __name__ == "__main__":
    main()
