"""The planner's capacity search against a running server: one open-loop run per rate, up by a factor
while the SLO holds, then bisected (``planner.search_capacity`` decides; this runs the rates)."""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from benchmarks.capacity import planner
from benchmarks.load.runner import run_load


def fixed_duration_s(min_requests: int, rate: float) -> int:
    """Seconds at ``rate`` for at least ``min_requests`` Poisson arrivals but in a 3-sigma-unlucky run."""
    return math.ceil((min_requests + 3 * math.sqrt(min_requests)) / rate)


def search_rates(base: dict, out_dir: Path, stem: str, *, slo_p99_ms: float, start_rps: float, factor: float,
                 refine: int, max_rps: float, min_requests: int, step_time: float, known: dict | None = None,
                 min_rps: float = 1.0) -> tuple[dict, dict]:
    """``planner.search_capacity`` against a running server (``compare --capacity``, ``plan --search-from``):
    each rate is one open-loop ``run_load`` with the options ``base``, of at least ``min_requests``
    requests, written to ``out_dir/<stem>-rate<R>.json``; ``known`` ({rate: (result, file)}) is reused,
    not run again. Returns the search, each point with its file, requests and reconciliation (its
    step dropped), and every rate's result."""
    runs = dict(known or {})

    def measure(rate: float) -> dict:
        if rate not in runs:
            name = f"{stem}-rate{rate:g}.json"
            print(f"    capacity search: {rate:g} req/s", file=sys.stderr, flush=True)
            runs[rate] = (run_load(argparse.Namespace(**{**base, "load_mode": "open", "steps": f"{rate:g}", "out": out_dir / name,
                                                          "step_time": max(step_time, fixed_duration_s(min_requests, rate))})), name)
        return runs[rate][0]["steps"][0]

    found = planner.search_capacity(measure, slo_p99_ms, start_rps, factor, refine, max_rps, min_rps)
    for p in found["points"]:
        result, p["file"] = runs[p["rate_rps"]]
        p["requests"] = p.pop("step")["issued"]
        p["reconciliation"] = result.get("reconciliation", {}).get("status")
        p["cpu_steal"] = result["steps"][0].get("cpu_steal")
    return found, {rate: result for rate, (result, _) in runs.items()}


def search_load(args: argparse.Namespace) -> dict:
    """``plan --search-from R``: the planner finds the edge itself (``search_rates``), one
    open-loop run per rate, each at least ``--min-requests`` requests; the steps come back as one
    sweep in the order they ran, with the search's trail under ``"search"``."""
    found, runs = search_rates(vars(args), args.out.parent, args.out.stem, slo_p99_ms=args.slo_p99_ms,
                               start_rps=args.search_from, factor=args.search_factor, refine=args.search_refine,
                               max_rps=args.search_max_rps, min_requests=args.min_requests, step_time=args.step_time)
    points = found.pop("points")
    result = {**runs[points[-1]["rate_rps"]], "steps": [{**runs[p["rate_rps"]]["steps"][0], "index": i} for i, p in enumerate(points)]}
    result["config"] = {**result["config"], "steps": ",".join(f"{p['rate_rps']:g}" for p in points), "step_time": "per rate"}
    result["search"] = {**found, "points": points, "min_requests": args.min_requests}
    return result
