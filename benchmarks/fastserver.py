"""A minimal asyncio chat-completions server, much cheaper per request than the fake server.

For benchmarks that must measure the client, not the server: one event loop, no threads,
hand-rolled HTTP/1.1 keep-alive. ``python -m benchmarks.fastserver --latency 0.2`` prints its
base URL, then serves until stdin closes. ``--fixed`` answers one pre-built body (overhead runs).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections import Counter

from openrouter_sync.testing import fake_reply

STATS: Counter[str] = Counter()


def _body(payload: dict) -> bytes:
    messages = payload.get("messages") or [{}]
    prompt = str(messages[-1].get("content", ""))
    model = payload.get("model", "")
    STATS[prompt] += 1
    return json.dumps({
        "id": "gen-fast", "object": "chat.completion", "model": model, "provider": "Fast",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant",
                                                                     "content": fake_reply(prompt, model)}}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20, "cost": 0.00001},
    }).encode()


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, latency: float,
                 fixed: bytes | None) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            first, _, rest = head.partition(b"\r\n")
            for line in rest.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            raw = await reader.readexactly(length) if length else b""
            if first.startswith(b"GET /_fake/stats"):
                body = json.dumps({"answers_per_prompt": dict(STATS), "request_count": sum(STATS.values()),
                                   "status_counts": {"200": sum(STATS.values())}}).encode()
            else:
                if latency:
                    await asyncio.sleep(latency)
                body = fixed if fixed is not None else _body(json.loads(raw or b"{}"))
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                         % len(body) + body)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
        pass
    finally:
        writer.close()


async def _main(latency: float, fixed: bool) -> None:
    body = _body({"model": "openai/gpt-4o-mini", "messages": [{"content": "fixed"}]}) if fixed else None
    server = await asyncio.start_server(lambda r, w: _serve(r, w, latency, body), "127.0.0.1", 0, backlog=1024)
    port = server.sockets[0].getsockname()[1]
    print(f"http://127.0.0.1:{port}/api/v1", flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)
    server.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--fixed", action="store_true")
    args = parser.parse_args()
    asyncio.run(_main(args.latency, args.fixed))


if __name__ == "__main__":
    main()
