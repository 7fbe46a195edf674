"""vmdisk benchmarks: each metric against a physical floor measured in the same run.

    python -m bench.run --quick      # make bench-quick: fewer repetitions, under 3 minutes
    python -m bench.run --full       # make bench

Prints a table to stderr and one JSON document to stdout. Medians with min and max; ratios are
value / floor. Not part of the test command: these are measurements, not assertions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import issue21, oci, scenarios
from bench.fixtures import Inputs, make_inputs

Metric = dict[str, Any]


def timed(fn: Callable[[], object], repeat: int) -> list[float]:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return samples


def metric(
    value: float,
    unit: str,
    floor: float | None,
    target: float,
    *,
    samples: list[float] | None = None,
    lower_is_better: bool = True,
    ratio_target: bool = True,
    **extra: Any,
) -> Metric:
    ratio = value / floor if floor else None
    measured = ratio if ratio_target else value
    met = measured is not None and (measured <= target if lower_is_better else measured >= target)
    out: Metric = {
        "value": round(value, 6),
        "unit": unit,
        "floor": round(floor, 6) if floor is not None else None,
        "ratio": round(ratio, 3) if ratio is not None else None,
        "target": target,
        "met": met,
        **extra,
    }
    if samples:
        out.update(
            median=round(statistics.median(samples), 6),
            min=round(min(samples), 6),
            max=round(max(samples), 6),
            samples=len(samples),
        )
    return out


def machine() -> dict[str, Any]:
    qemu = subprocess.run(
        ["qemu-img", "--version"], capture_output=True, text=True, check=True
    ).stdout.splitlines()[0]
    return {
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "qemu_img": qemu,
        "python": platform.python_version(),
        "machine": platform.machine(),
    }


def table(metrics: dict[str, Metric]) -> str:
    lines = [f"{'metric':14} {'value':>12} {'floor':>12} {'ratio':>8} {'target':>8}  met  notes"]
    order = ["W1 --version", "W1 --help", "W1 list", "W2", "W3"]
    order += [f"P{i}" for i in range(1, 10)] + ["full_instance", "R1", "R2", "X1"]
    metrics = {k: metrics[k] for k in [*order, *sorted(set(metrics) - set(order))] if k in metrics}
    for key, m in metrics.items():
        floor = f"{m['floor']:.4g}" if m.get("floor") is not None else "-"
        ratio = f"{m['ratio']:.3g}" if m.get("ratio") is not None else "-"
        note = m.get("note", "")
        if "subprocesses" in m:
            note = f"{m['subprocesses']} subprocesses/op {note}"
        lines.append(
            f"{key:14} {m['value']:>10.4g} {m['unit']:<2}{floor:>11} {ratio:>8} "
            f"{m['target']:>8}  {'yes' if m['met'] else 'NO ':3}  {note}"
        )
    return "\n".join(lines)


def run(quick: bool) -> dict[str, Any]:
    repeat = 5 if quick else 15
    work = Path(tempfile.mkdtemp(prefix="vmdisk-bench-", dir="/var/tmp"))
    try:
        inputs: Inputs = make_inputs(work)
        metrics: dict[str, Metric] = {}
        runs = 10 if quick else 30  # whole processes: cheap, and noisy on a shared machine
        groups: list[tuple[str, Callable[[], dict[str, Metric]]]] = [
            ("W1", lambda: issue21.w1_startup(work, runs, metric)),
            ("R1/R2", lambda: issue21.r1_r2_reflink(work, max(3, repeat // 3), metric)),
        ]
        steps: list[tuple[str, Callable[[], Metric]]] = [
            ("W2", lambda: issue21.w2_warm_process(work, inputs, runs, metric)),
            ("W3", lambda: issue21.w3_full_process(work, inputs, runs, metric)),
            ("P1", lambda: scenarios.p1_warm_create(work, inputs, repeat, metric)),
            ("P2", lambda: scenarios.p2_cold_raw(work, inputs, max(3, repeat // 3), metric)),
            ("P3", lambda: scenarios.p3_cold_qcow2(work, inputs, max(3, repeat // 3), metric)),
            ("P4", lambda: scenarios.p4_parallel_warm(work, inputs, max(3, repeat // 3), metric)),
            ("P5", lambda: scenarios.p5_stampede(work, inputs, metric)),
            ("P6", lambda: scenarios.p6_huge_root(work, inputs, repeat, metric)),
            ("P7", lambda: scenarios.p7_sparse_base(work, inputs, metric)),
            ("P8", lambda: scenarios.p8_fetch_rss(work, inputs, metric)),
            ("P9", lambda: scenarios.p9_prune_planning(work, 2000 if quick else 10000, metric)),
            ("full_instance", lambda: scenarios.full_instance(work, inputs, repeat, metric)),
            ("oci_pull", lambda: oci.oci_pull(work, inputs.raw, max(3, repeat // 3), metric)),
            ("X1", lambda: issue21.x1_overlay_writes(work, inputs, max(3, repeat // 3), metric)),
        ]
        for key, group in groups[:1]:
            print(f"bench: {key}...", file=sys.stderr, flush=True)
            metrics.update(group())
        for key, step in steps:
            print(f"bench: {key}...", file=sys.stderr, flush=True)
            metrics[key] = step()
        for key, group in groups[1:]:
            print(f"bench: {key}...", file=sys.stderr, flush=True)
            metrics.update(group())
        inputs.server.close()
        return {"machine": machine(), "mode": "quick" if quick else "full", "metrics": metrics}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true")
    mode.add_argument("--full", action="store_true")
    args = parser.parse_args()
    result = run(quick=args.quick)
    print(table(result["metrics"]), file=sys.stderr)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
