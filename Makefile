# gpuaudit: the two set-up commands are `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install dev demo test lint smoke bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install -q -e .

dev: $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'

demo: install
	$(BIN)/gpuaudit demo --out demo-output

test: dev
	$(BIN)/python -m pytest -q -m "not gpu"

lint: dev
	$(BIN)/ruff format --check gpuaudit tests benchmarks
	$(BIN)/ruff check gpuaudit tests benchmarks
	$(BIN)/mypy gpuaudit

smoke: install
	$(BIN)/python -m gpuaudit --help > /dev/null

bench: install
	$(BIN)/python benchmarks/bench_sampler.py

clean:
	rm -rf $(VENV) demo-output build *.egg-info
