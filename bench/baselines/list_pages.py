"""Floor for a full no-op reconcile: only page through GET /v2/inputs?per_page=1000.

Usage: list_pages.py URL KEY  ->  prints {"inputs": N, "requests": R, "seconds": S}
"""

import json
import sys
import time

import requests


def main() -> int:
    url, key = sys.argv[1], sys.argv[2]
    session = requests.Session()
    session.headers["Authorization"] = f"Key {key}"
    started = time.perf_counter()
    total = requests_sent = 0
    page = 1
    while True:
        resp = session.get(f"{url}/v2/inputs", params={"page": page, "per_page": 1000}, timeout=60)
        resp.raise_for_status()
        requests_sent += 1
        items = resp.json()["inputs"]
        total += len(items)
        if len(items) < 1000:
            break
        page += 1
    seconds = time.perf_counter() - started
    print(json.dumps({"inputs": total, "requests": requests_sent, "seconds": seconds}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
