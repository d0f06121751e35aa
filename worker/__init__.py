"""delivery-worker: queue-backed email, SMS and voice delivery over Celery and Redis.

``celery -A worker worker`` finds the Celery application here; ``delivery_status(id)`` reads a
sent delivery's per-recipient state and history (``worker.tracking.status``).
"""

from worker.app import app
from worker.tracking.status import delivery_status

celery = app

__all__ = ["app", "celery", "delivery_status"]
