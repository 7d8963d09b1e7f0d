# Conveniences over bootstrap.py (which needs nothing but Python).
.PHONY: demo test lint bench
demo:
	python3 bootstrap.py demo
test:
	python3 bootstrap.py test
lint:
	python3 bootstrap.py shell >/dev/null && .venv/bin/ruff check meshmon aggregator tests benchmarks && .venv/bin/mypy
