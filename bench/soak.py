"""`make soak`: the crash and fault suites with large N, several rounds, and a summary.

    .venv/bin/python bench/soak.py [--rounds 3] [--kills 20] [--images 5000] [--seed S]
                                   [--suite crash,faults] [--timeout 3600] [--out FILE]

Each round runs `tests/test_reliability_crash.py` and `tests/test_reliability_faults.py`
under pytest with SYNCD_SOAK_IMAGES / SYNCD_SOAK_KILLS / SYNCD_SOAK_SEED (seed + round) set;
the tests append their counters to SYNCD_SOAK_REPORT (JSON lines, see tests/invariants.py),
and this script sums them: kills survived, faults injected, inputs checked, duplicates found
(which must be 0). The exit status is non-zero if any round failed or any duplicate was found.
A failing round prints its seed: `SYNCD_SOAK_SEED=<seed> SYNCD_SOAK_KILLS=<n> pytest ...`
reproduces it (kill moments are chosen by that seed; thread timing still varies).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SUITES = {
    "crash": "tests/test_reliability_crash.py",
    "faults": "tests/test_reliability_faults.py",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="pytest runs, one seed each")
    parser.add_argument("--kills", type=int, default=20, help="SIGKILLs per crash test")
    parser.add_argument("--images", type=int, default=5000, help="images per crash test")
    parser.add_argument("--seed", type=int, default=None, help="first seed (default: random)")
    parser.add_argument("--suite", default="crash,faults", help="comma-separated: crash,faults")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per test")
    parser.add_argument("--out", type=Path, default=None, help="also write the summary here")
    args = parser.parse_args(argv)
    unknown = set(args.suite.split(",")) - set(SUITES)
    if unknown:
        parser.error(f"unknown suite(s): {', '.join(sorted(unknown))}")
    if args.rounds < 1 or args.kills < 0 or args.images < 1:
        parser.error("--rounds and --images must be at least 1, --kills at least 0")
    return args


def run_round(args: argparse.Namespace, seed: int, report: Path) -> tuple[int, float]:
    """One pytest run of the chosen suites; returns (exit status, seconds)."""
    env = {
        **os.environ,
        "SYNCD_SOAK_IMAGES": str(args.images),
        "SYNCD_SOAK_KILLS": str(args.kills),
        "SYNCD_SOAK_SEED": str(seed),
        "SYNCD_SOAK_REPORT": str(report),
    }
    files = [SUITES[name] for name in args.suite.split(",")]
    command = [
        sys.executable,
        "-m",
        "pytest",
        *files,
        "-q",
        "-p",
        "no:cacheprovider",
        f"--timeout={args.timeout}",
    ]
    started = time.monotonic()
    status = subprocess.run(command, cwd=REPO, env=env, check=False).returncode
    return status, time.monotonic() - started


def summarize(lines: list[dict[str, Any]]) -> dict[str, int]:
    """Sum the counters the tests recorded."""
    total = {
        "kills_survived": 0,
        "faults_injected": 0,
        "inputs_checked": 0,
        "duplicates_found": 0,
        "emulator_restarts": 0,
        "max_posts_per_id": 0,
        "reposted_ids": 0,
    }
    for line in lines:
        total["kills_survived"] += int(line.get("kills", 0))
        total["faults_injected"] += int(line.get("faults_injected", 0))
        total["inputs_checked"] += int(line.get("inputs_checked", 0))
        total["duplicates_found"] += int(line.get("duplicates", 0))
        total["emulator_restarts"] += int(line.get("restarts", 0))
        total["reposted_ids"] += int(line.get("reposted_ids", 0))
        total["max_posts_per_id"] = max(
            total["max_posts_per_id"], int(line.get("max_posts_per_id", 0))
        )
    return total


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    first_seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    rounds: list[dict[str, Any]] = []
    all_lines: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="syncd-soak-") as tmp:
        for n in range(args.rounds):
            seed = first_seed + n
            report = Path(tmp) / f"round-{n}.jsonl"
            print(f"--- round {n + 1}/{args.rounds}: seed {seed}", flush=True)
            status, seconds = run_round(args, seed, report)
            lines = (
                [json.loads(x) for x in report.read_text().splitlines() if x.strip()]
                if report.exists()
                else []
            )
            all_lines += lines
            rounds.append(
                {"seed": seed, "status": status, "seconds": round(seconds, 1), **summarize(lines)}
            )
            if status != 0:
                files = " ".join(SUITES[s] for s in args.suite.split(","))
                print(
                    f"round {n + 1} FAILED: reproduce with SYNCD_SOAK_SEED={seed} "
                    f"SYNCD_SOAK_KILLS={args.kills} SYNCD_SOAK_IMAGES={args.images} "
                    f".venv/bin/python -m pytest {files}",
                    flush=True,
                )
    total = summarize(all_lines)
    failed = [r["seed"] for r in rounds if r["status"] != 0]
    summary = {
        "rounds": len(rounds),
        "rounds_failed": len(failed),
        "failed_seeds": failed,
        "kills_per_test": args.kills,
        "images_per_test": args.images,
        **total,
        "per_round": rounds,
    }
    print()
    print("soak summary")
    for key in (
        "rounds",
        "rounds_failed",
        "kills_survived",
        "faults_injected",
        "emulator_restarts",
        "inputs_checked",
        "duplicates_found",
        "max_posts_per_id",
    ):
        print(f"  {key:<20} {summary[key]}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=2) + "\n")
    return 1 if failed or total["duplicates_found"] else 0


if __name__ == "__main__":
    sys.exit(main())
