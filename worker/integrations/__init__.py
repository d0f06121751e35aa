"""Framework integrations; each is an optional extra (``pip install delivery-worker[django]``)."""
