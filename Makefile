# The README's quick start: two commands, each safe to run first on a fresh clone.
#   make run    answer a question through the routed default pipeline, with its route
#   make test   run the test suite
# Both install on first use (./install.sh --if-needed: skipped in milliseconds when .venv is up
# to date with pyproject.toml, setup.py, constraints.txt and install.sh).
VENV ?= .venv
Q ?= What is the capital of France?

.PHONY: run test install

run:
	@./install.sh --if-needed $(VENV)
	@$(VENV)/bin/composer ask '$(Q)'

test:
	@./install.sh --if-needed $(VENV)
	@$(VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

install:
	@./install.sh $(VENV)
