# LLM Lab: every recipe is one line of `just --list`.
set shell := ["bash", "-euo", "pipefail", "-c"]

# list the recipes
default:
    @just --list --unsorted

# install the CPU tier into the active Python environment (torch's CPU wheel first)
setup:
    pip install torch==2.13.0
    pip install -e ".[dev]"

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
