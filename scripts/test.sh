#!/usr/bin/env bash
# Every check CI runs: lint, format, types, import layers, then all tests (real Redis, Celery, R, Chromium).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
export PATH="$PWD/.venv/bin:$PATH"

echo "== ruff"; ruff check .
echo "== ruff format"; ruff format --check .
echo "== mypy"; DJANGO_DEBUG=1 mypy .
echo "== import-linter"; lint-imports --no-cache --no-logo
echo "== migrations"; DJANGO_DEBUG=1 RDEPLOY_DATA_DIR="$(mktemp -d)" python manage.py makemigrations --check --dry-run
echo "== pytest"
# Exit code 5 (no tests collected) fails the run like any other failure.
python -m pytest "$@"
