"""Interleaved latency measurement: every case runs a little in every round, so load from other processes
on a shared machine falls on all backends alike instead of on whichever happened to run during it.

  warm-up   each case runs for `warmup_s` (at least 2 calls) before anything is recorded; the warm-up
            also estimates its per-call time
  rounds    each round visits every case (the order rotates by one each round) and times
            ~`round_s` worth of individual calls (at least 1); rounds continue until `min_rounds` are
            done and every case's even-round and odd-round medians agree within `tol`, or until
            `max_rounds` or `budget_s` is reached; a slow case (bert2biggan's BigGAN at batch 64: ~15 s a
            call) stops being timed once it holds `slow_case_s` of calls and at least `slow_min_calls` of
            them (it still takes part in the first rounds, interleaved with the rest)
  summary   median and p99 over all recorded calls, throughput = batch / median, and `halves_rel_diff`
            = |median(even rounds) - median(odd rounds)| / median: how well two interleaved halves of the
            same run agree (the stop criterion above)
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np


@dataclass
class Case:
    """One timed call: `fn()` with its inputs bound; `rounds` holds the call times (s) of each round."""
    key: tuple
    fn: Callable[[], object]
    batch: int
    est_s: float = 0.0
    rounds: list[list[float]] = field(default_factory=list)


@dataclass
class Plan:
    """How long to warm up and measure (see the module docstring); QUICK is the --quick plan."""
    warmup_s: float = 0.3
    round_s: float = 0.1
    min_rounds: int = 8
    max_rounds: int = 40
    tol: float = 0.03
    budget_s: float = 180.0
    max_calls: int = 2000
    slow_case_s: float = 30.0
    slow_min_calls: int = 3


QUICK = Plan(warmup_s=0.02, round_s=0.01, min_rounds=2, max_rounds=3, tol=1.0, budget_s=5.0, max_calls=50)


def _time_calls(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def warm_up(case: Case, seconds: float, slow_s: float = 1.0) -> None:
    """Run a case for `seconds` (at least twice; once if that call took over `slow_s`), keeping its fastest
    call as the per-call estimate."""
    start, calls = time.perf_counter(), 0
    while calls < (1 if calls and case.est_s > slow_s else 2) or time.perf_counter() - start < seconds:
        t = time.perf_counter()
        case.fn()
        case.est_s = time.perf_counter() - t if calls == 0 else min(case.est_s, time.perf_counter() - t)
        calls += 1


def halves_rel_diff(case: Case) -> float:
    """|median(even rounds) - median(odd rounds)| / median(all): agreement of two interleaved halves."""
    even = [t for r in case.rounds[0::2] for t in r]
    odd = [t for r in case.rounds[1::2] for t in r]
    if not even or not odd:
        return float("inf")
    return abs(np.median(even) - np.median(odd)) / np.median(even + odd)


def measure(cases: list[Case], plan: Plan) -> dict:
    """Warm up, then interleaved rounds per `plan`; returns how the run went (rounds, seconds, converged)."""
    start = time.perf_counter()
    for case in cases:
        warm_up(case, plan.warmup_s)
    rounds = 0
    while rounds < plan.max_rounds:
        for i in range(len(cases)):
            case = cases[(i + rounds) % len(cases)]
            if _done_slow(case, plan):
                continue
            n = int(min(plan.max_calls, max(1, plan.round_s / max(case.est_s, 1e-7))))
            case.rounds.append(_time_calls(case.fn, n))
        rounds += 1
        converged = all(_done_slow(c, plan) or halves_rel_diff(c) <= plan.tol for c in cases)
        if rounds >= plan.min_rounds and (converged or time.perf_counter() - start > plan.budget_s):
            break
    return {"rounds": rounds, "seconds": time.perf_counter() - start,
            "converged": all(halves_rel_diff(c) <= plan.tol for c in cases),
            "capped_slow_cases": [list(c.key) for c in cases if _done_slow(c, plan)]}


def _done_slow(case: Case, plan: Plan) -> bool:
    """A slow case that already holds enough calls (see the module docstring)."""
    calls = [t for r in case.rounds for t in r]
    return len(calls) >= plan.slow_min_calls and sum(calls) >= plan.slow_case_s


def summary(case: Case) -> dict:
    """Median, p99, mean, counts, throughput (batch / median) and halves agreement of a measured case."""
    times = np.array([t for r in case.rounds for t in r])
    median = float(np.median(times))
    return {"median_ms": median * 1e3, "p99_ms": float(np.percentile(times, 99)) * 1e3,
            "mean_ms": float(times.mean()) * 1e3, "calls": int(len(times)), "rounds": len(case.rounds),
            "throughput_per_s": case.batch / median, "halves_rel_diff": float(halves_rel_diff(case))}
