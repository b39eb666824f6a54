# LLM Lab: every recipe is one line of `just --list`.
set shell := ["bash", "-euo", "pipefail", "-c"]

# list the recipes
default:
    @just --list --unsorted

# llama.cpp release for GGUF export: the llama-cpp-python source release vendors the matching llama.cpp
llama_cpp_version := "0.3.36"

# install the CPU tier into the active Python environment (torch's CPU wheel first)
setup:
    pip install torch==2.13.0
    pip install -e ".[dev]"
    just llama-cpp

# llama.cpp for GGUF export (`quantize`): the bindings built from one source release, its converter into build/
llama-cpp:
    #!/usr/bin/env bash
    set -euo pipefail
    # PyPI has only the source of llama-cpp-python; its HF->GGUF converter ships in that source and nowhere
    # else, so one download gives the runtime and the converter of the same llama.cpp commit.
    mkdir -p build
    sdist=build/llama_cpp_python-{{llama_cpp_version}}.tar.gz
    [ -f "$sdist" ] || pip download --quiet --no-deps --no-binary :all: --dest build "llama-cpp-python=={{llama_cpp_version}}"
    python -c "import llama_cpp, sys; sys.exit(llama_cpp.__version__ != '{{llama_cpp_version}}')" 2>/dev/null \
        || pip install "$sdist" "sentencepiece==0.2.3"
    rm -rf build/llama.cpp && mkdir build/llama.cpp
    tar -xzf "$sdist" -C build/llama.cpp --strip-components=3 \
        llama_cpp_python-{{llama_cpp_version}}/vendor/llama.cpp/convert_hf_to_gguf.py \
        llama_cpp_python-{{llama_cpp_version}}/vendor/llama.cpp/conversion \
        llama_cpp_python-{{llama_cpp_version}}/vendor/llama.cpp/gguf-py

# list the labs, one line each
labs:
    @python -m labs list

# run a lab and whatever it needs upstream through DVC, then refresh the evaluation table
lab NAME: _data
    #!/usr/bin/env bash
    set -euo pipefail
    if [ "{{NAME}}" = data ]; then exit 0; fi
    if ! python -m labs names | grep -qx "{{NAME}}"; then
        echo "error: unknown lab '{{NAME}}' (expected one of: $(python -m labs names | tr '\n' ' '))" >&2
        exit 2
    fi
    dvc repro {{NAME}}
    if [ "{{NAME}}" != evaluate ] && python -m labs names --evaluated | grep -qx "{{NAME}}"; then
        dvc repro evaluate
    fi

# serve a model (default: the SFT model) on 127.0.0.1:8000 with the OpenAI API, until Ctrl-C
serve MODEL="models/sft" PORT="8000":
    python -m labs.serve {{MODEL}} --host 127.0.0.1 --port {{PORT}} --continuous-batching

# regenerate the task world into data/raw and record its hash in data.dvc
data:
    python -m labs data
    dvc commit --force --quiet data.dvc

# the whole curriculum through DVC
repro: _data
    dvc repro

# the test suite
test *ARGS:
    python -m pytest {{ARGS}}

# a benchmark: ratios measured side by side in one run (`just bench compression`)
bench NAME:
    python -m labs.bench {{NAME}}

# lint
lint:
    ruff check .

# regenerate the README's results table from metrics/
results:
    python -m labs.results

# generate data/raw on a fresh clone (no DVC remote needed: the generator is deterministic)
_data:
    @[ -d data/raw ] || just data
