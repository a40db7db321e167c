# The rdeploy web app, worker and beat (one image, three commands in docker-compose.yml).
# R is included: the worker inspects models and runs local endpoints with it.
FROM python:3.11-slim-bookworm

RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      r-base-core r-cran-rserve r-cran-jsonlite r-cran-randomforest r-cran-ranger r-cran-glmnet \
      r-cran-rpart r-cran-e1071 haproxy curl \
 && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 1000 rdeploy
WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY --chown=rdeploy:rdeploy . .
ENV RDEPLOY_DATA_DIR=/data DJANGO_SETTINGS_MODULE=config.settings PYTHONUNBUFFERED=1
RUN mkdir -p /data && chown rdeploy:rdeploy /data \
 && DJANGO_DEBUG=1 python manage.py collectstatic --noinput -v0
USER rdeploy
EXPOSE 8000
HEALTHCHECK CMD curl -fs http://127.0.0.1:8000/healthz || exit 1
CMD ["gunicorn", "config.wsgi", "-b", "0.0.0.0:8000", "-w", "3", "-k", "gthread", "--threads", "8"]
