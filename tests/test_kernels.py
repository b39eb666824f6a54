"""CPU kernels pinned to their AVX2 code paths (labs/core/kernels.py), and llama.cpp built without -march=native:
the same bits across Intel CPU generations (MKL runs its own branch on AMD: README, Reproducibility). The suite's
header names the CPU and what the labs compute with."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from labs.core import kernels
from tests.conftest import ROOT, lab, lab_env


def native_capability() -> str:
    """torch's own choice on this CPU, in a process that never saw the pins."""
    env = {k: v for k, v in lab_env().items() if k not in kernels.PINS}
    probe = "import torch; print(torch.backends.cpu.get_cpu_capability())"
    return subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env,
                          check=True).stdout.strip()


def test_a_training_run_records_the_pinned_kernels_and_the_switch_lifts_them(workspace):
    lab("tokenizer", cwd=workspace)
    lab("pretrain", "-S", "pretrain.max_steps=2", cwd=workspace, env={kernels.FAST_SWITCH: ""})  # the default
    pinned = json.loads((workspace / "metrics/pretrain.json").read_text())["run"]["kernels"]
    assert pinned["pinned"] and pinned["capability"] == "AVX2", pinned
    assert pinned["pins"] == kernels.PINS
    assert pinned["cpu"] == kernels.cpu()

    # the fast switch, in an environment without the pins this process inherited from `import labs`
    lab("pretrain", "-S", "pretrain.max_steps=2", cwd=workspace, env={kernels.FAST_SWITCH: "1"})
    fast = json.loads((workspace / "metrics/pretrain.json").read_text())["run"]["kernels"]
    assert not fast["pinned"] and fast["pins"] == dict.fromkeys(kernels.PINS)
    native = native_capability()
    assert fast["capability"] == native, (fast, native)
    if "avx512f" in kernels.cpu()["flags"]:
        assert native == "AVX512", "on an AVX-512 CPU the pin is what keeps ATen on its AVX2 kernels"


@pytest.mark.long(30)
def test_kernel_bench_shows_the_pins_thread_independent_and_their_cost(built):
    """`just bench kernels` on the tiny pretrained model: pinned, 1 and 2 threads give the same weights (MKL's
    strict mode; ATen's and oneDNN's AVX2 paths); on an AVX-512 CPU the fast switch gives other ones."""
    probe = "from labs.tools.bench import kernels; print(kernels(rounds=1, steps=2))"
    out = subprocess.run([sys.executable, "-c", probe], cwd=built, env=lab_env(), capture_output=True, text=True,
                         check=True).stdout
    rows = {line[:24].strip(): line[24:].split() for line in out.splitlines() if "weights" in line}
    assert set(rows) == {"pinned", "pinned, 1 thread", "pinned, MKL COMPATIBLE", "fast"}, out
    assert rows["pinned"][0] == rows["pinned, 1 thread"][0] == "AVX2", out
    assert rows["pinned"][2] == rows["pinned, 1 thread"][2], "pinned weights do not depend on the thread count"
    if "avx512f" in kernels.cpu()["flags"]:
        assert rows["fast"][0] == "AVX512" and rows["fast"][2] != rows["pinned"][2], out


def test_pin_keeps_a_value_the_caller_set_and_the_switch_sets_none(monkeypatch):
    for name in kernels.PINS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MKL_CBWR", "COMPATIBLE")
    monkeypatch.delenv(kernels.FAST_SWITCH, raising=False)
    kernels.pin()
    assert {name: os.environ[name] for name in kernels.PINS} == {**kernels.PINS, "MKL_CBWR": "COMPATIBLE"}

    for name in kernels.PINS:
        monkeypatch.delenv(name)
    monkeypatch.setenv(kernels.FAST_SWITCH, "1")
    kernels.pin()
    assert not any(name in os.environ for name in kernels.PINS)


def llama_cpp_library() -> Path:
    import llama_cpp

    return Path(llama_cpp.__file__).parent / "lib" / "libggml-cpu.so"


def test_llama_cpp_is_built_for_the_avx2_baseline_not_this_machine():
    """The venv's llama.cpp (built by `just setup` / CI from docker/llama-cpp.env) has AVX2 kernels and none of
    AVX-512 (zmm registers) or AMX (tile instructions), whatever CPU compiled it."""
    import llama_cpp

    info = llama_cpp.llama_print_system_info().decode()
    assert "AVX2 = 1" in info and "AVX512" not in info and "AMX" not in info, info
    objdump = shutil.which("objdump")
    if objdump is None:
        pytest.skip("objdump (binutils) is not installed: the instruction check needs it")
    code = subprocess.run([objdump, "-d", "--no-show-raw-insn", str(llama_cpp_library())], capture_output=True,
                          text=True, check=True).stdout
    assert "%ymm" in code, "AVX2 kernels are there"
    assert "%zmm" not in code, "no AVX-512 instruction"
    assert not any(op in code for op in ("tileloadd", "tdpbssd", "tdpbf16ps")), "no AMX instruction"


def test_every_install_builds_llama_cpp_from_the_one_flags_file():
    root = Path(__file__).resolve().parents[1]
    flags = (root / "docker/llama-cpp.env").read_text()
    assert "-DGGML_NATIVE=OFF" in flags and "-DGGML_AVX2=ON" in flags
    assert "-DGGML_AVX512=OFF" in flags and "-DGGML_AMX_INT8=OFF" in flags
    sourced = "llama-cpp.env && set +a"
    for path, lock in (("docker/cpu.Dockerfile", "/tmp/cpu.txt"), ("docker/gpu.Dockerfile", "/tmp/cuda.txt")):
        text = (root / path).read_text()
        assert text.index(sourced) < text.index(f"-r {lock}"), f"{path}: the flags before the lock's install"
    # the venv: the lock without llama-cpp-python, then `just llama-cpp` builds it with the flags, uncached
    justfile = (root / "justfile").read_text()
    assert "awk '/^llama-cpp-python==/ {skip = 1}" in justfile.split("\n_env:")[1].split("\n\n")[0]
    recipe = justfile.split("\nllama-cpp: _env")[1].split("\n\n")[0]
    compile_line = recipe.index("pip wheel")
    assert recipe.index(". docker/llama-cpp.env; set +a") < compile_line
    assert "--no-cache-dir" in recipe[compile_line:].splitlines()[0], \
        "a wheel cached from a build with other flags must not be reused"
    # the wheel it keeps is installed again only under the stamp of the pin and the flags it was compiled from
    assert 'stamp=$(cat <(echo "$pin") docker/llama-cpp.env' in recipe
    kept = recipe.index('"$wheels/.stamp" 2>/dev/null)" != "$stamp"')
    assert kept < compile_line < recipe.index('> "$wheels/.stamp"')
    assert "pip install" not in (root / ".ci/run").read_text(), "CI installs through the justfile, as users do"


def test_llama_server_is_built_with_the_bindings_portable_flags():
    """`just llama-server` compiles from the same source release with docker/llama-cpp.env's flags, never native."""
    justfile = (ROOT / "justfile").read_text()
    recipe = justfile.split("\nllama-server:")[1].split("\n\n")[0]
    assert ". docker/llama-cpp.env" in recipe and "$CMAKE_ARGS" in recipe
    assert "GGML_NATIVE=ON" not in recipe and "march=native" not in recipe
    flags = (ROOT / "docker/llama-cpp.env").read_text()
    assert "-DGGML_NATIVE=OFF" in flags and "-DGGML_AVX512=OFF" in flags and "-DGGML_AMX_INT8=OFF" in flags
