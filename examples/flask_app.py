"""Enqueue from a Flask request handler.

    pip install delivery-worker flask
    source .demo.env          # or your own DELIVERY_* settings
    flask --app examples/flask_app run
    curl -X POST localhost:5000/signup -H 'content-type: application/json' \\
         -d '{"email": "ada@example.com", "name": "Ada"}'
"""

from __future__ import annotations

from typing import Any

from flask import Flask, jsonify, request

from worker.models import InvalidMessage
from worker.producer import lookup, send_email

app = Flask(__name__)


@app.post("/signup")
def signup() -> Any:
    data = request.get_json(silent=True) or {}
    try:
        result = send_email(
            {
                "to": [{"email": data.get("email", ""), "name": data.get("name", "")}],
                "from": {"email": "hello@example.org", "name": "Example"},
                "subject": "Welcome!",
                "text": "Thanks for signing up.",
                "html": "<p>Thanks for signing up.</p>",
            }
        )
    except InvalidMessage as exc:
        return jsonify(errors=exc.errors), 422  # each error names its field
    # The send happens in the workers; answer at once with the id to follow it by.
    return jsonify(delivery_id=result.id), 202


@app.get("/deliveries/<delivery_id>")
def delivery(delivery_id: str) -> Any:
    record = lookup(delivery_id)
    if record is None:
        return jsonify(error="unknown delivery"), 404
    return jsonify(state=record["state"], result=record.get("result"))
