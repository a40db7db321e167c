# The rdeploy web app, worker and beat (one image, three commands in docker-compose.yml).
# No R here: model code runs only in serving-image containers the worker starts on the
# host's container engine (docs/containers.md); this image carries the engine's client.
FROM python:3.11-slim-bookworm

# docker.io for its `docker` client only (the daemon is the host's, reached through the
# socket compose mounts into the worker); curl for the health check.
RUN apt-get update \
 && apt-get install -y --no-install-recommends docker.io curl \
 && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 1000 rdeploy
WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY --chown=rdeploy:rdeploy . .
ENV DJANGO_SETTINGS_MODULE=config.settings PYTHONUNBUFFERED=1
RUN DJANGO_DEBUG=1 RDEPLOY_DATA_DIR=/tmp/rdeploy python manage.py collectstatic --noinput -v0
USER rdeploy
EXPOSE 8000
HEALTHCHECK CMD curl -fs http://127.0.0.1:8000/healthz || exit 1
CMD ["gunicorn", "config.wsgi", "-b", "0.0.0.0:8000", "-w", "3", "-k", "gthread", "--threads", "8"]
