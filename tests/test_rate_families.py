"""Rate control judged on random limiters from the families real APIs use (``limiters.draw``), in
the deterministic simulator: properties over many instances, not rows. The figures per family, and
the known gaps, are ``python -m benchmarks.families``'s (docs/rate-limits.md shows them)."""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from limiters import FAMILIES, draw, ideal
from ratesim import simulate, simulate_processes

CASES = settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))


@CASES
@given(seed=st.integers(0, 10**6), family=st.sampled_from(FAMILIES), clients=st.integers(1, 4))
def test_every_prompt_is_answered_on_any_limiter(seed: int, family: str, clients: int) -> None:
    """Refusals are bounded by time, not by attempts: a limiter that refuses most requests for a
    while (a small cap, a shed, a window) loses no prompt, with one client or several."""
    rng = random.Random(seed)
    n = 150 // clients
    _, server = draw(rng, n * clients, family)
    if clients == 1:
        runs = [simulate(server, n=n, workers=32, seed=seed, max_attempts=8)]
    else:
        runs = simulate_processes(server, clients, n, 16, seed=seed, max_attempts=8)
    assert all(run.failures == 0 for run in runs)
    assert sum(len(run.finished_at) for run in runs) == n * clients
    assert max(run.makespan for run in runs) < 60 * ideal(server, n * clients, 32)  # and every run ends
