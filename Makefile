# Developer shortcuts. README's two commands (scripts/demo.sh, scripts/test.sh) stay the contract;
# these call the same scripts. Every target sets up .venv first (idempotent, see scripts/setup.sh).
.PHONY: setup lint format test-fast test demo

setup:
	./scripts/setup.sh

lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

format: setup
	.venv/bin/ruff check --fix .
	.venv/bin/ruff format .

test-fast: setup  # everything not marked slow: under 2 minutes on 2 cores
	./scripts/test.sh -m "not slow"

test: setup  # the full suite, as CI runs it (after lint)
	./scripts/test.sh

demo: setup
	./scripts/demo.sh
