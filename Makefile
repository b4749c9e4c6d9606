# Everything a fresh clone needs: `make serve` and `make test` set themselves up.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install serve test lint typecheck pytest lock clean bench

install: $(STAMP)

$(STAMP): pyproject.toml requirements.lock setup.py src/callbridge/fast_path/_compiled.pyx
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c requirements.lock -e '.[dev]'
	touch $(STAMP)

# A fresh checkout (no .env, no TWILIO_AUTH_TOKEN) starts as a local demo with signature
# checks off, loudly; once configured, the server insists on checking them.
serve: install
	@if [ -z "$$TWILIO_AUTH_TOKEN" ] && [ ! -f .env ]; then \
	  echo "make serve: no .env and no TWILIO_AUTH_TOKEN: local demo mode, Twilio signatures NOT checked"; \
	  CALLBRIDGE_INSECURE_SKIP_SIGNATURES=1 $(BIN)/callbridge serve; \
	else \
	  $(BIN)/callbridge serve; \
	fi

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

# Two workers: most tests wait on real-time audio and sockets, not the CPU, so two
# processes on two cores take half the time. PYTEST_WORKERS=0 runs them in one.
PYTEST_WORKERS ?= 2

pytest: install
	$(BIN)/pytest -q -n $(PYTEST_WORKERS)

test: lint typecheck pytest

# Re-pin after changing dependencies in pyproject.toml.
lock: install
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^callbridge' > requirements.lock

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache

# Load benchmark: N simultaneous calls through the real server and two minimal relays
# (see bench/__init__.py). `make bench ARGS=--quick` for a ~30-second smoke run.
bench: install
	$(BIN)/python -m bench $(ARGS)
