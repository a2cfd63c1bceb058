# The example orders service: `docker compose up` runs it next to a NATS server with JetStream.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The library, installed from its own files only (what its wheel holds) with the example extra: uvicorn,
# prometheus-client (the app serves /metrics) and SQLAlchemy with aiosqlite (the orders, the outbox). /data
# holds the orders' SQLite file (ORDERS_DB), owned by the app's user (a volume mounted there keeps it).
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY jetstream_fastapi ./jetstream_fastapi
RUN pip install '.[example]' \
    && rm -rf /src \
    && useradd --create-home --uid 10001 app \
    && mkdir /data && chown app /data

# The app is not part of the package: it runs from its folder (`python -m example_app` in /app).
WORKDIR /app
COPY example_app ./example_app
USER app

# Listen on every interface inside the container; NATS_URL is set by docker-compose.yml (without it the
# app starts an embedded nats-server, which is fine for a quick `docker run` but keeps no data).
ENV HOST=0.0.0.0 \
    PORT=8000 \
    ORDERS_DB=/data/orders.db
EXPOSE 8000

# Exec form: python is PID 1 and gets SIGTERM from `docker stop`, shuts down gracefully, exits 0.
CMD ["python", "-m", "example_app"]
