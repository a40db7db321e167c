#!/usr/bin/env bash
# Every check CI runs: lint, format, types, import layers, then all tests on PostgreSQL (real
# Redis, Celery, R, Chromium) and a smoke run on SQLite (docs/testing.md).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
export PATH="$PWD/.venv/bin:$PATH"

echo "== ruff"; ruff check .
echo "== ruff format"; ruff format --check .
echo "== mypy"; DJANGO_DEBUG=1 mypy .
echo "== import-linter"; lint-imports --no-cache --no-logo
echo "== migrations"; DJANGO_DEBUG=1 RDEPLOY_DATA_DIR="$(mktemp -d)" python manage.py makemigrations --check --dry-run
echo "== pytest on PostgreSQL"
# Exit code 5 (no tests collected) fails the run like any other failure.
RDEPLOY_TEST_DATABASE=postgres python -m pytest --durations=15 "$@"
# SQLite is the quick start's embedded database: a few tests across every layer keep it honest
# (conftest.py's SMOKE_TESTS). Skipped when arguments pick tests, as they are for that run.
if (($# == 0)); then
  echo "== pytest on SQLite (smoke)"
  RDEPLOY_TEST_DATABASE=sqlite python -m pytest -m smoke
fi
