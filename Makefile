# The two quick-start commands (README): `make run` and `make test`.
.PHONY: run test lint bench

run:
	scripts/run.sh

test:
	scripts/test.sh

# Every benchmark, each printing its numbers beside a baseline measured in the same run.
bench:
	for script in benchmarks/*_bench.py; do .venv/bin/python "$$script" || exit 1; done

lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check . && DJANGO_DEBUG=1 .venv/bin/mypy . && .venv/bin/lint-imports --no-cache --no-logo
