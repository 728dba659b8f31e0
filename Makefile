# `make train` and `make test` install what they need into .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU wheel by default; GPU users: make install TORCH=torch (a CUDA build), or install their own first
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
