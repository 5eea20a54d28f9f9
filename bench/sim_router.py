"""A discrete-event simulation of request routing over many replicas (docs/scale-out.md's figures).

Users hold conversations: each turn's prompt is the previous turn's prompt plus the answer plus a new
message, so a replica that served the previous turn has most of the prompt in its KV cache and only
prefills the rest. Replicas have ``slots`` parallel sequences (continuous batching: a slot's decode
speed does not depend on the others here) and a prompt cache of ``cache`` conversations (LRU).
Policies: ``random``, ``round_robin``, ``least_loaded`` (a global view of every queue), ``p2c``
(power of two choices on requests in flight), ``p2c_prefix`` (pollama's: p2c, but the replica holding
the conversation's prefix wins while it is at most ``slots - 1`` requests busier), ``sticky`` (always the prefix holder, hashing a
new conversation to a replica).

Run: ``python bench/sim_router.py`` (a few seconds; prints a table). Figures are model time, not wall.
"""

from __future__ import annotations

import argparse
import heapq
import random
import statistics
from collections import OrderedDict
from dataclasses import dataclass, field


@dataclass
class Replica:
    """One runner: slots, a queue and a prompt cache of conversation ids (LRU)."""

    rid: int
    slots: int
    cache_size: int
    busy: int = 0
    queue: list[tuple[float, int, int, int]] = field(default_factory=list)  # (arrival, conv, turn, prompt)
    cache: OrderedDict[int, int] = field(default_factory=OrderedDict)  # conv -> cached prompt tokens

    @property
    def load(self) -> int:
        return self.busy + len(self.queue)


@dataclass
class Costs:
    """Seconds per prefilled token and per generated token (a small model on one CPU node)."""

    prefill: float = 0.0004
    decode: float = 0.02
    answer: int = 120
    message: int = 60
    system: int = 400


def simulate(
    policy: str, *, replicas: int, slots: int, users: int, turns: int, think: float, seed: int
) -> dict[str, float]:
    """Run one policy; returns mean and p99 time to first token, mean latency and cache hit rate."""
    rng = random.Random(seed)
    costs = Costs()
    pool = [Replica(i, slots, cache_size=max(slots * 4, 8)) for i in range(replicas)]
    owner: dict[int, int] = {}  # conversation -> replica that last served it (the frontend's prefix map)
    events: list[tuple[float, int, str, tuple[int, ...]]] = []
    seq = 0

    def push(t: float, kind: str, data: tuple[int, ...]) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(events, (t, seq, kind, data))

    for user in range(users):
        push(rng.uniform(0, think), "arrive", (user, 0))
    ttft: list[float] = []
    latency: list[float] = []
    cached_tokens = 0
    prompt_tokens = 0
    rr = 0

    def choose(conv: int) -> Replica:
        nonlocal rr
        if policy == "random":
            return rng.choice(pool)
        if policy == "round_robin":
            rr += 1
            return pool[rr % len(pool)]
        if policy == "least_loaded":
            return min(pool, key=lambda r: (r.load, rng.random()))
        if policy == "sticky":
            return pool[owner.get(conv, conv % len(pool))]
        a, b = rng.sample(pool, 2)
        pick = a if a.load <= b.load else b
        if policy == "p2c_prefix" and conv in owner:
            holder = pool[owner[conv]]
            if holder.load <= pick.load + slots - 1:  # pollama's slack: num_parallel - 1
                return holder
        return pick

    def start(r: Replica, now: float, arrival: float, conv: int, turn: int, prompt: int) -> None:
        nonlocal cached_tokens, prompt_tokens
        r.busy += 1
        hit = min(r.cache.get(conv, 0), prompt)
        cached_tokens += hit
        prompt_tokens += prompt
        first = now + (prompt - hit) * costs.prefill + costs.decode
        done = first + (costs.answer - 1) * costs.decode
        ttft.append(first - arrival)
        latency.append(done - arrival)
        r.cache[conv] = prompt + costs.answer
        r.cache.move_to_end(conv)
        while len(r.cache) > r.cache_size:
            r.cache.popitem(last=False)
        push(done, "finish", (r.rid, conv, turn))

    while events:
        now, _, kind, data = heapq.heappop(events)
        if kind == "arrive":
            conv, turn = data
            prompt = costs.system + turn * (costs.answer + costs.message) + costs.message
            r = choose(conv)
            owner[conv] = r.rid
            if r.busy < r.slots:
                start(r, now, now, conv, turn, prompt)
            else:
                r.queue.append((now, conv, turn, prompt))
        else:
            rid, conv, turn = data
            r = pool[rid]
            r.busy -= 1
            if r.queue:
                arrival, qconv, qturn, qprompt = r.queue.pop(0)
                start(r, now, arrival, qconv, qturn, qprompt)
            if turn + 1 < turns:
                push(now + rng.expovariate(1 / think), "arrive", (conv, turn + 1))
    ttft.sort()
    return {
        "ttft_mean": statistics.fmean(ttft),
        "ttft_p99": ttft[int(0.99 * (len(ttft) - 1))],
        "latency_mean": statistics.fmean(latency),
        "cache_hit": cached_tokens / max(prompt_tokens, 1),
    }


POLICIES = ("random", "round_robin", "least_loaded", "p2c", "p2c_prefix", "sticky")


def main() -> None:
    """Print each policy's figures for the scenarios given on the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, default=100)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--users", type=int, nargs="+", default=[1000, 3000, 4500])
    parser.add_argument("--turns", type=int, default=8)
    parser.add_argument("--think", type=float, default=20.0, help="mean seconds between a user's turns")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    print(f"{args.replicas} replicas x {args.slots} slots, {args.turns} turns per conversation, think {args.think:g}s")
    print(f"{'users':>6} {'policy':<13} {'TTFT mean':>10} {'TTFT p99':>10} {'latency':>9} {'cache hit':>9}")
    for users in args.users:
        for policy in POLICIES:
            r = simulate(
                policy,
                replicas=args.replicas,
                slots=args.slots,
                users=users,
                turns=args.turns,
                think=args.think,
                seed=args.seed,
            )
            print(
                f"{users:>6} {policy:<13} {r['ttft_mean']:>9.2f}s {r['ttft_p99']:>9.2f}s "
                f"{r['latency_mean']:>8.2f}s {r['cache_hit']:>8.0%}"
            )


if __name__ == "__main__":
    main()
