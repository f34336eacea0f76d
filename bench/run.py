"""`make bench`: run benchmark items 1-7 against an emulator process and print the table.

    .venv/bin/python bench/run.py [--quick] [--only 1,3] [--runs N] [--scale 1000000]
                                  [--workdir DIR] [--keep] [--out bench/results/latest.json]

Medians over several runs; every ratio compares syncd with its floor or baseline measured in
this same run on the same data (never absolute times across runs: the machine is shared).
The emulator's own CPU time is reported separately. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import structlog

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import BENCH, PYTHON, REPO, Row
from scenarios import (
    Context,
    Sizes,
    ceiling,
    growth_rows,
    hashing,
    initial_sync,
    log,
    noop_items,
    scale_item,
    watch_latency,
)

ITEMS = {
    "1": noop_items,  # also item 2 and item 7 at 100k: they share the 100k tree
    "3": initial_sync,
    "4": hashing,
    "5": watch_latency,
    "6": ceiling,
}


def machine() -> dict[str, object]:
    cpu = ""
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(
                (line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), ""
            )
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "memory_gb": round(mem / 2**30, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "load_avg_at_start": os.getloadavg(),
    }


def daemon_available() -> bool:
    probe = subprocess.run(
        [PYTHON, "-m", "syncd", "run", "--help"], cwd=REPO, capture_output=True, check=False
    )
    return probe.returncode == 0


def verdict(row: Row) -> str:
    if row.met is None:
        return ""
    return "met" if row.met else f"MISSED ({row.value}{row.unit})"


def print_table(rows: list[Row]) -> None:
    head = ("item", "metric", "value", "target", "verdict")
    cells = [(r.item, r.metric, f"{r.value}{r.unit}", r.target, verdict(r)) for r in rows]
    widths = [max(len(str(c[i])) for c in [head, *cells]) for i in range(5)]
    line = "  ".join("-" * w for w in widths)
    print(line)
    print("  ".join(str(h).ljust(w) for h, w in zip(head, widths, strict=True)))
    print(line)
    for c in cells:
        print("  ".join(str(x).ljust(w) for x, w in zip(c, widths, strict=True)))
    print(line)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one run (smoke)")
    parser.add_argument(
        "--only",
        default="1,3,4,5,6",
        help="items to run (1 includes 2 and 7@100k; 3 includes 7@10k)",
    )
    parser.add_argument("--runs", type=int, help="runs per measurement (default 5)")
    parser.add_argument(
        "--scale",
        type=int,
        action="append",
        default=[],
        help="also measure item 7 at this many files (e.g. 1000000)",
    )
    parser.add_argument("--workdir", type=Path, help="where data goes (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the generated data")
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "latest.json")
    args = parser.parse_args(argv)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))

    sizes = Sizes.quick() if args.quick else Sizes()
    if args.runs:
        sizes.runs = args.runs
    work = args.workdir or Path(tempfile.mkdtemp(prefix="syncd-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    legacy = os.environ.get("SYNCD_LEGACY_PYTHON") or None
    ctx = Context(work, sizes, legacy)
    if legacy is None:
        ctx.notes.append("SYNCD_LEGACY_PYTHON not set: item 3b (legacy client) not measured")
    started = time.time()
    info = machine()
    log(f"bench in {work} on {info['cpus']} CPUs ({info['cpu_model']}), sizes: {sizes}")
    try:
        wanted = [i.strip() for i in args.only.split(",") if i.strip()]
        for item in dict.fromkeys("1" if i in ("2", "7") else i for i in wanted):
            if item == "5" and not daemon_available():
                ctx.add(Row("5", "watch latency", "not measured", "", "`syncd run` missing", False))
                continue
            if item not in ITEMS:
                parser.error(f"unknown item {item}")
            section = time.time()
            ITEMS[item](ctx)
            log(f"item {item} done in {time.time() - section:.0f}s")
        for files in args.scale:
            scale_item(ctx, files)
        growth_rows(ctx)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    seconds = time.time() - started
    print()
    print_table(ctx.rows)
    print("emulator CPU seconds (median per measured process, not syncd's):")
    for name, cpu in ctx.emulator_cpu.items():
        print(f"  {name}: {cpu:.2f}s")
    for note in ctx.notes:
        print(f"note: {note}")
    missed = [r for r in ctx.rows if r.met is False]
    print(f"{len(ctx.rows)} rows, {len(missed)} missed; total {seconds / 60:.1f} min")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "machine": info,
                "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
                "seconds": round(seconds, 1),
                "sizes": vars(sizes) | {"growth": list(sizes.growth)},
                "quick": args.quick,
                "rows": [r.as_dict() for r in ctx.rows],
                "emulator_cpu_s": ctx.emulator_cpu,
                "notes": ctx.notes,
            },
            indent=2,
            default=str,
        )
        + "\n"
    )
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
