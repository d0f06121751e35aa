"""Enqueue from a FastAPI request handler.

    pip install delivery-worker fastapi uvicorn
    source .demo.env          # or your own DELIVERY_* settings
    uvicorn --app-dir examples fastapi_app:app
    curl -X POST localhost:8000/verify -H 'content-type: application/json' \\
         -d '{"phone": "+33612345678", "code": "4242"}'
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

from worker.models import InvalidMessage
from worker.producer import lookup, send_sms

app = FastAPI()


class Verify(BaseModel):
    phone: str
    code: str


@app.post("/verify", status_code=202)
def verify(body: Verify) -> dict[str, Any]:
    # A plain ``def``: FastAPI runs it in a thread pool, so the (short) Redis publish does not
    # block the event loop.
    try:
        result = send_sms(
            {"provider": "smspartner", "to": [body.phone], "text": f"Your code is {body.code}"}
        )
    except InvalidMessage as exc:
        raise HTTPException(status_code=422, detail=exc.errors) from None
    return {"delivery_id": result.id}


@app.get("/deliveries/{delivery_id}")
def delivery(delivery_id: str) -> dict[str, Any]:
    record = lookup(delivery_id)
    if record is None:
        raise HTTPException(status_code=404, detail="unknown delivery")
    return {"state": record["state"], "result": record.get("result")}
