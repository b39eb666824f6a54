"""Build the cpu image for real and run `just lab sft` inside it on a tiny project (`just image test cpu`); build
the vLLM CPU serving image and serve a tiny model from it (`just image test vllm-cpu`).

Where a Docker daemon answers, the image builds from its pinned base as a user's would. Elsewhere (CI here:
root, no daemon, no registry) podman builds it on a Debian bookworm base made locally with debootstrap, torch's
CPU wheel comes from the directory pip is configured to find links in (docker/README.md), and llama-cpp-python's
from the wheel `just llama-cpp` compiled for .venv with the same pin and flags, not compiled a second time. The GPU
tiers cannot be tested this way: their CUDA base and packages need a GPU host (see the README).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
import tomllib
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, make_workspace, run

pytestmark = pytest.mark.image
TIER = os.environ.get("IMAGE_TIER", "cpu")
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
USER = "10001:10001"  # the image's own non-root user writes the mounted workspace

CONTAINERS_CONF = """[containers]
default_ulimits = ["nofile=20000:20000", "nproc=16384:16384"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
"""


def docker_daemon() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True).returncode == 0


def podman_env() -> dict:
    """podman with the settings that work on this kind of machine (runc, cgroupfs), its store under build/."""
    missing = [tool for tool in ("podman", "buildah", "debootstrap", "runc") if shutil.which(tool) is None]
    if missing:
        if os.geteuid() != 0:
            pytest.fail(f"needs {' '.join(missing)} (apt-get install -y podman buildah debootstrap runc)")
        subprocess.run(["apt-get", "update", "-qq"], check=True, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "podman", "buildah", "debootstrap", "runc"], check=True,
                       capture_output=True, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    conf = ROOT / "build" / "containers"
    conf.mkdir(parents=True, exist_ok=True)
    (conf / "containers.conf").write_text(CONTAINERS_CONF)
    (conf / "storage.conf").write_text(f'[storage]\ndriver = "overlay"\ngraphroot = "{conf}/store"\n'
                                       f'runroot = "{conf}/run"\n')
    return {"ENGINE": "podman", "CONTAINERS_CONF": str(conf / "containers.conf"),
            "CONTAINERS_STORAGE_CONF": str(conf / "storage.conf")}


def local_build_flags(env: dict) -> str:
    """A local base image, torch's CPU wheel from pip's find-links directory, llama.cpp's wheel compiled here, and
    this machine's CA bundle."""
    base = run([str(ROOT / "docker" / "image.sh"), "standin"], cwd=ROOT, env=env, timeout=900).stdout.strip()
    flags = [f"--build-arg BASE_IMAGE={base}"]
    links = subprocess.run(["pip", "config", "get", "global.find-links"], capture_output=True, text=True).stdout.strip()
    if links and any(Path(links).glob("torch-*+cpu-*.whl")):
        flags += [f"--volume {links}:/torch-wheels:ro", "--build-arg TORCH_FIND_LINKS=/torch-wheels"]
    # the llama-cpp-python wheel `just test` compiled (`just llama-cpp`), instead of compiling it again inside;
    # the image checks the wheel's stamp against its own lock and flags file
    if (ROOT / "build/llama-cpp-wheel/.stamp").is_file():
        flags += [f"--volume {ROOT / 'build/llama-cpp-wheel'}:/llama-cpp-wheel:ro",
                  "--build-arg LLAMA_CPP_WHEEL=/llama-cpp-wheel"]
    cabundle = Path(os.environ.get("PIP_CERT") or "/etc/ssl/certs/ca-certificates.crt")
    if cabundle.is_file():
        flags.append(f"--secret id=cabundle,src={cabundle}")
    return " ".join(flags)


@pytest.fixture(scope="module")
def engine_env() -> dict:
    if TIER not in ("cpu", "vllm-cpu"):
        pytest.fail(f"the {TIER} image needs a GPU host and its CUDA base; here only `cpu` and `vllm-cpu` build")
    if docker_daemon():
        return {"ENGINE": "docker"}
    env = podman_env()
    env["BUILD_FLAGS"] = local_build_flags(env)
    return env


@pytest.fixture(scope="module")
def image(engine_env) -> str:
    run(["just", "image", "build", TIER], cwd=ROOT, env=engine_env, timeout=2400)
    return f"llm-lab:{VERSION}-{TIER}"


def inspect(engine_env: dict, image: str) -> dict:
    out = run([engine_env["ENGINE"], "image", "inspect", image], cwd=ROOT, env=engine_env).stdout
    return json.loads(out)[0]


LAB_IMAGE = pytest.mark.skipif(TIER != "cpu", reason="a test of the lab image (IMAGE_TIER=cpu)")


@LAB_IMAGE
def test_image_is_labelled_and_runs_as_non_root(engine_env, image):
    info = inspect(engine_env, image)
    config = info.get("Config") or info["config"]
    labels = config["Labels"]
    revision = run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT).stdout.strip()
    assert labels["org.opencontainers.image.version"] == VERSION
    assert labels["org.opencontainers.image.revision"] == revision
    assert labels["dev.llm-lab.tier"] == TIER and labels["dev.llm-lab.torch"] == "2.13.0"
    assert config["User"] == "10001" and config["WorkingDir"] == "/workspace"
    # the long tag points at the same image
    long_tag = run([str(ROOT / "docker" / "image.sh"), "tags", TIER], cwd=ROOT).stdout.split()[1]
    assert inspect(engine_env, long_tag)["Id"] == info["Id"]
    # inside: the CPU build of torch, no compilers, the packages of the lock
    probe = ("import torch, transformers, trl, llama_cpp, shutil, os; "
             "print(torch.__version__, torch.version.cuda, transformers.__version__, trl.__version__, "
             "llama_cpp.__version__, shutil.which('g++'), os.getuid())")
    out = run([engine_env["ENGINE"], "run", "--rm", image, "python", "-c", probe], cwd=ROOT, env=engine_env).stdout
    assert out.split() == ["2.13.0+cpu", "None", "5.23.0", "1.12.0", "0.3.36", "None", "10001"], out
    # llama.cpp compiled for the AVX2 baseline (docker/llama-cpp.env), not for the CPU that built the image;
    # inside, the labs pin torch's kernels to AVX2 as outside
    probe = ("import labs, llama_cpp, torch; print(llama_cpp.llama_print_system_info().decode()); "
             "print('capability', torch.backends.cpu.get_cpu_capability())")
    out = run([engine_env["ENGINE"], "run", "--rm", image, "python", "-c", probe], cwd=ROOT, env=engine_env).stdout
    assert "AVX2 = 1" in out and "AVX512" not in out and "AMX" not in out and "capability AVX2" in out, out


