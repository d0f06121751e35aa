"""Test-only: ``celery worker`` whose main process dies on a marker message.

Stands in for a bug that still kills a worker's main process after the guard's checks (the
deep message used to, while the prefork pool pickled it). Patched here, in the test's worker
process only: the per-task request class Celery's strategy builds (``create_request_cls``)
gets an ``execute_using_pool`` (main process, before the pool) that calls ``os._exit`` when
the task's arguments contain ``MAIN-CRASH-MARKER``.

Run as ``python crashing_worker.py -A worker worker ...`` (the ``celery`` command's arguments).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from celery.__main__ import main
from celery.worker import strategy

MARKER = "MAIN-CRASH-MARKER"
_create = strategy.create_request_cls


def _crashing_request_cls(*args: Any, **kwargs: Any) -> Any:
    cls = _create(*args, **kwargs)
    execute = cls.execute_using_pool

    def execute_using_pool(self: Any, pool: Any, **options: Any) -> Any:
        if MARKER in repr(self.args):
            os._exit(70)
        return execute(self, pool, **options)

    cls.execute_using_pool = execute_using_pool
    return cls


strategy.create_request_cls = _crashing_request_cls

if __name__ == "__main__":
    sys.argv[0] = "celery"
    sys.exit(main())
