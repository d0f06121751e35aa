"""A producer with no delivery-worker import: plain Celery and kombu, as any application.

Run as ``python bare_client.py BROKER BACKEND < cases.json``. Each case is either
``{"kind": "task", "id", "name", "args", "kwargs"}`` (``send_task`` by name) or
``{"kind": "raw", "headers", "body_b64" | "deep_json", "content_type", "content_encoding"}``
(published to the broker as bytes, no serialization). Prints how many were published.
"""

from __future__ import annotations

import base64
import json
import sys

from celery import Celery


def main() -> int:
    broker, backend = sys.argv[1], sys.argv[2]
    cases = json.load(sys.stdin)
    app = Celery("bare", broker=broker, backend=backend)
    sent = 0
    with app.producer_or_acquire() as producer:
        for case in cases:
            if case["kind"] == "task":
                app.send_task(
                    case["name"],
                    args=case["args"],
                    kwargs=case["kwargs"],
                    task_id=case["id"],
                    queue="delivery",
                    producer=producer,
                )
            else:
                if "deep_json" in case:
                    depth = case["deep_json"]
                    body = ("[" * depth + "]" * depth).encode()
                else:
                    body = base64.b64decode(case["body_b64"])
                producer.publish(
                    body,
                    routing_key="delivery",
                    exchange="",
                    headers=case["headers"],
                    content_type=case["content_type"],
                    content_encoding=case["content_encoding"],
                )
            sent += 1
    print(sent)
    return 0


if __name__ == "__main__":
    sys.exit(main())
