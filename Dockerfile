FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY worker ./worker
COPY tasks ./tasks
COPY delivery_sandbox ./delivery_sandbox
RUN pip install --no-cache-dir ".[flower]" && useradd --create-home delivery
USER delivery
CMD ["celery", "-A", "worker", "worker", "--loglevel", "INFO", "-E"]
