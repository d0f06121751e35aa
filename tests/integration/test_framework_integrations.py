"""The framework integrations against the real stack: each runs in its own process, as an
application would, with only the ``DELIVERY_*`` environment pointing it at redis-server; real
Celery workers send, and the sandbox shows what arrived."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run_app(code: str, stack_env: dict[str, str]) -> Any:
    """Run ``code`` in a fresh interpreter; its last stdout line is JSON."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env={**os.environ, **stack_env, "PYTHONPATH": str(EXAMPLES)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def settle(client: Any, delivery_id: str) -> dict[str, Any]:
    outcome: dict[str, Any] = client.AsyncResult(delivery_id).get(timeout=60)
    return outcome


DJANGO_APP = """
    import json
    import django
    from django.conf import settings

    settings.configure(
        EMAIL_BACKEND="worker.integrations.django_email.EmailBackend",
        DELIVERY_WORKER_EMAIL_PROVIDER="postal",
        DEFAULT_FROM_EMAIL="Shop <shop@example.org>",
    )
    django.setup()
    from django.core.mail import EmailMultiAlternatives, send_mail
    from worker.models import InvalidMessage

    count = send_mail("Plain hello", "Sent with send_mail()", None, ["ada@example.com"])
    rich = EmailMultiAlternatives(
        "Rich hello", "text part", None, ["Bo <bo@example.com>"], cc=["cy@example.com"]
    )
    rich.attach_alternative("<p>html part</p>", "text/html")
    rich.attach("report.csv", "a,b\\n1,2\\n", "text/csv")
    rich.send()
    try:
        send_mail("Bad", "x", None, ["not-an-address"])
        refused = None
    except InvalidMessage as exc:
        refused = exc.errors
    silent = send_mail("Bad", "x", None, ["nope"], fail_silently=True)
    print(json.dumps({"count": count, "rich": rich.delivery_id, "refused": refused,
                      "silent": silent}))
"""


def test_django_send_mail_reaches_the_sandbox(stack_env, sandbox, client, worker_proc) -> None:
    out = run_app(DJANGO_APP, stack_env)
    assert out["count"] == 1 and out["silent"] == 0
    assert out["refused"][0]["field"] == "to.0.email"
    assert settle(client, out["rich"])["status"] == "sent"

    def arrived() -> dict[str, dict[str, Any]]:
        return {m["fields"]["subject"]: m for m in sandbox.messages("postal")}

    deadline = time.monotonic() + 60
    while len(arrived()) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    got = arrived()
    assert set(got) == {"Plain hello", "Rich hello"}
    plain, rich = got["Plain hello"]["fields"], got["Rich hello"]["fields"]
    assert plain["plain_body"] == "Sent with send_mail()"
    assert plain["from"] == "Shop <shop@example.org>"
    assert rich["html_body"] == "<p>html part</p>" and rich["plain_body"] == "text part"
    assert rich["to"] == ["Bo <bo@example.com>"] and rich["cc"] == ["cy@example.com"]
    assert [a["name"] for a in rich["attachments"]] == ["report.csv"]


FLASK_APP = """
    import json
    from flask_app import app

    web = app.test_client()
    ok = web.post("/signup", json={"email": "ada@example.com", "name": "Ada"})
    bad = web.post("/signup", json={"email": "nope"})
    print(json.dumps({"ok": [ok.status_code, ok.get_json()],
                      "bad": [bad.status_code, bad.get_json()]}))
"""


def test_flask_example_enqueues_from_a_handler(stack_env, sandbox, client, worker_proc) -> None:
    out = run_app(FLASK_APP, stack_env)
    status, body = out["ok"]
    assert status == 202
    outcome = settle(client, body["delivery_id"])
    assert outcome["status"] == "sent" and outcome["channel"] == "email"
    assert out["bad"][0] == 422 and out["bad"][1]["errors"][0]["field"] == "to.0.email"
    [message] = sandbox.messages()
    assert message["recipients"] == ["ada@example.com"]
    lookup = run_app(
        f"""
        import json
        from flask_app import app
        r = app.test_client().get("/deliveries/{body["delivery_id"]}")
        print(json.dumps([r.status_code, r.get_json()]))
        """,
        stack_env,
    )
    assert lookup == [200, {"state": "sent", "result": lookup[1]["result"]}]


FASTAPI_APP = """
    import json
    from fastapi.testclient import TestClient
    from fastapi_app import app

    web = TestClient(app)
    ok = web.post("/verify", json={"phone": "+33612345670", "code": "4242"})
    bad = web.post("/verify", json={"phone": "0612", "code": "1"})
    print(json.dumps({"ok": [ok.status_code, ok.json()], "bad": [bad.status_code, bad.json()]}))
"""


def test_fastapi_example_enqueues_from_a_handler(stack_env, sandbox, client, worker_proc) -> None:
    out = run_app(FASTAPI_APP, stack_env)
    status, body = out["ok"]
    assert status == 202
    assert settle(client, body["delivery_id"])["status"] == "sent"
    assert out["bad"][0] == 422 and out["bad"][1]["detail"][0]["field"] == "to.0"
    [message] = sandbox.messages("smspartner")
    assert message["fields"]["message"] == "Your code is 4242"
