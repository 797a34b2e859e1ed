"""A stable share of a batch: ``shard="K/N"`` runs the sheets whose id falls in share K of N.

A sheet's share is the BLAKE2b digest of its checkpoint id (``Sheet.id``, else the digest of its
content; see ``Sheet.key``) modulo N, so it depends on nothing but the id: every machine given the
same input and the same N agrees on the split, whatever the order or the other sheets, and the N
shares together hold every sheet exactly once. K counts from 1 (Slurm's ``SLURM_ARRAY_TASK_ID``
with ``--array=1-N``; a Kubernetes indexed job's ``JOB_COMPLETION_INDEX`` plus one).
"""

from __future__ import annotations

import hashlib
from typing import Any, Optional, Tuple

Shard = Tuple[int, int]

__all__ = ["Shard", "in_shard", "parse_shard", "shard_of"]


def parse_shard(value: Any) -> Optional[Shard]:
    """``(K, N)`` from ``"K/N"`` or a ``(K, N)`` pair, with ``1 <= K <= N``; None stays None.

    Raises ``ValueError`` saying what is wrong (``0/3``, ``4/3``, ``x``)."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        parts = text.split("/")
        if len(parts) != 2 or not all(part.strip().isdigit() for part in parts):
            raise ValueError(f"shard must be 'K/N' (e.g. '1/3': the first of three shares), got {value!r}")
        k, n = int(parts[0]), int(parts[1])
    elif isinstance(value, (tuple, list)) and len(value) == 2 and all(
            isinstance(part, int) and not isinstance(part, bool) for part in value):
        k, n = value
    else:
        raise ValueError(f"shard must be 'K/N' or a (K, N) pair of integers, got {value!r}")
    if n < 1:
        raise ValueError(f"shard {k}/{n}: N (the number of shares) must be >= 1")
    if not 1 <= k <= n:
        raise ValueError(f"shard {k}/{n}: K must be between 1 and N={n} (shares count from 1)")
    return k, n


def shard_of(key: str, shares: int) -> int:
    """The share (1 to ``shares``) a sheet id falls in."""
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shares + 1


def in_shard(key: str, shard: Optional[Shard]) -> bool:
    """Whether a sheet id belongs to ``shard`` (every id does when it is None)."""
    return shard is None or shard_of(key, shard[1]) == shard[0]
