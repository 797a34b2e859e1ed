"""Three shards as separate processes sharing one real redis-server and one rate limit (the key's limit,
given to ``Throttle.shared``): every prompt is answered exactly once, and the batch takes at most 1.15x
the ideal time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import pytest
from test_redis_state import RedisServer, _require_redis

from openrouter_sync.testing import FakeOpenRouter, RateLimit, fake_reply

pytestmark = [pytest.mark.socket, pytest.mark.subprocess]
N, RATE, BURST = 120, 40.0, 4

CHILD = """
import json, sys, time
from openrouter_sync import OpenRouterBackend, Sheet, Throttle, run_sheets
base_url, key, shard, path, start_at, n, redis_url, rpm = sys.argv[1:9]
sheets = [Sheet(f"prompt {i}", id=f"p{i}") for i in range(int(n))]
throttle = Throttle.shared(redis_url, requests_per_minute=float(rpm))  # the key's published limit, shared
with OpenRouterBackend(model="openai/gpt-4o-mini", base_url=base_url, api_key=key, timeout_seconds=10,
                       throttle=throttle) as backend:
    while time.time() < float(start_at):
        time.sleep(0.001)
    began = time.time()
    results = run_sheets(backend, sheets, max_workers=8, checkpoint=path, shard=shard)
    ended = time.time()
print(json.dumps({"began": began, "ended": ended, "shared": backend.throttle.shared_state is not None,
                  "answers": {i: r.stdout for i, r in enumerate(results) if r is not None and r.success},
                  "failed": sum(1 for r in results if r is not None and not r.success)}))
"""


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    _require_redis()
    running = RedisServer()
    yield running
    running.stop()


def test_three_shards_share_one_limit_through_redis(redis_server: RedisServer, tmp_path: Path) -> None:
    key = f"sk-or-v1-{uuid.uuid4().hex}{uuid.uuid4().hex}"
    url = redis_server.url(f"shards-{uuid.uuid4().hex[:8]}")
    env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost"}
    env.pop("OPENROUTER_SYNC_SHARED_STATE", None)
    with FakeOpenRouter(rate_limit=RateLimit(rate=RATE, burst=BURST), max_lifetime=120) as fake:
        start_at = time.time() + 2.0  # every child imported and ready before the first request

        def shard(k: int) -> dict[str, Any]:
            done = subprocess.run([sys.executable, "-c", CHILD, fake.base_url, key, f"{k}/3",
                                   str(tmp_path / f"r{k}.jsonl"), str(start_at), str(N), url, str(RATE * 60)],
                                  capture_output=True, text=True, timeout=90, env=env)
            assert done.returncode == 0, done.stderr[-2000:]
            return dict(json.loads(done.stdout.strip().splitlines()[-1]))

        with ThreadPoolExecutor(3) as pool:
            shards = list(pool.map(shard, (1, 2, 3)))
        per_prompt = dict(fake.answers_per_prompt)
    assert all(s["shared"] and s["failed"] == 0 for s in shards)
    answered = [int(i) for s in shards for i in s["answers"]]
    assert sorted(answered) == list(range(N))  # every prompt in exactly one share
    for s in shards:
        for i, text in s["answers"].items():
            assert text == fake_reply(f"prompt {i}", "openai/gpt-4o-mini")
    assert sorted(per_prompt) == sorted(f"prompt {i}" for i in range(N))
    assert all(count == 1 for count in per_prompt.values()), per_prompt  # answered exactly once
    makespan = max(s["ended"] for s in shards) - min(s["began"] for s in shards)
    ideal = (N - BURST) / RATE
    assert makespan <= 1.15 * ideal, (makespan, ideal)
    print(f"makespan {makespan:.2f} s, ideal {ideal:.2f} s, {makespan / ideal:.3f}x")
