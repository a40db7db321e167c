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
# Our own Redis gets a password, generated once beside the data: model code runs in
# containers without any network, and the password is defence in depth for anything else
# on this machine's loopback.
own_redis=0
if [ -z "${REDIS_URL:-}" ]; then
  own_redis=1
  [ -s "$RDEPLOY_DATA_DIR/redis_password" ] || python -c "import secrets; print(secrets.token_hex(24))" > "$RDEPLOY_DATA_DIR/redis_password"
  chmod 600 "$RDEPLOY_DATA_DIR/redis_password"
  export REDISCLI_AUTH; REDISCLI_AUTH="$(cat "$RDEPLOY_DATA_DIR/redis_password")"
  export REDIS_URL="redis://:$REDISCLI_AUTH@127.0.0.1:6379/0"
fi

pids=()
stop_all() {
  trap - INT TERM EXIT
  echo; echo "rdeploy: stopping"
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap stop_all INT TERM EXIT

redis_port="${REDIS_URL##*:}"; redis_port="${redis_port%%/*}"
if [ "$own_redis" = 1 ] && REDISCLI_AUTH='' redis-cli -p "$redis_port" ping 2>/dev/null | grep -q PONG; then
  # A Redis without a password already runs there (not ours): use it as it is.
  echo "rdeploy: using the Redis without a password on port $redis_port (anything on this machine can reach it)" >&2
  unset REDISCLI_AUTH
  export REDIS_URL="redis://127.0.0.1:$redis_port/0"
elif ! redis-cli --no-auth-warning -p "$redis_port" ping 2>/dev/null | grep -q PONG; then
  # The password goes in on stdin, not on the command line other users can read.
  redis_config=""
  [ "$own_redis" = 1 ] && redis_config="requirepass $REDISCLI_AUTH"
  printf '%s\n' "$redis_config" |
    redis-server - --port "$redis_port" --bind 127.0.0.1 --dir "$RDEPLOY_DATA_DIR" --save 60 1 \
      >"$RDEPLOY_DATA_DIR/logs/redis.log" 2>&1 &
  pids+=($!)
  until redis-cli --no-auth-warning -p "$redis_port" ping 2>/dev/null | grep -q PONG; do sleep 0.1; done
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
