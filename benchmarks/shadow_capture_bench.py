"""How fast rdeploy reads SageMaker data capture lines into a shadow's answers (docs/shadow.md).

    .venv/bin/python benchmarks/shadow_capture_bench.py [--lines 20000] [--rows 10]

Parses the same capture line (a request of ``--rows`` iris rows and its answer, in
SageMaker's JSON Lines format) ``--lines`` times through the reader the reconciler uses,
bounds and depth check included, and prints lines per second. S3 and the database are not
involved: a collection's time beyond this is its list and ranged GET calls.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
os.environ.setdefault("DJANGO_DEBUG", "1")


def capture_line(rows: int) -> bytes:
    request = [{"Sepal.Length": 5.1, "Sepal.Width": 3.5, "Petal.Length": 1.4, "Petal.Width": 0.2}] * rows
    return json.dumps(
        {
            "captureData": {
                "endpointInput": {
                    "observedContentType": "application/json",
                    "mode": "INPUT",
                    "data": json.dumps(request),
                    "encoding": "JSON",
                },
                "endpointOutput": {
                    "observedContentType": "application/json",
                    "mode": "OUTPUT",
                    "data": json.dumps({"predictions": ["setosa"] * rows}),
                    "encoding": "JSON",
                },
            },
            "eventMetadata": {"eventId": "4651a1bf-4b00", "inferenceTime": "2026-12-03T21:10:05Z"},
            "eventVersion": "0",
        }
    ).encode()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=20000)
    parser.add_argument("--rows", type=int, default=10)
    arguments = parser.parse_args()

    import django

    django.setup()
    from deployer.targets.sagemaker.shadow_capture import captured_answer

    line = capture_line(arguments.rows)
    started = time.perf_counter()
    for _ in range(arguments.lines):
        captured_answer(line)
    elapsed = time.perf_counter() - started
    print(
        f"{arguments.lines} capture lines of {len(line)} bytes ({arguments.rows} rows each): "
        f"{elapsed:.2f} s, {arguments.lines / elapsed:.0f} lines/s"
    )


if __name__ == "__main__":
    main()
