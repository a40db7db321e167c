#!/usr/bin/env bash
# The quick start: Redis, a Celery worker, Celery beat and the web server in the foreground,
# on the embedded defaults (SQLite and files under ./var, the local target). Ctrl-C stops all.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
export PATH="$PWD/.venv/bin:$PATH"

export RDEPLOY_DATA_DIR="${RDEPLOY_DATA_DIR:-$PWD/var}"
mkdir -p "$RDEPLOY_DATA_DIR/logs"
# A real secret, generated once and kept beside the data; plain HTTP on loopback.
if [ -z "${DJANGO_SECRET_KEY:-}${DJANGO_SECRET_KEY_FILE:-}" ]; then
  [ -s "$RDEPLOY_DATA_DIR/secret_key" ] || python -c "import secrets; print(secrets.token_urlsafe(50))" > "$RDEPLOY_DATA_DIR/secret_key"
  chmod 600 "$RDEPLOY_DATA_DIR/secret_key"
  export DJANGO_SECRET_KEY_FILE="$RDEPLOY_DATA_DIR/secret_key"
fi
export DJANGO_HTTPS="${DJANGO_HTTPS:-0}"
PORT="${PORT:-8000}"
export RDEPLOY_PUBLIC_BASE_URL="${RDEPLOY_PUBLIC_BASE_URL:-http://127.0.0.1:$PORT}"
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379/0}"

pids=()
stop_all() {
  trap - INT TERM EXIT
  echo; echo "rdeploy: stopping"
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap stop_all INT TERM EXIT

redis_port="${REDIS_URL##*:}"; redis_port="${redis_port%%/*}"
if ! redis-cli -p "$redis_port" ping >/dev/null 2>&1; then
  redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$RDEPLOY_DATA_DIR" --save 60 1 \
    >"$RDEPLOY_DATA_DIR/logs/redis.log" 2>&1 &
  pids+=($!)
  until redis-cli -p "$redis_port" ping >/dev/null 2>&1; do sleep 0.1; done
fi

python manage.py migrate --noinput -v0
python manage.py rdeploy_demo_user

celery -A tasks worker -l INFO -n "worker@%h" >"$RDEPLOY_DATA_DIR/logs/worker.log" 2>&1 &
pids+=($!)
celery -A tasks beat -l INFO -s "$RDEPLOY_DATA_DIR/celerybeat-schedule" >"$RDEPLOY_DATA_DIR/logs/beat.log" 2>&1 &
pids+=($!)
gunicorn config.wsgi -b "127.0.0.1:$PORT" -w 2 --threads 8 -k gthread --access-logfile - \
  >"$RDEPLOY_DATA_DIR/logs/web.log" 2>&1 &
pids+=($!)
until curl -fs "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1; do sleep 0.3; done
# The example model, live on the local target (reused on later starts; beat's reconciler
# restarts endpoints that were live before a reboot).
python manage.py rdeploy_demo || echo "rdeploy: the example deployment failed; see $RDEPLOY_DATA_DIR/logs/worker.log"

echo "rdeploy is running: dashboard at http://127.0.0.1:$PORT/ (logs in $RDEPLOY_DATA_DIR/logs)"
echo "Press Ctrl-C to stop."
wait -n "${pids[@]}"
