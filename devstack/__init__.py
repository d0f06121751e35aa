"""Local-stack tooling: real redis-server, provider sandbox, Celery workers and Flower processes
for the tests, the benchmarks and ``delivery-worker demo``.

Not part of the production import graph: nothing in ``worker`` or ``tasks`` imports this
package (the CLI's ``demo`` command loads :mod:`devstack.demo` only when it runs). It needs
the provider sandbox (``delivery_sandbox``), which ships in the same source tree.
"""

from devstack.processes import (
    Proc,
    free_port,
    running,
    sandbox_env,
    start_flower,
    start_redis,
    start_sandbox,
    start_worker,
    wait_for_port,
)

__all__ = [
    "Proc",
    "free_port",
    "running",
    "sandbox_env",
    "start_flower",
    "start_redis",
    "start_sandbox",
    "start_worker",
    "wait_for_port",
]
