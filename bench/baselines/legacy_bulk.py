"""Baseline for an initial sync: the legacy `clarifai==2.6.2` client's bulk_create_images in
batches of 128 (its maximum), one batch after another, as its users wrote it.

Runs under $SYNCD_LEGACY_PYTHON (its own virtualenv); needs CLARIFAI_API_BASE and
CLARIFAI_API_KEY. Standard library + clarifai only.
Usage: legacy_bulk.py ROOT  ->  prints {"inputs": N, "posts": P, "seconds": S}
"""

import json
import os
import sys
import time

from clarifai.rest import ClarifaiApp, Image

BATCH = 128


def main():
    root = sys.argv[1]
    files = []
    for dirpath, _, names in os.walk(root):
        files += [os.path.join(dirpath, n) for n in names if n.endswith((".png", ".jpg"))]
    files.sort()
    started = time.perf_counter()
    app = ClarifaiApp(api_key=os.environ["CLARIFAI_API_KEY"])
    posts = 0
    for start in range(0, len(files), BATCH):
        images = [
            Image(filename=path, image_id=f"legacy-{i:07d}")
            for i, path in enumerate(files[start : start + BATCH], start)
        ]
        app.inputs.bulk_create_images(images)
        posts += 1
    seconds = time.perf_counter() - started
    print(json.dumps({"inputs": len(files), "posts": posts, "seconds": seconds}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
