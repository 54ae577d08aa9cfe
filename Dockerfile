# Image for the worker and the replay tool (see docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# The whole context: the package, its schemas and data/ (replayed by the `replay` service).
COPY . .
RUN pip install . \
    && useradd --system --uid 10001 --home-dir /app --no-create-home feedback \
    && chown feedback /app

# Faust's default data directory is relative to the working directory, so /app is writable.
USER feedback
ENV FEEDBACK_STREAM_WEB_BIND=0.0.0.0
EXPOSE 6066

CMD ["feedback-stream", "worker"]
