"""Which replica of a model serves a request: power-of-two-choices on queue depth, and, when the
load is balanced, the replica whose prompt cache holds the longest prefix of the prompt.

``PrefixRouter`` keeps a bounded map from prefix hashes (the prompt cut at every ``block`` characters,
each hash chaining the previous one) to the replica that last saw that prefix; a conversation's next
turn starts with the previous turn's prompt, so it finds the replica that has it cached. Pure logic:
no I/O, no clocks, a seeded random source for tests.
"""

from __future__ import annotations

import hashlib
import random
from collections import OrderedDict
from collections.abc import Sequence
from typing import Protocol, TypeVar

DEFAULT_BLOCK = 64
"""Characters per prefix block (about 16 tokens)."""

DEFAULT_CAPACITY = 100_000
"""Prefix hashes remembered (each is a few dozen bytes)."""


class Routable(Protocol):
    """What the router reads of a replica."""

    @property
    def replica_id(self) -> str: ...

    @property
    def in_flight(self) -> int: ...


def prefix_hashes(text: str, block: int = DEFAULT_BLOCK) -> list[bytes]:
    """The chained hashes of ``text``'s whole blocks, shortest prefix first."""
    out: list[bytes] = []
    previous = b""
    for end in range(block, len(text) + 1, block):
        chunk = text[end - block : end].encode("utf-8", "replace")
        previous = hashlib.blake2b(previous + chunk, digest_size=12).digest()
        out.append(previous)
    return out


R = TypeVar("R", bound=Routable)


class PrefixRouter:
    """Chooses a replica per request; ``slack`` is how much busier than the power-of-two pick the
    prefix-holding replica may be and still win (load counts first, the cache second)."""

    def __init__(
        self,
        *,
        block: int = DEFAULT_BLOCK,
        capacity: int = DEFAULT_CAPACITY,
        slack: int = 0,
        rng: random.Random | None = None,
    ) -> None:
        self.block = block
        self.capacity = capacity
        self.slack = slack
        self._rng = rng or random.Random()
        self._owners: OrderedDict[bytes, str] = OrderedDict()

    def choose(self, replicas: Sequence[R], prompt: str = "") -> R:
        """The replica for a request with ``prompt`` (which is then remembered as that replica's)."""
        if not replicas:
            raise ValueError("no replica to route to")
        hashes = prefix_hashes(prompt, self.block) if prompt else []
        chosen = self._pick(replicas, hashes)
        self._remember(hashes, chosen.replica_id)
        return chosen

    def _pick(self, replicas: Sequence[R], hashes: list[bytes]) -> R:
        if len(replicas) == 1:
            return replicas[0]
        first, second = self._rng.sample(list(replicas), 2)
        balanced = first if first.in_flight <= second.in_flight else second
        holder = self._longest_holder(replicas, hashes)
        if holder is not None and holder.in_flight <= balanced.in_flight + self.slack:
            return holder
        return balanced

    def _longest_holder(self, replicas: Sequence[R], hashes: list[bytes]) -> R | None:
        by_id = {r.replica_id: r for r in replicas}
        for digest in reversed(hashes):
            owner = self._owners.get(digest)
            if owner is not None and owner in by_id:
                return by_id[owner]
        return None

    def _remember(self, hashes: list[bytes], replica_id: str) -> None:
        for digest in hashes:
            self._owners[digest] = replica_id
            self._owners.move_to_end(digest)
        while len(self._owners) > self.capacity:
            self._owners.popitem(last=False)

    def forget(self, replica_id: str) -> None:
        """Drop every prefix owned by a replica that is gone."""
        for digest in [d for d, owner in self._owners.items() if owner == replica_id]:
            del self._owners[digest]
