"""delivery-worker: queue-backed email, SMS and voice delivery over Celery and Redis.

``celery -A worker worker`` finds the Celery application here.
"""

from worker.app import app

celery = app

__all__ = ["app", "celery"]
