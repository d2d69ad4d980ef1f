#!/usr/bin/env bash
# The GPU check of issue 26, as one short script for a machine with an NVIDIA GPU (the workplace's
# `device` tool): vectors in bfloat16 on the GPU against float32 on the CPU, an index built, queried
# and served on the GPU, and featurisation throughput (benchmarks/gpu_check.py says what exactly).
#
#   benchmarks/gpu_check.sh --prepare     # HERE, with network: wheels of what the GPU image lacks -> .whl/
#   benchmarks/gpu_check.sh [--device cuda] [--n 2048]   # THERE, from the repo root
#
# The GPU image has python3 (3.12) with CUDA torch, transformers and peft but no FastAPI, FAISS,
# bm25s, pydantic, Redis or RQ client, nor EleutherAI Bergson (the throughput it is compared with),
# and reaches no package index: --prepare downloads those as wheels for it (git-ignored .whl/,
# under the 64 MiB that travels). Bergson there runs on the image's torch and transformers, not
# the versions benchmarks/requirements-bergson.txt pins: a failure is reported, not hidden. Nothing here needs a GPU to be
# read; `.venv/bin/python benchmarks/gpu_check.py --device cpu` runs the same steps on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

if [ "${1:-}" = "--prepare" ]; then
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
  python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 -d .whl \
    faiss-cpu==1.15.1 bm25s==0.3.16 fastapi==0.165.0 starlette==1.10.0 pydantic-settings==2.16.3 \
    python-dotenv redis==8.1.0 rq==3.0.0 croniter fastapi-offline==1.7.7 uvicorn==0.54.0 gguf==0.19.0 annotated-doc \
    pydantic==2.14.4 pydantic-core==2.50.5 typing-inspection==0.4.5 annotated-types==0.8.0 \
    bergson==2.5.1 simple-parsing==0.1.9 petname==2.9 docstring_parser==0.18.0 datasets==5.2.0 dill==0.4.1 \
    multiprocess==0.70.19 xxhash==4.1.0
  du -sh .whl
  exit 0
fi

if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install --quiet --no-index --no-deps .whl/*.whl
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "nvidia-smi: none"
python3 benchmarks/gpu_check.py "$@"
