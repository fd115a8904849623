# Two commands matter: `make run` and `make test`. Both install what they need into .venv.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat requirements.lock pyproject.toml | cksum | cut -d' ' -f1)
LINT_PATHS := src tests $(wildcard bench)
PYTEST := $(BIN)/pytest -p no:cacheprovider

.PHONY: install run test test-unit test-integration test-e2e test-browser test-bench lint format bench lock clean

$(STAMP): requirements.lock pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is needed"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

## Serve the shop on SQLite at http://$(HOST):$(PORT) (schema upgraded, demo data loaded):
## `make run PORT=8080 HOST=0.0.0.0`. Plain HTTP here, so the session cookie cannot be Secure.
HOST ?= 127.0.0.1
PORT ?= 8000
run: install
	$(BIN)/shop seed --demo
	SHOP_COOKIE_SECURE=$${SHOP_COOKIE_SECURE:-false} $(BIN)/shop serve --host $(HOST) --port $(PORT)

## Everything: lint, then every test group (PostgreSQL/Redis suites skip outside CI if absent).
test: install lint
	$(PYTEST) tests

test-unit: install
	$(PYTEST) tests/unit

test-integration: install
	$(PYTEST) tests/integration

test-e2e: install
	$(PYTEST) tests/e2e

test-browser: install
	$(PYTEST) tests/browser

test-bench: install
	$(PYTEST) tests/bench

lint: install
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/mypy src
	$(BIN)/lint-imports

format: install
	$(BIN)/ruff format $(LINT_PATHS)
	$(BIN)/ruff check --fix $(LINT_PATHS)

bench: install
	$(BIN)/python -m bench.run

## Re-pin requirements.lock after changing dependencies in pyproject.toml.
lock: install
	$(BIN)/python -m pip install --quiet uv
	$(BIN)/uv pip compile pyproject.toml --extra dev --python-version 3.11 --no-header --quiet -o requirements.lock

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
