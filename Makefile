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

smoke:  # a bare venv: no dev extras, no vllm, no driver
	rm -rf .venv-smoke && $(PY) -m venv .venv-smoke
	.venv-smoke/bin/pip install -q .
	cd /tmp && $(CURDIR)/.venv-smoke/bin/python -c "import gpuaudit" && $(CURDIR)/.venv-smoke/bin/gpuaudit --help > /dev/null

bench: install
	$(BIN)/python benchmarks/bench_sampler.py

clean:
	rm -rf $(VENV) .venv-smoke demo-output build *.egg-info
