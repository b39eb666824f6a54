# LLM Lab, cpu tier: every lab on any x86-64 machine, fp32, no GPU.
#   just image build cpu        -> llm-lab:<version>-cpu and llm-lab:<version>-cpu-py3.11-torch2.13.0
#   just docker lab sft cpu     -> `just lab sft` inside, with this checkout and its DVC cache mounted
#   just image test cpu         -> builds it on a locally made Debian base and runs `just lab sft` inside
# Python 3.11 on Debian bookworm, as CI; docker/locks/cpu.txt pins every package by version and hash.
ARG BASE_IMAGE=python:3.11.14-slim-bookworm

# ---- build: the virtual environment, with the compilers llama.cpp needs; none of them ship ----
FROM ${BASE_IMAGE} AS build
# A directory holding the llama-cpp-python wheel `just llama-cpp` compiled from the same pin and llama-cpp.env
# (CI's image test mounts build/llama-cpp-wheel there, so llama.cpp is not compiled twice in one run); empty:
# compiled here.
ARG LLAMA_CPP_WHEEL=
# llama-cpp-python (GGUF rows of `quantize`) is published as source only: compiling it needs the toolchain
# hadolint ignore=DL3008  # Debian's security updates replace exact versions; the base tag pins the release
RUN if [ -z "$LLAMA_CPP_WHEEL" ]; then \
        apt-get update \
        && apt-get install -y --no-install-recommends g++ make cmake \
        && rm -rf /var/lib/apt/lists/*; \
    fi
ENV VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/venv
ARG TORCH_VERSION=2.13.0
# where torch's CPU build is (no CUDA libraries): its version, 2.13.0+cpu, outranks the CUDA build of the default index
ARG TORCH_FIND_LINKS=https://download.pytorch.org/whl/cpu/torch/
COPY docker/locks/cpu.txt docker/llama-cpp.env /tmp/
# The optional secret `cabundle` is a CA bundle for builds behind a TLS-inspecting proxy; without it pip uses
# its own. Torch first, its CPU build; then every other package at the lock's version and hash, llama.cpp
# compiled for the portable AVX2 baseline (llama-cpp.env), not for the CPU that happens to build the image.
RUN --mount=type=secret,id=cabundle,target=/run/secrets/cabundle \
    if [ -s /run/secrets/cabundle ]; then export PIP_CERT=/run/secrets/cabundle; fi \
    && pip install --find-links "$TORCH_FIND_LINKS" "torch==${TORCH_VERSION}" \
    && set -a && . /tmp/llama-cpp.env && set +a \
    && if [ -z "$LLAMA_CPP_WHEEL" ]; then pip install --require-hashes -r /tmp/cpu.txt; \
       else stamp=$(awk '/^llama-cpp-python==/ {p = 1} p {print} p && !/\\$/ {exit}' /tmp/cpu.txt \
                    | cat - /tmp/llama-cpp.env | sha256sum | cut -d' ' -f1) \
            && { [ "$(cat "$LLAMA_CPP_WHEEL/.stamp")" = "$stamp" ] \
                 || { echo "error: $LLAMA_CPP_WHEEL: compiled from another pin or flags (just llama-cpp)" >&2; exit 2; }; } \
            && awk '/^llama-cpp-python==/ {skip = 1} !skip {print} skip && !/\\$/ {skip = 0}' /tmp/cpu.txt > /tmp/rest.txt \
            && pip install --require-hashes -r /tmp/rest.txt && pip install --no-deps "$LLAMA_CPP_WHEEL"/*.whl; fi \
    && python -c "import torch; assert not torch.version.cuda, 'a CUDA build of torch'"
COPY pyproject.toml README.md /src/
COPY labs /src/labs
# the project itself (its build backend, setuptools, comes from the index: the same optional CA bundle)
RUN --mount=type=secret,id=cabundle,target=/run/secrets/cabundle \
    if [ -s /run/secrets/cabundle ]; then export PIP_CERT=/run/secrets/cabundle; fi \
    && pip install --no-deps /src

# ---- the image: Python, git for DVC, the environment, a non-root user ----
FROM ${BASE_IMAGE}
ARG VERSION=0.0.0
ARG REVISION=unknown
ARG TORCH_VERSION=2.13.0
LABEL org.opencontainers.image.title="llm-lab" \
      org.opencontainers.image.description="LLM Lab, cpu tier" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      dev.llm-lab.tier="cpu" \
      dev.llm-lab.python="3.11" \
      dev.llm-lab.torch="${TORCH_VERSION}" \
      dev.llm-lab.cuda="none"
# git: DVC keeps its pipeline in a git repository; libgomp1: llama.cpp's CPU backend is built with OpenMP
# hadolint ignore=DL3008  # Debian's security updates replace exact versions; the base tag pins the release
RUN apt-get update \
    && apt-get install -y --no-install-recommends git libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 --user-group lab
COPY --from=build /opt/venv /opt/venv
# safe.directory: a mounted checkout may belong to another uid than the one running; LAB_VENV: the justfile's
# recipes use /opt/venv as it is instead of making a .venv
ENV VIRTUAL_ENV=/opt/venv LAB_VENV=/opt/venv PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 \
    GIT_CONFIG_COUNT=1 GIT_CONFIG_KEY_0=safe.directory GIT_CONFIG_VALUE_0=*
WORKDIR /workspace
COPY --chown=10001:10001 . /workspace
# numeric: a runtime can check it is not root without reading /etc/passwd
USER 10001
CMD ["python", "-m", "labs", "list"]
