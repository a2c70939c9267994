# syntax=docker/dockerfile:1
# The embedded generation server: `pilot-commit generation serve` (transformers, CPU by
# default). It speaks vLLM's weight-transfer API, so the trainer's `vllm` sync drives it.
# Build from the repository root: docker build -f docker/generation.Dockerfile .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

# torch first, pinned, from the CPU wheel index: left to the resolver, `torch>=2.4` would
# pull the multi-GB CUDA build from PyPI. For the server on a GPU, build with
# --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"

# The rest of the dependencies from pyproject.toml alone (empty package stubs stand in for
# the source), so editing the source reuses this layer.
COPY pyproject.toml ./
RUN mkdir services && touch services/__init__.py \
    && pip install ".[generation]" \
    && pip uninstall -y pilot-commit \
    && rm -rf services build ./*.egg-info

COPY README.md ./
# The services and the console script (pilot_commit/cli.py); the trainer stays out.
COPY services ./services
COPY pilot_commit ./pilot_commit
RUN pip install --no-deps . && rm -rf build ./*.egg-info

# /weights and /cache exist, owned by the app user, so named volumes mounted there start
# out writable by it (Docker copies a mount point's ownership into an empty volume).
RUN useradd --system --uid 10001 --user-group --create-home pilot \
    && mkdir -p /weights /cache && chown pilot:pilot /weights /cache
USER pilot
ENV HF_HUB_OFFLINE=1

EXPOSE 8003
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s --retries=5 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8003/health', timeout=2)"]
# The model directory comes from --model or PC_GENERATION_MODEL.
CMD ["pilot-commit", "generation", "serve", "--host", "0.0.0.0", "--port", "8003"]