@LAB_IMAGE
def test_just_lab_sft_inside_the_image_writes_to_the_mounted_workspace(engine_env, image, tmp_path):
    ws = make_workspace(tmp_path / "ws")
    # short schedules: the image, not the curriculum, is under test, and what is asserted of the lab holds after
    # 100 steps of each (sft's validation loss falls to under a fifth)
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["pretrain"]["max_steps"] = params["sft"]["max_steps"] = 100
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.copy(ROOT / "pyproject.toml", ws)  # `just docker lab` reads the version and calls docker/image.sh
    shutil.copytree(ROOT / "docker", ws / "docker", dirs_exist_ok=True)  # the workspace has serve's two files of it
    run(["just", "data"], cwd=ws)
    run(["git", "add", "-A"], cwd=ws)
    run(["git", "-c", "user.name=test", "-c", "user.email=test@localhost", "commit", "-qm", "tiny"], cwd=ws)
    if os.geteuid() == 0:
        subprocess.run(["chown", "-R", USER, ws], check=True)  # the container's user owns what it writes to

    proc = run(["just", "docker", "lab", "sft", TIER], cwd=ws, env={**engine_env, "LAB_USER": USER}, timeout=1500)

    metrics = json.loads((ws / "metrics" / "sft.json").read_text())
    assert metrics["val_loss"] < metrics["val_loss_before"] / 2, metrics
    card = json.loads((ws / "models" / "sft" / "run_card.json").read_text())
    assert card["tier"] == "cpu" and card["versions"]["torch"] == "2.13.0+cpu", card["versions"]
    assert card["versions"]["python"] == "3.11", "the card holds the minor version, which fixes the arithmetic"
    assert metrics["run"]["python"].startswith("3.11."), "the run block holds the exact one"
    if os.geteuid() == 0:
        assert (ws / "metrics" / "sft.json").stat().st_uid == 10001, "written by the image's non-root user"
        subprocess.run(["chown", "-R", "0:0", ws], check=True)  # git and DVC here refuse a repository of another uid
    status = run(["dvc", "status", "sft"], cwd=ws).stdout
    assert "changed" not in status, f"DVC on the host agrees with what ran inside:\n{status}\n{proc.stdout[-2000:]}"


