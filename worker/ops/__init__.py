"""Operator tools, apart from the delivery path: the ``delivery-worker`` command line
(:mod:`worker.ops.cli`) and what it does to providers and deliveries
(:mod:`worker.ops.operations`: pause, resume, sweep, dead-letter replay, balance checks).

The delivery path never imports this package; the periodic tasks (``tasks.sweep``,
``tasks.check_balances``) call into it.
"""
