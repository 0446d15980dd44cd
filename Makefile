# The two commands of the README, plus helpers. Every target sets up .venv first (idempotent).
VENV := .venv
PY := $(VENV)/bin/python
ARGS ?=

.PHONY: setup setup-system reproduce test lint bench lock clean-venv docker-smoke

## .venv from the lock, then the optional C++ GRU extension into build/ (once; never fatal).
setup:
	@bash scripts/setup_venv.sh
	@bash scripts/build_extensions.sh

## System packages the tests need (headless Chromium, poppler, fonts): apt-get, idempotent.
setup-system:
	@bash scripts/setup_system.sh

## Run the default suites, one per paper, and render their reports (extra flags: ARGS="...";
## other suites: SUITES="smoke").
SUITES ?= quick bidist_quick
reproduce: setup
	@for suite in $(SUITES); do $(PY) reproduce.py --suite $$suite $(ARGS) || exit $$?; done

## Run the test suite (benchmarks excluded; see `make bench`).
test: setup setup-system
	@$(PY) -m pytest tests --ignore=tests/benchmarks $(ARGS)

## Lint and format check (ruff, configured in pyproject.toml; `ruff format .` applies the format).
lint: setup
	@$(VENV)/bin/ruff check .
	@$(VENV)/bin/ruff format --check .

## Throughput/memory benchmarks, saved as JSON under results/benchmarks/.
bench: setup
	@mkdir -p results/benchmarks
	@$(PY) -m pytest tests/benchmarks --benchmark-only \
	    --benchmark-json=results/benchmarks/bench-$$(date +%Y%m%d-%H%M%S).json $(ARGS)

## Regenerate requirements.lock from requirements.in in a throwaway venv.
lock:
	@bash scripts/make_lock.sh

clean-venv:
	rm -rf $(VENV)

## Build the image on a local Debian base with a private Docker daemon and run the smoke suite in it
## through --backend docker (root; several minutes; see tests/docker/test_docker_smoke.py).
docker-smoke: setup
	@DOCKER_SMOKE=1 $(PY) -m pytest tests/docker/test_docker_smoke.py -v -rs $(ARGS)
