"""Floor for an initial sync: POST prebuilt base64 batches of 128 from `workers` threads over
one keep-alive session. Bodies are built (files read, base64, JSON) before the clock starts.

Usage: post_batches.py URL KEY ROOT WORKERS
  ->  prints {"inputs": N, "posts": P, "build_seconds": B, "seconds": S}
"""

import base64
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import requests
from requests.adapters import HTTPAdapter

BATCH = 128


def image_files(root):
    found = []
    for dirpath, _, names in os.walk(root):
        found += [os.path.join(dirpath, n) for n in names if n.endswith((".png", ".jpg"))]
    return sorted(found)


def main() -> int:
    url, key, root, workers = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    t0 = time.perf_counter()
    files = image_files(root)
    bodies = []
    for start in range(0, len(files), BATCH):
        inputs = []
        for i, path in enumerate(files[start : start + BATCH], start):
            with open(path, "rb") as fh:
                data = base64.b64encode(fh.read()).decode("ascii")
            inputs.append({"id": f"floor-{i:07d}", "data": {"image": {"base64": data}}})
        bodies.append(json.dumps({"inputs": inputs}, separators=(",", ":")).encode())
    build = time.perf_counter() - t0

    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=1, pool_maxsize=workers, max_retries=0)
    session.mount("http://", adapter)
    session.headers.update({"Authorization": f"Key {key}", "Content-Type": "application/json"})

    def post(body):
        resp = session.post(f"{url}/v2/inputs", data=body, timeout=120)
        resp.raise_for_status()

    started = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(post, bodies))
    seconds = time.perf_counter() - started
    print(
        json.dumps(
            {"inputs": len(files), "posts": len(bodies), "build_seconds": build, "seconds": seconds}
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
