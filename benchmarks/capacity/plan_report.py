"""The capacity plan as markdown: the sweep, the sustained rate within the SLO, replicas, memory per replica."""
from __future__ import annotations

from pathlib import Path

from benchmarks.capacity import planner
from benchmarks.load import report


def plan_markdown(result: dict, plan: dict, sizes, png: Path) -> str:
    gib = lambda b: f"{b / planner.GIB:.3f} GiB"  # noqa: E731
    m = plan["memory"]
    cfg = result["config"]
    lines = [
        "# Capacity plan", "",
        f"- Date: {result['finished_at']}; commit `{result['git_commit']}`; machine: {result['machine']['cpu_count']} CPUs, "
        f"{result['machine']['platform']}",
        f"- Sweep: `{cfg['model']}`, open loop, steps {cfg['steps']} requests/s x {cfg['step_time']} s, batch {cfg['batch_size']}, k {cfg['k']}"
        + (f" (searched by the planner: up by {result['search']['factor']:g}x while the SLO held, then {result['search']['refine']} "
           f"bisections; >= {result['search']['min_requests']} requests a rate)" if "search" in result else ""),
        f"- SLO: p99 <= {plan['slo_p99_ms']:g} ms, errors < 0.1%, >= 95% of the target rate delivered (or short by at most 3 sigma of its Poisson count)", "",
        report.format_steps(result), "",
    ]
    if plan["replicas"] is None:
        lines += ["**No load level met the SLO**: lower the first step of the sweep, or relax the SLO.", ""]
    else:
        lines += [
            f"- Highest sustained rate within the SLO: **{plan['sustained_qps']:.1f} requests/s** per replica (step {plan['sustained_step']})",
            f"- Target {plan['target_qps']:g} requests/s with {plan['headroom']:.0%} headroom: **{plan['replicas']} replica(s)**, "
            f"{plan['devices']} device(s) in all", "",
        ]
    lines += [
        "| memory per replica | |", "|---|---|",
        f"| engine (query encoder) | {gib(m['engine_bytes'])} |",
        f"| index ({sizes.index_rows} x {sizes.dim} {sizes.index_dtype}) | {gib(m['index_bytes'])} |",
        f"| workspace (estimate, --workspace-gib) | {gib(m['workspace_bytes'])} |",
        f"| total | {gib(m['total_bytes'])} |", "",
        ("The index fits on one device." if m["index_fits_one_device"] else
         f"**The index does not fit on one device**: shard it over {m['devices_for_index']} devices "
         f"({gib(m['index_shard_bytes'])} each), one mips_topk instance per shard."),
        "", f"![latency against achieved QPS]({png.name})", "",
        "Throughput was measured on this machine with the load generator on the same cores; "
        "re-run the sweep on the target hardware before buying it.",
    ]
    return "\n".join(lines) + "\n"
