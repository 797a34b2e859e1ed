"""A backend built before a fork (gunicorn --preload, Celery prefork) works in every child."""

from __future__ import annotations

import multiprocessing
import os
import sys

import pytest

from openrouter_sync import OpenRouterBackend
from openrouter_sync.testing import FakeOpenRouter, fake_reply

pytestmark = pytest.mark.skipif(not hasattr(os, "fork") or sys.platform == "darwin", reason="needs fork")
MODEL = "openai/gpt-4o-mini"


def _child(backend: OpenRouterBackend, name: str, out: "multiprocessing.Queue[tuple[str, int, int]]") -> None:
    wrong = failed = 0
    for i in range(25):
        prompt = f"{name}-q{i}"
        result = backend.execute(prompt)
        if not result.success:
            failed += 1
        elif result.stdout != fake_reply(prompt, MODEL):
            wrong += 1
    out.put((name, wrong, failed))


def test_children_never_share_the_parents_connections() -> None:
    with FakeOpenRouter() as fake:
        backend = OpenRouterBackend(model=MODEL, base_url=fake.base_url, api_key="sk-or-v1-" + "f" * 40,
                                    timeout_seconds=5)
        assert backend.health_check() and backend.execute("parent").success  # pooled connections now exist
        context = multiprocessing.get_context("fork")
        out: multiprocessing.Queue[tuple[str, int, int]] = context.Queue()
        children = [context.Process(target=_child, args=(backend, f"w{n}", out)) for n in range(4)]
        for child in children:
            child.start()
        reports = [out.get(timeout=30) for _ in children]
        parent_ok = all(backend.execute(f"parent-{i}").stdout == fake_reply(f"parent-{i}", MODEL) for i in range(25))
        for child in children:
            child.join(10)
    assert parent_ok
    assert sorted(reports) == [(f"w{n}", 0, 0) for n in range(4)]  # no crossed answers, no failures
