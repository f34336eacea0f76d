"""`make demo`: the whole product on one screen, with no secrets and no network.

Starts the emulator, writes a sample dataset (class folders, JSON and text sidecars, one broken
sidecar), runs `syncd reconcile`, relabels one image and deletes another, reconciles again,
and prints `syncd status` and what the remote now holds. Everything lives in ./demo.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

from syncd.sample import make_dataset

DEMO_KEY = "demo-key-not-a-secret"


def _say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m" if sys.stdout.isatty() else f"\n== {text}", flush=True)


def _run(args: list[str], env: dict[str, str], cwd: Path) -> int:
    print("$ syncd " + " ".join(args), flush=True)
    proc = subprocess.run([sys.executable, "-m", "syncd", *args], env=env, cwd=cwd, check=False)
    print(f"(exit code {proc.returncode})", flush=True)
    return proc.returncode


def _start_emulator(workdir: Path) -> tuple[subprocess.Popen[str], str]:
    args = ["--port", "0", "--api-key", DEMO_KEY, "--state", str(workdir / "emulator.db")]
    args += ["--processing-delay", "0.5", "--delete-delay", "0.5"]
    # the child keeps its own copy of the log's descriptor; ours is closed at once
    with (workdir / "emulator.log").open("w") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "syncd", "emulator", *args],
            stdout=subprocess.PIPE,
            stderr=log_file,
            text=True,
        )
    assert proc.stdout is not None
    first = proc.stdout.readline().strip()
    if not first.startswith("listening on "):
        proc.kill()
        raise SystemExit(f"the emulator did not start: {first!r}")
    return proc, first.removeprefix("listening on ")


def main() -> int:
    workdir = Path("demo").resolve()
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir()
    _say("starting the local emulator of the Clarifai inputs API")
    emulator, url = _start_emulator(workdir)
    try:
        print(f"emulator at {url}")
        _say("writing a sample dataset (with one broken sidecar)")
        info = make_dataset(workdir / "dataset", per_class=8, broken_sidecar=True)
        print(f"{len(info.images)} images, {len(info.sidecars)} sidecars in {info.root}")
        for path in info.sidecars[:3]:
            print(f"  {path}: {(info.root / path).read_text().strip()[:80]}")
        print(f"  broken: {', '.join(info.broken)}")
        config = workdir / "syncd.toml"
        config.write_text(
            "[source]\n"
            'root = "dataset"\nname = "pets-demo"\nlabels_from_dirs = true\n\n'
            "[remote]\n"
            f'api_base = "{url}"\napi_key_env = "SYNCD_DEMO_KEY"\n\n'
            "[sync]\nmax_requests_per_second = 50\npoll_timeout = 30\n\n"
            '[ledger]\npath = "ledger.db"\n\n[log]\nlevel = "warning"\n'
        )
        env = {**os.environ, "SYNCD_DEMO_KEY": DEMO_KEY}
        cfg = ["--config", str(config)]

        _say("first pass: everything is new (the broken sidecar holds its image)")
        _run(["reconcile", *cfg], env, workdir)

        _say("second pass: nothing changed, so nothing is sent")
        _run(["reconcile", *cfg], env, workdir)

        relabel = next(p for p in info.sidecars if p.endswith(".json") and p not in info.broken)
        doomed = info.images[-1]
        _say(f"relabel {relabel}, delete {doomed}")
        (info.root / relabel).write_text(
            json.dumps({"concepts": {"cute": True, "blurry": False}, "metadata": {"edited": True}})
        )
        (info.root / doomed).unlink()
        _run(["reconcile", "--explain", *cfg], env, workdir)

        _say("syncd status")
        _run(["status", *cfg], env, workdir)

        _say("what the remote holds (emulator control API)")
        with urllib.request.urlopen(f"{url}/_emulator/store", timeout=10) as resp:
            store = json.load(resp)
        inputs = store.get("inputs", store) if isinstance(store, dict) else store
        for item in inputs[:5]:
            data = item.get("data", {})
            concepts = ", ".join(
                f"{c['id']}={c.get('value', 0):g}" for c in data.get("concepts", [])
            )
            path = data.get("metadata", {}).get("syncd", {}).get("path")
            print(f"  {item['id']}  {path}  [{concepts}]  status {item['status']['code']}")
        print(f"  ... {len(inputs)} inputs in all")
    finally:
        emulator.terminate()
        emulator.wait(timeout=10)
    _say("done: see ./demo (config, ledger.db, dataset) and README.md for what to try next")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
