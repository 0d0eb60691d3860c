# Two commands do all the set-up on a fresh machine:
#   make serve   venv + packages + corpus + ONNX export + index + rendered repository, then tritonserver
#   make test    the same set-up, then the test suite (this is what .ci/run calls)
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
GRPC_PORT ?= 8001
HTTP_PORT ?= 8000
METRICS_PORT ?= 8002
BUILD_ARGS ?=
PYTEST_ARGS ?=

.PHONY: setup artifacts serve test clean

# The stamp holds a copy of requirements.txt: editing the pins reinstalls.
$(VENV)/.requirements.txt: requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check --quiet --requirement requirements.txt
	@cp requirements.txt $@

setup: $(VENV)/.requirements.txt

artifacts: setup
	$(PY) -m build all $(BUILD_ARGS)

serve: artifacts
	$(PY) -m model_repository serve --host $(HOST) --grpc-port $(GRPC_PORT) --http-port $(HTTP_PORT) --metrics-port $(METRICS_PORT)

test: artifacts
	$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf artifacts
