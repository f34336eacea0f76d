"""List every input with the official legacy client `clarifai==2.6.2`; print them as JSON.

Run by tests/test_engine.py under $SYNCD_LEGACY_PYTHON (a separate virtualenv: the client pins
protobuf 3.x). Needs CLARIFAI_API_BASE (the emulator URL) and CLARIFAI_API_KEY. The client uses
the short /v2 routes. Standard library + clarifai only: it cannot import syncd.

Output: a JSON list of {"id", "concepts": {concept id: 1.0 present / 0.0 absent}, "metadata"}.
"""

import json
import os
import sys

from clarifai.rest import ClarifaiApp


def read_back(app):
    out = []
    for image in app.inputs.get_all():
        concepts = {}
        for name in image.concepts or []:
            concepts[name] = 1.0
        for name in image.not_concepts or []:
            concepts[name] = 0.0
        out.append(
            {"id": image.input_id, "concepts": concepts, "metadata": dict(image.metadata or {})}
        )
    return out


def main():
    app = ClarifaiApp(api_key=os.environ["CLARIFAI_API_KEY"])
    json.dump(read_back(app), sys.stdout, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
