"""Prometheus metrics: what each attempt records (:mod:`.record`), what is read from the
shared Redis state at scrape time (:mod:`.shared`), the ``/metrics`` exporter (:mod:`.exporter`)
and ``delivery-worker top`` (:mod:`.top`).

The delivery pipeline calls the small facade in :mod:`worker.metrics.record` from a few places
(the gate, the send step, the outcomes); nothing there touches Redis. See
docs/metrics.md for the multiprocess design and the metric table.
"""
