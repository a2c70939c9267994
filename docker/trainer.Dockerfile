# syntax=docker/dockerfile:1
# The trainer: `pilot-commit train CONFIG`, talking to every service over HTTP.
# One Dockerfile, two torch builds:
#   GPU (default): docker build -f docker/trainer.Dockerfile -t pilot-commit-trainer:cuda .
#   CPU:           docker build -f docker/trainer.Dockerfile \
#                    --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu \
#                    -t pilot-commit-trainer:cpu .
# python:3.11-slim is enough on a GPU host: the CUDA wheels of torch bundle the CUDA
# runtime libraries; the host needs only the NVIDIA driver and the container toolkit.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

# torch first, pinned (the version .ci/run tests), from the index that selects its build:
# cu130 (CUDA 13.0, the same build PyPI serves for Linux; needs driver >= 580) by default,
# the CPU index for CPU images. Left to the resolver, `torch>=2.4` would take whatever
# PyPI has newest.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"

# The rest of the dependencies from pyproject.toml alone (empty package stubs stand in for
# the source), so editing the source reuses this layer.
COPY pyproject.toml ./
RUN mkdir services trainer pilot_commit \
    && touch services/__init__.py trainer/__init__.py pilot_commit/__init__.py \
    && pip install ".[trainer]" \
    && pip uninstall -y pilot-commit \
    && rm -rf services trainer pilot_commit build ./*.egg-info

COPY README.md ./
COPY services ./services
COPY trainer ./trainer
COPY pilot_commit ./pilot_commit
RUN pip install --no-deps . && rm -rf build ./*.egg-info
COPY configs ./configs

# Mount points owned by the app user, so named volumes mounted there start out writable by
# it (Docker copies a mount point's ownership into an empty volume): /runs for outputs,
# /weights for checkpoints the generation servers load, /cache for the tiny task's build.
RUN useradd --system --uid 10001 --user-group --create-home pilot \
    && mkdir -p /runs /weights /cache && chown pilot:pilot /runs /weights /cache
USER pilot
ENV PILOT_COMMIT_CACHE=/cache \
    HF_HUB_OFFLINE=1

# No HEALTHCHECK: the trainer is a job, not a service; it exits when the run is done.
# Compose gives the command; alone, `docker run IMAGE pilot-commit train CONFIG --output DIR`
# with PC_TRAINER_* pointing at running services.
CMD ["pilot-commit", "train", "--help"]
