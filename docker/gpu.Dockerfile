# LLM Lab, GPU tiers: t4 (Turing sm_75: fp16, sdpa, bitsandbytes) and a100 (Ampere/Hopper sm_80/90: bf16,
# flash-attention 2, bitsandbytes). One file: the tiers differ only in the TIER arg and flash-attention.
#   just image build t4         -> llm-lab:<version>-t4 and llm-lab:<version>-t4-py3.12-torch2.13.0-cuda13.0
#   just image build a100       -> the same with flash-attention 2 (FLASH_ATTN_WHEEL)
#   just docker lab sft a100    -> `just lab sft` inside on the GPU, this checkout and its DVC cache mounted
# Host: an NVIDIA driver >= 580 (CUDA 13.0) and nvidia-container-toolkit (docker/README.md).
# torch 2.13.0's Linux wheel on PyPI is built for CUDA 13.0 and brings the CUDA libraries as packages, all
# pinned by hash in docker/locks/cuda.txt; the base image adds the CUDA environment the toolkit expects.
ARG BASE_IMAGE=nvidia/cuda:13.0.0-base-ubuntu24.04

# ---- system: Python 3.12 (Ubuntu 24.04's), git for DVC, OpenMP for llama.cpp, the venv, a non-root user ----
FROM ${BASE_IMAGE} AS system
# hadolint ignore=DL3008  # Debian's security updates replace exact versions; the base tag pins the release
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv git ca-certificates libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv \
    && useradd --create-home --uid 10001 --user-group lab
ENV VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

# ---- build: the packages (this is where CUDA-only artifacts start), with the compilers llama.cpp needs ----
FROM system AS build
# hadolint ignore=DL3008  # Debian's security updates replace exact versions; the base tag pins the release
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++ make cmake \
    && rm -rf /var/lib/apt/lists/*
ARG TIER=t4
# a100 only: flash-attention 2 as a prebuilt wheel matched to torch 2.13 / CUDA 13 / cp312 / C++11 ABI. No package
# index hosts one (PyPI has its source, which compiles for hours), so the wheel's address is an argument.
ARG FLASH_ATTN_WHEEL=""
# llama.cpp compiled for the portable AVX2 baseline (llama-cpp.env), not for the CPU that happens to build the image
COPY docker/locks/cuda.txt docker/llama-cpp.env /tmp/
# The optional secret `cabundle` is a CA bundle for builds behind a TLS-inspecting proxy.
# hadolint ignore=DL3013  # the flash-attention wheel is one exact file
RUN --mount=type=secret,id=cabundle,target=/run/secrets/cabundle \
    if [ -s /run/secrets/cabundle ]; then export PIP_CERT=/run/secrets/cabundle; fi \
    && set -a && . /tmp/llama-cpp.env && set +a \
    && pip install --require-hashes -r /tmp/cuda.txt \
    && if [ "$TIER" = a100 ]; then \
        if [ -z "$FLASH_ATTN_WHEEL" ]; then echo "error: a100 needs --build-arg FLASH_ATTN_WHEEL=<wheel address> (docker/README.md)" >&2; exit 2; fi; \
        pip install --no-deps "$FLASH_ATTN_WHEEL"; \
    fi
COPY pyproject.toml README.md /src/
COPY labs /src/labs
# the project itself (its build backend, setuptools, comes from the index: the same optional CA bundle)
RUN --mount=type=secret,id=cabundle,target=/run/secrets/cabundle \
    if [ -s /run/secrets/cabundle ]; then export PIP_CERT=/run/secrets/cabundle; fi \
    && pip install --no-deps /src

# ---- the image ----
FROM system
ARG TIER=t4
ARG VERSION=0.0.0
ARG REVISION=unknown
ARG TORCH_VERSION=2.13.0
ARG CUDA_VERSION=13.0
LABEL org.opencontainers.image.title="llm-lab" \
      org.opencontainers.image.description="LLM Lab, ${TIER} tier" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      dev.llm-lab.tier="${TIER}" \
      dev.llm-lab.python="3.12" \
      dev.llm-lab.torch="${TORCH_VERSION}" \
      dev.llm-lab.cuda="${CUDA_VERSION}"
COPY --from=build /opt/venv /opt/venv
# safe.directory: a mounted checkout may belong to another uid than the one running; LAB_VENV: the justfile's
# recipes use /opt/venv as it is instead of making a .venv
ENV LAB_VENV=/opt/venv PYTHONUNBUFFERED=1 NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    GIT_CONFIG_COUNT=1 GIT_CONFIG_KEY_0=safe.directory GIT_CONFIG_VALUE_0=*
WORKDIR /workspace
COPY --chown=10001:10001 . /workspace
# numeric: a runtime can check it is not root without reading /etc/passwd
USER 10001
CMD ["python", "-m", "labs", "list"]
