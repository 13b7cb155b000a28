# One image for every Darkroom service (producer, workers); docker-compose.yml picks the command.
# Build with GPU support: docker compose build --build-arg EXTRAS=gpu
FROM python:3.11-slim

ARG EXTRAS=""
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    DARKROOM_DATA_DIR=/data KERAS_HOME=/models/keras

WORKDIR /app
COPY pyproject.toml README.md ./
COPY darkroom ./darkroom
COPY worker ./worker
COPY producer ./producer
COPY tasks ./tasks
COPY storage ./storage
RUN pip install ".${EXTRAS:+[$EXTRAS]}" \
    && useradd --create-home --uid 1000 darkroom \
    && mkdir -p /data /inbox /models/keras && chown -R darkroom /data /inbox /models

USER darkroom
ENTRYPOINT ["darkroom"]
CMD ["--help"]
