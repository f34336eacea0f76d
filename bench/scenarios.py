"""The seven benchmark items of the issue, each a function that returns table rows.

Every item generates its own data under the run's temporary folder, runs syncd and its
floor or baselines on the same data against an emulator process, and compares medians from
this one run. Nothing here is asserted: missed targets are reported, not raised.
"""

from __future__ import annotations

import math
import os
import random
import signal
import subprocess
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from harness import (
    API_KEY,
    BASELINES,
    PYTHON,
    REPO,
    EmulatorProcess,
    Measured,
    Row,
    check_row,
    count,
    make_site,
    median,
    percentile,
    ratio_row,
    run_measured,
    wait_out_racy_window,
)

from syncd.sample import make_flat_tree

BATCH = 128


@dataclass
class Sizes:
    """How big each item is; `default()` is what `make bench` runs."""

    noop_files: int = 100_000
    noop_dirs: int = 500
    touched: int = 1_000
    initial_files: int = 10_000
    hash_bytes: int = 1_000_000_000
    watch_files: int = 200
    burst_files: int = 5_000
    ceiling_files: int = 20_000
    growth: tuple[int, ...] = (10_000, 100_000)
    runs: int = 5

    @classmethod
    def quick(cls) -> Sizes:
        """A smoke run in about a minute: same code paths, small sizes, one run."""
        return cls(2_000, 20, 100, 1_000, 50_000_000, 30, 500, 2_000, (1_000, 2_000), 1)


@dataclass
class Context:
    work: Path
    sizes: Sizes
    legacy_python: str | None
    settle_seconds: float = 1.0
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    emulator_cpu: dict[str, float] = field(default_factory=dict)
    growth: dict[int, dict[str, Any]] = field(default_factory=dict)

    def add(self, *rows: Row) -> None:
        self.rows.extend(rows)
        for row in rows:
            mark = "" if row.met is None else (" OK" if row.met else " MISSED")
            print(
                f"  [{row.item}] {row.metric}: {row.value}{row.unit} {row.target}{mark}", flush=True
            )


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)


def _tree(ctx: Context, name: str, files: int, dirs: int, size_range: tuple[int, int]) -> Path:
    root = ctx.work / name
    started = time.perf_counter()
    total = make_flat_tree(root, files=files, dirs=dirs, size_range=size_range, seed=len(name))
    log(
        f"wrote {files:,} images ({total / 1e6:,.0f} MB) in {name}/ "
        f"({time.perf_counter() - started:.1f}s)"
    )
    return root


def _requests_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, int]:
    keys = set(before.get("requests", {})) | set(after.get("requests", {}))
    delta = {k: after["requests"].get(k, 0) - before.get("requests", {}).get(k, 0) for k in keys}
    return {k: v for k, v in delta.items() if v}


def _delta_count(before: dict[str, Any], after: dict[str, Any], route: str) -> int:
    return count(after, route) - count(before, route)


def _writes(stats: dict[str, Any]) -> int:
    return sum(count(stats, r) for r in ("POST /inputs", "PATCH /inputs", "DELETE /inputs"))


# --- items 1, 2 and 7 (100k): the big unchanged tree -------------------------------------------


