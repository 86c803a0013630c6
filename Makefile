# Shortcuts for developers; the README's two commands are the supported entry points.
PY ?= .venv/bin/python

.PHONY: venv test unit integration lint demo bench gpu-wheels

venv:
	python3.11 -m venv .venv && .venv/bin/pip install -e '.[dev]'

test:
	$(PY) -m pytest

unit:
	$(PY) -m pytest -m "not integration and not slow"

integration:
	$(PY) -m pytest -m integration

lint:
	.venv/bin/ruff check raycat tests jobs bench

demo:
	.venv/bin/raycat demo

bench:
	$(PY) bench/data_pipeline.py

# pytest for the GPU machine, which has torch but maybe no pytest and no internet (bench/gpu_check.sh)
gpu-wheels:
	.venv/bin/pip download --only-binary=:all: --python-version 3.12 -d bench/wheels pytest
