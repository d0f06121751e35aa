"""The Django settings delivery-worker needs (add them to your project's settings.py).

    pip install "delivery-worker[django]"
    source .demo.env          # or your own DELIVERY_* settings

Then ``django.core.mail.send_mail(...)``, ``EmailMessage(...).send()`` and
``EmailMultiAlternatives`` enqueue through delivery-worker.
"""

EMAIL_BACKEND = "worker.integrations.django_email.EmailBackend"
# Optional: a fixed provider (postal, emailmassivo, mailpartner); left out, email is routed.
DELIVERY_WORKER_EMAIL_PROVIDER = "postal"
# Optional: publish to this queue instead of the first of DELIVERY_QUEUES.
DELIVERY_WORKER_QUEUE = None