def noop_items(ctx: Context) -> None:
    """Items 1 and 2 (no-op local check and full no-op reconcile) plus item 7 at that size."""
    sz = ctx.sizes
    n = sz.noop_files
    root = _tree(ctx, "noop", n, sz.noop_dirs, (1_000, 2_000))
    with EmulatorProcess(ctx.work / "emu-noop") as emu:
        site = make_site(ctx.work / "site-noop", root, emu.url)
        wait_out_racy_window(root)
        log(f"initial sync of {n:,} images (setup for items 1, 2; item 7 at {n:,})")
        first = site.reconcile(emulator=emu)
        report = first.json()
        ctx.growth.setdefault(n, {}).update(
            initial_s=first.wall,
            initial_rss_mb=first.max_rss_mb,
            ledger_bytes=site.ledger_bytes(),
            initial_emulator_cpu_s=first.emulator_cpu,
        )
        if report["added"] != n:
            ctx.notes.append(f"setup: initial sync added {report['added']} of {n}")
        # one local pass so every hash is trusted (files are older than the racy window now)
        site.reconcile("--local", emulator=emu)

        log(f"item 1: no-op `reconcile --local` vs find, {sz.runs} runs")
        floor_argv = ["find", str(root), "-type", "f", "-printf", r"%s %T@ %i\n"]
        run_measured(floor_argv, stdout_to_devnull=True)  # warm the dentry/inode caches
        ours, floor, hashed, reqs, emu_cpu, quick = [], [], [], [], [], []
        for _ in range(sz.runs):
            floor.append(run_measured(floor_argv, stdout_to_devnull=True).check().wall)
            before = emu.stats()
            m = site.reconcile("--local", emulator=emu)
            after = emu.stats()
            ours.append(m.wall)
            hashed.append(m.json()["files_hashed"])
            quick.append(m.json()["quick_check"])
            reqs.append(after["requests_total"] - before["requests_total"])
            emu_cpu.append(m.emulator_cpu)
        ctx.emulator_cpu["1 no-op --local"] = median(emu_cpu)
        ctx.add(
            ratio_row("1", f"no-op --local, {n:,} files: syncd / find", ours, floor, at_most=3.0),
            check_row("1", "files hashed on the no-op --local pass", max(hashed), 0),
            check_row("1", "requests on the no-op --local pass", max(reqs), 0),
            check_row("1", "the no-op --local passes took the quick check", all(quick), True),
        )

        log(f"item 2: full no-op reconcile vs list-pages script, {sz.runs} runs")
        lister = [PYTHON, str(BASELINES / "list_pages.py"), emu.url, API_KEY]
        # the first full pass finds a marker that knows nothing of the remote yet (the local
        # passes left it): it takes the full path (scan, fold, plan) and records the listing;
        # measured on its own, the passes after it are the steady state a user re-runs
        full_floor = run_measured(lister, emulator=emu).check()
        full = site.reconcile(emulator=emu)
        ctx.add(
            ratio_row(
                "2",
                f"full no-op reconcile, full path (first pass, no marker), {n:,}: syncd / list",
                [full.wall],
                [full_floor.wall],
            ),
            check_row("2", "that first pass took the full path", full.json()["quick_check"], False),
        )
        ctx.growth[n].update(full_s=full.wall, full_rss_mb=full.max_rss_mb)
        ours, floor, writes, lists, hashed, rss, quick = [], [], [], [], [], [], []
        floor_cpu, ours_cpu = [], []
        for _ in range(sz.runs):
            f = run_measured(lister, emulator=emu).check()
            floor.append(f.wall)
            floor_cpu.append(f.emulator_cpu)
            before = emu.stats()
            m = site.reconcile(emulator=emu)
            after = emu.stats()
            ours.append(m.wall)
            ours_cpu.append(m.emulator_cpu)
            rss.append(m.max_rss_mb)
            writes.append(_writes(after) - _writes(before))
            lists.append(_delta_count(before, after, "GET /inputs"))
            hashed.append(m.json()["files_hashed"])
            quick.append(m.json()["quick_check"])
        ctx.emulator_cpu["2 full no-op reconcile (syncd)"] = median(ours_cpu)
        ctx.emulator_cpu["2 list-pages floor"] = median(floor_cpu)
        pages = n // 1000 + 1
        ctx.add(
            ratio_row(
                "2",
                f"full no-op reconcile, {n:,} inputs: syncd / list pages",
                ours,
                floor,
                at_most=1.5,
                detail={
                    "emulator_cpu_s_syncd": median(ours_cpu),
                    "emulator_cpu_s_floor": median(floor_cpu),
                },
            ),
            check_row("2", "list requests (per_page=1000)", max(lists), pages),
            check_row("2", "write requests on a full no-op pass", max(writes), 0),
            check_row("2", "files hashed on a full no-op pass", max(hashed), 0),
            check_row("2", "the no-op passes took the quick check", all(quick), True),
        )
        ctx.growth[n].update(noop_s=median(ours), noop_rss_mb=max(rss))

        log(f"item 1b: {sz.touched:,} files touched, `reconcile --local --dry-run`")
        touched = random.Random(7).sample(sorted(root.rglob("*.png")), sz.touched)
        stamp = time.time_ns()
        for path in touched:
            os.utime(path, ns=(stamp, stamp))
        ours, floor, hashed = [], [], []
        for _ in range(sz.runs):
            floor.append(run_measured(floor_argv, stdout_to_devnull=True).check().wall)
            m = site.reconcile("--local", "--dry-run", emulator=emu)
            ours.append(m.wall)
            hashed.append(m.json()["files_hashed"])
        ctx.add(
            ratio_row(
                "1",
                f"{sz.touched:,} touched, --local --dry-run: syncd / find",
                ours,
                floor,
                at_most=3.0,
            ),
            check_row(
                "1", f"files hashed with {sz.touched:,} touched", sorted(set(hashed)), [sz.touched]
            ),
        )


