# Everything a fresh clone needs: `make serve` and `make test` set themselves up.
# `make serve` installs what the server needs; `make test` adds the developer tools and the
# fake agent's `testing` extra. Both are pinned by requirements.lock, and each install runs
# again only when its inputs change.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SERVER_STAMP := $(VENV)/.installed-server
DEV_STAMP := $(VENV)/.installed-dev

.PHONY: install serve test lint typecheck pytest lock clean bench browser

# The server, the developer tools and the testing and redis extras.
install: $(DEV_STAMP)

$(SERVER_STAMP): pyproject.toml requirements.lock setup.py src/callbridge/fast_path/_compiled.pyx
	@echo "Installing callbridge and its dependencies into $(VENV), building its compiled fast path (first run only)..."
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --upgrade pip
	@$(BIN)/python -m pip install --quiet -c requirements.lock -e .
	@touch $@

# The `dev`, `testing` and `redis` extras' packages on their own: installing
# '.[dev,testing,redis]' would build callbridge again. `testing` is what the fake agent needs
# (`callbridge fake-agent`); `redis`, what several instances need (REDIS_URL).
$(DEV_STAMP): $(SERVER_STAMP)
	@echo "Installing the developer tools (ruff, mypy, pytest, ...) into $(VENV) (first run only)..."
	@$(BIN)/python -c 'import tomllib; extras = tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]; print("\n".join(extras["dev"] + extras["testing"] + extras["redis"]))' > $(VENV)/dev-requirements.txt
	@$(BIN)/python -m pip install --quiet -c requirements.lock -r $(VENV)/dev-requirements.txt
	@touch $@

# A fresh checkout (no .env, no TWILIO_AUTH_TOKEN) starts as a local demo with signature
# checks off, loudly; once configured, the server insists on checking them.
serve: $(SERVER_STAMP)
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

pytest: install browser
	$(BIN)/pytest -q -n $(PYTEST_WORKERS)

# The operator console's browser tests drive Debian's Chromium (through Playwright, which
# downloads no browser). Installed when missing where we may (root with apt-get); elsewhere
# those tests are skipped with a note, and fail under CALLBRIDGE_REQUIRE_SERVICES=1.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "Installing Debian's chromium for the console's browser tests (first run only)..."; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else \
	    echo "No chromium: the console's browser tests will be skipped (apt-get install chromium)"; \
	  fi; \
	}

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
