# The README's commands. `make up` runs the platform; `make test` runs everything CI runs.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install up test test-quick lint typecheck pytest bench clean

install: $(STAMP)  ## create .venv and install modelserve with its test tools (idempotent)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

up: install  ## run the whole platform on the embedded default (SQLite, embedded Redis)
	$(VENV)/bin/modelserve up $(ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: install
	$(VENV)/bin/mypy

# pytest exits 5 when it collected no test: that must fail, not pass silently.
pytest: install
	$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$rc

test: lint typecheck pytest  ## lint + type check + the whole test suite

test-quick: lint typecheck  ## the inner loop: lint + type check + the tests not marked slow
	$(MAKE) pytest PYTEST_ARGS="-m 'not slow' $(PYTEST_ARGS)"

bench: install  ## benchmarks with in-run baselines; JSON under bench/results/
	$(PY) -m bench $(ARGS)

clean:
	rm -rf $(VENV) .modelserve .pytest_cache .mypy_cache .ruff_cache bench/results