# --- items 3 and 7 (10k): initial sync ----------------------------------------------------------


def initial_sync(ctx: Context) -> None:
    """Item 3: initial sync of small images against the floor, the legacy client and a loop."""
    sz = ctx.sizes
    n = sz.initial_files
    root = _tree(ctx, "initial", n, max(1, n // 200), (2_000, 20_000))
    workers = 4
    with EmulatorProcess(ctx.work / "emu-initial") as emu:
        site = make_site(ctx.work / "site-initial", root, emu.url, sync={"workers": workers})
        wait_out_racy_window(root)
        env_legacy = {"CLARIFAI_API_BASE": emu.url, "CLARIFAI_API_KEY": API_KEY}
        results: dict[str, list[Measured]] = {"syncd": [], "floor": [], "legacy": [], "naive": []}
        internal: dict[str, list[float]] = {"floor": [], "legacy": [], "naive": []}
        posts, polls, batch_max = [], [], []
        log(f"item 3: initial sync of {n:,} images, {sz.runs} runs x 4 contenders")
        for run in range(sz.runs):
            contenders = [
                (
                    "floor",
                    [
                        PYTHON,
                        str(BASELINES / "post_batches.py"),
                        emu.url,
                        API_KEY,
                        str(root),
                        str(workers),
                    ],
                    None,
                ),
                (
                    "naive",
                    [PYTHON, str(BASELINES / "naive_post.py"), emu.url, API_KEY, str(root)],
                    None,
                ),
            ]
            if ctx.legacy_python:
                contenders.append(
                    (
                        "legacy",
                        [ctx.legacy_python, str(BASELINES / "legacy_bulk.py"), str(root)],
                        env_legacy,
                    )
                )
            for name, argv, env in contenders:
                emu.reset()
                r = run_measured(argv, env=env, emulator=emu).check()
                results[name].append(r)
                internal[name].append(r.json()["seconds"])
            # syncd last, so the emulator holds exactly what its ledger believes afterwards
            emu.reset()
            site.forget_ledger()
            before = emu.stats()
            m = site.reconcile(emulator=emu)
            after = emu.stats()
            results["syncd"].append(m)
            posts.append(_delta_count(before, after, "POST /inputs"))
            polls.append(_delta_count(before, after, "GET /inputs") - 1)  # minus the listing
            batch_max.append(after.get("inputs_posted", 0) - before.get("inputs_posted", 0))
            if m.json()["added"] != n:
                ctx.notes.append(f"item 3 run {run}: syncd added {m.json()['added']} of {n}")
        # item 7 at this size: a no-op full reconcile of the synced 10k site, the first one by
        # the full path (it leaves the in-step marker), the next by the quick check
        wait_out_racy_window(root)
        full = site.reconcile(emulator=emu)
        noop = site.reconcile(emulator=emu)
        ctx.growth.setdefault(n, {}).update(
            initial_s=median([m.wall for m in results["syncd"]]),
            initial_rss_mb=max(m.max_rss_mb for m in results["syncd"]),
            ledger_bytes=site.ledger_bytes(),
            full_s=full.wall,
            full_rss_mb=full.max_rss_mb,
            noop_s=noop.wall,
            noop_rss_mb=noop.max_rss_mb,
        )
    walls = {k: [m.wall for m in v] for k, v in results.items()}
    for name in walls:
        ctx.emulator_cpu[f"3 initial sync: {name}"] = median(
            [m.emulator_cpu for m in results[name]]
        )
    expected_posts = math.ceil(n / BATCH)
    inputs_posted = batch_max[0]
    ctx.add(
        check_row("3", f"POST /inputs for {n:,} images", sorted(set(posts)), [expected_posts]),
        check_row("3", "inputs posted by syncd (each once)", inputs_posted, n),
        Row(
            "3",
            "polling requests (GET /inputs by ids), median",
            median(polls),
            "",
            detail={"per_run": polls, "pages_of_pending_ids": expected_posts},
        ),
        ratio_row(
            "3a",
            "initial sync: syncd / floor (whole process)",
            walls["syncd"],
            walls["floor"],
            at_most=1.3,
            detail={"floor_post_only_s": [round(x, 3) for x in internal["floor"]]},
        ),
        ratio_row(
            "3a",
            "initial sync: syncd / floor (floor's POSTs only, bodies prebuilt)",
            walls["syncd"],
            internal["floor"],
        ),
    )
    if ctx.legacy_python:
        ctx.add(
            ratio_row(
                "3b",
                "speed-up over legacy 2.6.2 bulk_create_images",
                walls["legacy"],
                walls["syncd"],
                at_least=2.0,
            )
        )
    else:
        ctx.add(
            Row(
                "3b",
                "speed-up over legacy 2.6.2",
                "not measured",
                "",
                "SYNCD_LEGACY_PYTHON not set",
                False,
            )
        )
    ctx.add(
        ratio_row(
            "3c", "speed-up over one POST per image", walls["naive"], walls["syncd"], at_least=10.0
        )
    )
    _naive_at_latency(ctx)


#: Item 3c again with this much added to every answer (a network round trip), on fewer files.
LATENCY_FILES = 1_000
LATENCY_S = 0.02


def _naive_at_latency(ctx: Context) -> None:
    """On loopback a request costs ~1 ms of the emulator's CPU, so one POST per image is only a
    few times slower than batches. On a network the round trip is what it pays per image:
    the same comparison with 20 ms added to every answer (context for 3c, not its verdict)."""
    n = min(LATENCY_FILES, ctx.sizes.initial_files)
    root = _tree(ctx, "latency", n, max(1, n // 200), (2_000, 20_000))
    naive_argv = [PYTHON, str(BASELINES / "naive_post.py")]
    with EmulatorProcess(ctx.work / "emu-latency") as emu:
        site = make_site(ctx.work / "site-latency", root, emu.url, sync={"workers": 4})
        wait_out_racy_window(root)
        log(f"item 3c: {n:,} images with {LATENCY_S * 1000:.0f} ms per answer (1 run each)")
        emu.set_faults(latency=LATENCY_S)
        naive = run_measured([*naive_argv, emu.url, API_KEY, str(root)], emulator=emu).check()
        emu.reset()
        emu.set_faults(latency=LATENCY_S)
        ours = site.reconcile(emulator=emu)
    ctx.add(
        ratio_row(
            "3c",
            f"speed-up over one POST per image, {n:,} images, "
            f"{LATENCY_S * 1000:.0f} ms per answer (context)",
            [naive.wall],
            [ours.wall],
        )
    )


# --- item 4: hashing throughput -----------------------------------------------------------------


def hashing(ctx: Context) -> None:
    """Item 4: first sight of ~1 GB of images (`--local --dry-run`, no ledger) vs sha256sum."""
    sz = ctx.sizes
    per_file = 200_000
    files = max(1, sz.hash_bytes // per_file)
    root = _tree(ctx, "hash", files, max(1, files // 100), (150_000, 250_000))
    with EmulatorProcess(ctx.work / "emu-hash") as emu:
        site = make_site(ctx.work / "site-hash", root, emu.url)
        floor_argv = ["sh", "-c", f"find '{root}' -type f -print0 | xargs -0 sha256sum"]
        run_measured(floor_argv, stdout_to_devnull=True)  # warm: page cache holds the files
        log(f"item 4: hashing {files:,} files, {sz.runs} runs (warm page cache)")
        ours, floor, hashed, nbytes = [], [], [], []
        for _ in range(sz.runs):
            floor.append(run_measured(floor_argv, stdout_to_devnull=True).check().wall)
            site.forget_ledger()
            m = site.reconcile("--local", "--dry-run", emulator=emu)
            ours.append(m.wall)
            report = m.json()
            hashed.append(report["files_hashed"])
            nbytes.append(report["bytes_hashed"])
    ctx.add(
        ratio_row(
            "4",
            f"hash {nbytes[0] / 1e9:.2f} GB first sight: syncd / sha256sum",
            ours,
            floor,
            at_most=1.2,
            detail={
                "syncd_MB_per_s": round(nbytes[0] / 1e6 / median(ours), 1),
                "sha256sum_MB_per_s": round(nbytes[0] / 1e6 / median(floor), 1),
            },
        ),
        check_row("4", "files hashed", sorted(set(hashed)), [files]),
    )


# --- item 5: watch latency ----------------------------------------------------------------------


def _created(store: list[dict[str, Any]]) -> dict[str, float]:
    out = {}
    for item in store:
        stamp = datetime.fromisoformat(item["created_at"].replace("Z", "+00:00"))
        out[item["id"]] = stamp.timestamp()
    return out


def _wait_for(what: str, predicate: Any, timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    log(f"timed out waiting for {what}")
    return False


def watch_latency(ctx: Context) -> None:
    """Item 5: `syncd run` with settle 1 s; write-to-accepted latency and a burst."""
    settle = ctx.settle_seconds
    root = ctx.work / "watch"
    root.mkdir(parents=True, exist_ok=True)
    from syncd.model import derive_input_id
    from syncd.sample import png_bytes

    with EmulatorProcess(ctx.work / "emu-watch") as emu:
        site = make_site(
            ctx.work / "site-watch",
            root,
            emu.url,
            sync={"settle_seconds": settle, "rescan_interval": 0.0},
        )
        log_path = ctx.work / "site-watch" / "daemon.log"
        with log_path.open("wb") as daemon_log:
            daemon = subprocess.Popen(
                site.syncd("run"),
                env={**os.environ, **site.env},
                cwd=REPO,
                stdout=daemon_log,
                stderr=subprocess.STDOUT,
            )
            try:
                _watch_scenarios(ctx, site, emu, root, settle, derive_input_id, png_bytes)
            finally:
                daemon.send_signal(signal.SIGTERM)
                try:
                    daemon.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    daemon.kill()
                    daemon.wait()
                    ctx.notes.append("item 5: the daemon did not stop within 30 s of SIGTERM")
        if daemon.returncode not in (0, -signal.SIGKILL):
            ctx.notes.append(f"item 5: syncd run exited {daemon.returncode}")


def _watch_scenarios(ctx, site, emu, root, settle, derive_input_id, png_bytes) -> None:
    sz = ctx.sizes
    source = "bench"
    probe = root / "probe.png"
    probe.write_bytes(png_bytes(16, 16, seed=1))
    probe_id = derive_input_id(source, "probe.png")
    if not _wait_for("the daemon to start", lambda: probe_id in _created(emu.store()), 60):
        ctx.add(Row("5", "watch latency", "not measured", "", "daemon did not start", False))
        return

    log(f"item 5: {sz.watch_files} files dropped at random times (settle {settle} s)")
    rng = random.Random(5)
    written: dict[str, float] = {}
    (root / "drops").mkdir()
    for i in range(sz.watch_files):
        time.sleep(rng.expovariate(1 / 0.1))  # Poisson arrivals, mean 0.1 s apart
        rel = f"drops/f{i:04d}.png"
        data = png_bytes(16, 16, seed=1000 + i)
        with open(root / rel, "wb") as fh:
            fh.write(data)
        written[derive_input_id(source, rel)] = time.time()
    ok = _wait_for(
        "watched files", lambda: set(written) <= set(_created(emu.store())), 60 + settle * 4
    )
    created = _created(emu.store())
    latencies = [created[i] - t for i, t in written.items() if i in created]
    p50, p95 = percentile(latencies, 50), percentile(latencies, 95)
    ctx.add(
        check_row(
            "5",
            f"watch latency p95 ({len(latencies)} files), s",
            round(p95, 3),
            settle + 0.5,
            op=lambda v, e: v <= e,
            target=f"<= settle + 0.5 = {settle + 0.5}",
            detail={
                "p50_s": round(p50, 3),
                "max_s": round(max(latencies, default=0), 3),
                "all_accepted": ok,
            },
        ),
        Row("5", "watch latency p50, s", round(p50, 3), "s"),
    )

    log(f"item 5: {sz.burst_files:,} files dropped at once")
    before = emu.stats()
    known = len(emu.store())
    burst_root = root / "burst"
    started = time.time()
    make_flat_tree(burst_root, files=sz.burst_files, dirs=10, size_range=(2_000, 4_000), seed=9)
    written_s = time.time() - started
    ok = _wait_for("the burst", lambda: len(emu.store()) >= known + sz.burst_files, 300, 0.25)
    done = time.time() - started
    after = emu.stats()
    posts = _delta_count(before, after, "POST /inputs")
    posted = after.get("inputs_posted", 0) - before.get("inputs_posted", 0)
    full = math.ceil(sz.burst_files / BATCH)
    ctx.add(
        check_row(
            "5",
            f"burst of {sz.burst_files:,}: all accepted",
            ok,
            True,
            detail={
                "seconds_from_first_write": round(done, 2),
                "seconds_writing": round(written_s, 2),
            },
        ),
        check_row(
            "5",
            f"burst: POSTs (full batches = {full})",
            posts,
            full,
            detail={
                "inputs_posted": posted,
                "mean_batch": round(posted / posts, 1) if posts else 0,
            },
        ),
    )


# --- item 6: throughput at the API's ceiling ----------------------------------------------------


def ceiling(ctx: Context) -> None:
    """Item 6: emulator throttling at 15 req/s, syncd limited to 15 req/s, initial sync."""
    sz = ctx.sizes
    n = sz.ceiling_files
    rps = 15.0
    root = _tree(ctx, "ceiling", n, max(1, n // 200), (2_000, 20_000))
    with EmulatorProcess(ctx.work / "emu-ceiling", throttle_rps=rps) as emu:
        site = make_site(
            ctx.work / "site-ceiling",
            root,
            emu.url,
            sync={"max_requests_per_second": rps, "workers": 4},
        )
        wait_out_racy_window(root)
        log(f"item 6: initial sync of {n:,} images at {rps:g} req/s (1 run)")
        m = site.reconcile(emulator=emu)
        stats = emu.stats()
        created = sorted(_created(emu.store()).values())
    posts = count(stats, "POST /inputs")
    last_batch = n - (posts - 1) * BATCH if posts else 0
    span = created[-1] - created[0] if len(created) > 1 else float("nan")
    rate = (n - last_batch) / span if span and span > 0 else float("nan")
    ceiling_rate = rps * BATCH
    throttled = stats.get("throttled", 0)
    ctx.emulator_cpu["6 ceiling: syncd"] = m.emulator_cpu
    ctx.add(
        check_row(
            "6",
            f"adds throughput at {rps:g} req/s, inputs/s",
            round(rate, 1),
            0.9 * ceiling_rate,
            op=lambda v, e: v >= e,
            target=f">= 90% of {ceiling_rate:,.0f} = {0.9 * ceiling_rate:,.0f}",
            detail={
                "fraction_of_ceiling": round(rate / ceiling_rate, 3),
                "add_phase_s": round(span, 2),
                "posts": posts,
                "whole_pass_s": round(m.wall, 2),
                "requests": stats.get("requests", {}),
            },
        ),
        check_row("6", "429 answers received", throttled, 0),
    )


# --- item 7: memory and growth ------------------------------------------------------------------


def growth_rows(ctx: Context) -> None:
    """Item 7 from what items 1-3 (and --scale) measured: RSS, time and ledger per file."""
    base = run_measured([PYTHON, "-m", "syncd", "--help"]).check()
    sizes = sorted(ctx.growth)
    for n in sizes:
        g = ctx.growth[n]
        if "noop_rss_mb" not in g:
            continue
        target = "<= 150 MB" if n == 100_000 else ""
        met = g["noop_rss_mb"] <= 150 if n == 100_000 else None
        ctx.add(
            Row(
                "7",
                f"peak RSS, full no-op reconcile (quick check), {n:,} files",
                round(g["noop_rss_mb"], 1),
                " MB",
                target,
                met,
                {
                    "initial_sync_rss_mb": round(g.get("initial_rss_mb", 0), 1),
                    "initial_sync_s": round(g.get("initial_s", 0), 2),
                    "noop_s": round(g["noop_s"], 2),
                    "us_per_file_noop": round(g["noop_s"] / n * 1e6, 1),
                    "us_per_file_initial": round(g.get("initial_s", 0) / n * 1e6, 1),
                    "ledger_bytes_per_file": round(g.get("ledger_bytes", 0) / n, 1),
                    "process_base_rss_mb": round(base.max_rss_mb, 1),
                },
            )
        )
        if "full_rss_mb" in g:
            ctx.add(
                Row(
                    "7",
                    f"peak RSS, full no-op reconcile by the full path, {n:,} files",
                    round(g["full_rss_mb"], 1),
                    " MB",
                    target,
                    g["full_rss_mb"] <= 150 if n == 100_000 else None,
                    {"full_s": round(g["full_s"], 2)},
                )
            )
        if "initial_rss_mb" in g:
            met_i = g["initial_rss_mb"] <= 150 if n == 100_000 else None
            ctx.add(
                Row(
                    "7",
                    f"peak RSS, initial sync, {n:,} files",
                    round(g["initial_rss_mb"], 1),
                    " MB",
                    target,
                    met_i,
                )
            )
        ctx.add(
            Row(
                "7",
                f"ledger size per file, {n:,} files",
                round(g.get("ledger_bytes", 0) / n, 1),
                " B",
            )
        )
    if len(sizes) >= 2:
        small, large = sizes[0], sizes[-1]
        gs, gl = ctx.growth[small], ctx.growth[large]
        for what, key in (
            ("no-op reconcile, quick check", "noop_s"),
            ("no-op reconcile, full path", "full_s"),
            ("initial sync", "initial_s"),
        ):
            if key in gs and key in gl:
                per_s, per_l = gs[key] / small, gl[key] / large
                ratio = per_l / per_s
                ctx.add(
                    Row(
                        "7",
                        f"time per file {large:,} vs {small:,} ({what})",
                        round(ratio, 3),
                        "x",
                        "<= 1.25x (flat)",
                        ratio <= 1.25,
                    )
                )
        for what, key in (
            ("no-op reconcile, quick check", "noop_rss_mb"),
            ("no-op reconcile, full path", "full_rss_mb"),
            ("initial sync", "initial_rss_mb"),
        ):
            if key in gs and key in gl:
                b = base.max_rss_mb
                per_s = (gs[key] - b) / small
                per_l = (gl[key] - b) / large
                ratio = per_l / per_s if per_s > 0 else float("nan")
                ctx.add(
                    Row(
                        "7",
                        f"RSS above base per file {large:,} vs {small:,} ({what})",
                        round(ratio, 3),
                        "x",
                        "<= 1.25x (flat)",
                        ratio <= 1.25,
                        {
                            "kb_per_file_small": round(per_s * 1024, 2),
                            "kb_per_file_large": round(per_l * 1024, 2),
                        },
                    )
                )


def scale_item(ctx: Context, files: int) -> None:
    """Item 7 at a larger size (`--scale`): initial sync and a no-op reconcile, one run."""
    root = _tree(ctx, f"scale{files}", files, max(1, files // 200), (1_000, 2_000))
    with EmulatorProcess(ctx.work / f"emu-scale{files}") as emu:
        site = make_site(ctx.work / f"site-scale{files}", root, emu.url)
        wait_out_racy_window(root)
        log(f"item 7: initial sync of {files:,} images (1 run)")
        first = site.reconcile(emulator=emu)
        site.reconcile("--local", emulator=emu)
        full = site.reconcile(emulator=emu)  # the full path: leaves the marker with the listing
        noop = site.reconcile(emulator=emu)  # the quick check
        ctx.growth[files] = {
            "initial_s": first.wall,
            "initial_rss_mb": first.max_rss_mb,
            "ledger_bytes": site.ledger_bytes(),
            "full_s": full.wall,
            "full_rss_mb": full.max_rss_mb,
            "noop_s": noop.wall,
            "noop_rss_mb": noop.max_rss_mb,
        }
