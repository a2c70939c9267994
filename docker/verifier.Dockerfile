# syntax=docker/dockerfile:1
# The verifier service: `pilot-commit verifier serve` (math-verify in worker processes, no torch).
# Build from the repository root: docker build -f docker/verifier.Dockerfile .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

# Dependencies from pyproject.toml alone (empty package stubs stand in for the source), so
# editing the source reuses this layer; the stub install itself is then removed.
COPY pyproject.toml ./
RUN mkdir services && touch services/__init__.py \
    && pip install ".[verifier]" \
    && pip uninstall -y pilot-commit \
    && rm -rf services build ./*.egg-info

COPY README.md ./
# The services and the console script (pilot_commit/cli.py); the trainer stays out.
COPY services ./services
COPY pilot_commit ./pilot_commit
RUN pip install --no-deps . && rm -rf build ./*.egg-info

RUN useradd --system --uid 10001 --user-group --create-home pilot
USER pilot

EXPOSE 8002
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=5 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8002/health', timeout=2)"]
CMD ["pilot-commit", "verifier", "serve", "--host", "0.0.0.0", "--port", "8002"]