def tiny_chat_model(path: Path) -> None:
    """A random Llama with heads of 32 (the least vLLM's CPU attention takes) and a word-level tokenizer with
    the project's chat template, saved as a hub model would be."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from labs.core.models import CHAT_TEMPLATE, SPECIAL_TOKENS

    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS + ["add", "3", "4", "7", "Answer:", "<unk>"])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<|pad|>", eos_token="<|end|>",
                                        unk_token="<unk>")
    tokenizer.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=2, intermediate_size=128, max_position_embeddings=512,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    # transformers writes the weights owner-only (0600); the container's uid 10001 reads them as another user
    (path / "model.safetensors").chmod(0o644)


@pytest.mark.skipif(TIER != "vllm-cpu", reason="a test of the vLLM CPU image (IMAGE_TIER=vllm-cpu)")
def test_vllm_cpu_image_serves_a_mounted_model_behind_the_guard_as_non_root(engine_env, image, tmp_path):
    import socket

    import httpx2 as httpx

    labels = (inspect(engine_env, image).get("Config") or {}).get("Labels") or {}
    assert labels.get("dev.llm-lab.tier") == "vllm-cpu" and labels.get("dev.llm-lab.cuda") == "none", labels
    tiny_chat_model(tmp_path / "models" / "sft")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    name = f"llm-lab-vllm-test-{port}"
    engine = engine_env["ENGINE"]
    run([engine, "run", "-d", "--name", name, "--publish", f"127.0.0.1:{port}:8000", "--shm-size", "1g",
         "--volume", f"{tmp_path / 'models'}:/models:ro", image], cwd=ROOT, env=engine_env)
    try:
        url = f"http://127.0.0.1:{port}"
        healthy, running = False, True
        for _ in range(300):
            running = run([engine, "inspect", "--format", "{{.State.Running}}", name], cwd=ROOT,
                          env=engine_env).stdout.strip() == "true"
            with contextlib.suppress(httpx.HTTPError):
                healthy = httpx.get(f"{url}/health", timeout=2).status_code == 200
            if healthy or not running:
                break
            time.sleep(1)
        if not healthy:
            logs = subprocess.run([engine, "logs", name], capture_output=True, text=True,
                                  env={**os.environ, **engine_env})
            pytest.fail(f"the container {'exited' if not running else 'did not answer /health in 300 s'}:\n"
                        f"{(logs.stdout + logs.stderr)[-6000:]}")
        hello = {"model": "sft", "messages": [{"role": "user", "content": "add 3 4"}], "max_tokens": 8,
                 "temperature": 0}
        answer = httpx.post(f"{url}/v1/chat/completions", json=hello, timeout=120)
        assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] > 0, answer.text
        too_big = {**hello, "messages": [{"role": "user", "content": "x" * 2_000_000}]}
        assert httpx.post(f"{url}/v1/chat/completions", json=too_big, timeout=60).status_code == 413, "the guard"
        assert httpx.post(f"{url}/v1/chat/completions", json={**hello, "model": "gpt-4"}, timeout=60).status_code == 404
        assert [m["id"] for m in httpx.get(f"{url}/v1/models", timeout=10).json()["data"]] == ["sft"]
        uid = run([engine, "exec", name, "id", "-u"], cwd=ROOT, env=engine_env).stdout.strip()
        assert uid == "10001", "vLLM runs as the image's non-root user"
    finally:
        subprocess.run([engine, "rm", "-f", name], capture_output=True, env={**os.environ, **engine_env})
