# `make train` and `make test` install what they need into .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
# torch 2.13.0: from PyPI on Linux a CUDA build (a machine with a local CPU wheel gets that); another
# build: install it first (a 2.13.0 build is kept), or make install TORCH=...
TORCH ?= torch==2.13.0
ARGS ?=

.PHONY: install train test test-slow bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install "$(TORCH)"
	$(PY) -m pip install -e '.[dev]'
	touch $@

train: install
	$(PY) train.py $(ARGS)

test: install
	$(PY) -m pytest

test-slow: install
	$(PY) -m pytest -m slow

bench: install
	$(PY) scripts/compare_gensim.py $(ARGS)

clean:
	rm -rf outputs .pytest_cache
