"""Baseline for an initial sync: a naive loop, one POST per image, on a keep-alive session.

Usage: naive_post.py URL KEY ROOT  ->  prints {"inputs": N, "posts": N, "seconds": S}
"""

import base64
import json
import os
import sys
import time

import requests


def main() -> int:
    url, key, root = sys.argv[1], sys.argv[2], sys.argv[3]
    files = []
    for dirpath, _, names in os.walk(root):
        files += [os.path.join(dirpath, n) for n in names if n.endswith((".png", ".jpg"))]
    files.sort()
    session = requests.Session()
    session.headers["Authorization"] = f"Key {key}"
    started = time.perf_counter()
    for i, path in enumerate(files):
        with open(path, "rb") as fh:
            data = base64.b64encode(fh.read()).decode("ascii")
        body = {"inputs": [{"id": f"naive-{i:07d}", "data": {"image": {"base64": data}}}]}
        session.post(f"{url}/v2/inputs", json=body, timeout=60).raise_for_status()
    seconds = time.perf_counter() - started
    print(json.dumps({"inputs": len(files), "posts": len(files), "seconds": seconds}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
