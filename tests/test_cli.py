"""The front door: `lab` and `just` list labs, explain them, and refuse bad input in one line."""

import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, lab, run


def test_lab_lists_every_stage_of_the_pipeline():
    listed = lab("names", cwd=ROOT).stdout.split()
    dvc_stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert set(dvc_stages) <= set(listed) and "data" in listed
    assert "sft" in run(["just", "labs"], cwd=ROOT).stdout


def test_lab_help_documents_the_lab():
    out = lab("sft", "--help", cwd=ROOT).stdout
    assert "SFTTrainer" in out and "dvc exp run -S" in out and "--set" in out
    # every key sft reads, with its cpu default and help line: its own, inherited and viewed keys alike
    rows = {line.split()[0]: line for line in out.split("params (")[1].splitlines()[1:]}
    assert list(rows)[:3] == ["seed", "tier", "sft.lr"]
    assert rows["sft.lr"].split()[1:] == ["0.002", "peak", "learning", "rate"]
    assert "evaluate.batch_size" in rows and "evaluate.reward_model" not in rows


def test_unknown_lab_is_one_line_and_exit_2():
    proc = lab("sftt", cwd=ROOT, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: unknown lab 'sftt' (expected one of: data, prepare")
    proc = run(["just", "lab", "sftt"], cwd=ROOT, check=False)
    assert proc.returncode != 0 and "error: unknown lab 'sftt'" in proc.stderr


@pytest.mark.parametrize("override, expected", [
    ("prepare.val_fraction=lots", "error: params.yaml: prepare.val_fraction: expected a number, got 'lots'"),
    ("prepare.val_fractoin=0.1", "error: params.yaml: prepare.val_fractoin: unknown key"),
    ("tier=tpu", "error: params.yaml: tier: unknown tier 'tpu'"),
])
def test_bad_params_leave_outputs_untouched(workspace, override, expected):
    before = {p: p.read_bytes() for p in sorted((workspace / "data/prepared").iterdir())}
    metrics = (workspace / "metrics/prepare.json").read_bytes()
    proc = lab("prepare", "-S", override, cwd=workspace, check=False)
    assert proc.returncode == 2 and proc.stderr.strip().startswith(expected)
    assert len(proc.stderr.strip().splitlines()) == 1
    assert {p: p.read_bytes() for p in sorted((workspace / "data/prepared").iterdir())} == before
    assert (workspace / "metrics/prepare.json").read_bytes() == metrics


@pytest.mark.parametrize("line, expected", [
    ('{"prompt": "What is 1 + 2?", "completion": ', 'not valid JSON'),
    ('{"prompt": "What is 1 + 2?"}', 'missing field "completion" (sft schema)'),
    ('{"prompt": "What is 1 + 2?", "completion": 3}', 'field "completion" must be a string, got int'),
])
def test_bad_raw_row_names_file_and_line_and_keeps_prepared_data(workspace, line, expected):
    raw = workspace / "data/raw/sft.jsonl"
    rows = raw.read_text().splitlines()
    rows[6] = line
    raw.write_text("\n".join(rows) + "\n")
    before = {p: p.read_bytes() for p in sorted((workspace / "data/prepared").iterdir())}
    proc = lab("prepare", cwd=workspace, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith(f"error: data/raw/sft.jsonl:7: {expected}")
    assert {p: p.read_bytes() for p in sorted((workspace / "data/prepared").iterdir())} == before


def test_missing_upstream_model_is_named(workspace):
    proc = lab("sft", cwd=workspace, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: models/pretrain: missing config.json (run `just lab pretrain` first)"


def test_unloadable_base_model_is_one_line(workspace):
    proc = lab("pretrain", "-S", "pretrain.base_model=no-such-org/no-such-model", cwd=workspace, check=False)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: no-such-org/no-such-model: cannot load a model or tokenizer")
    assert len(proc.stderr.strip().splitlines()) == 1


def test_held_out_instances_never_appear_in_training_files(workspace):
    raw = workspace / "data/raw"
    test_prompts = {json.loads(x)["prompt"] for x in (raw / "sft_test.jsonl").read_text().splitlines()}
    train_prompts = {json.loads(x)["prompt"] for name in ("sft", "preference", "rl")
                     for x in (raw / f"{name}.jsonl").read_text().splitlines()}
    assert test_prompts and not test_prompts & train_prompts
    corpus = (raw / "corpus.jsonl").read_text()
    for prompt in test_prompts:  # "What is 23 + 58?" -> the corpus must not state "23 + 58" or "23 plus 58"
        if prompt.startswith("What is"):
            a, b = prompt[8:-1].split(" + ")
            assert f"{a} + {b} =" not in corpus and f"{a} plus {b} equals" not in corpus


def test_the_new_domain_is_held_out_and_absent_from_the_main_world(workspace):
    raw = workspace / "data/raw"
    rows = lambda name: [json.loads(x) for x in (raw / f"{name}.jsonl").read_text().splitlines()]  # noqa: E731
    test_prompts = {r["prompt"] for r in rows("domain_sft_test")}
    assert test_prompts and not test_prompts & {r["prompt"] for r in rows("domain_sft")}
    domain_corpus = (raw / "domain_corpus.jsonl").read_text()
    for prompt in test_prompts:  # "What is 71 - 24?" -> neither "71 - 24 =" nor "71 minus 24" nor "24 from 71"
        a, b = prompt[len("What is "):-1].split(" - ")
        assert f"{a} - {b} =" not in domain_corpus and f"{a} minus {b} " not in domain_corpus
        assert f"subtract {b} from {a}:" not in domain_corpus
    main_world = "".join((raw / f"{name}.jsonl").read_text() for name in ("corpus", "sft", "preference", "rl"))
    assert " minus " not in main_world and " - " not in main_world, "the base never sees the new domain"


def test_readme_results_are_generated_from_committed_metrics():
    proc = run([sys.executable, "-m", "labs.tools.results", "--check"], cwd=ROOT, check=False)
    assert proc.returncode == 0, proc.stderr


def test_ci_runs_the_readme_test_command():
    assert "just test" in (ROOT / ".ci/run").read_text()
    assert "just test" in (ROOT / "README.md").read_text()


PIP_STUB = """#!/bin/sh
# records each call and the requirements it was given: the recipe's logic is under test, not pip's
echo "pip $*" >> "$PIP_LOG"
for arg in "$@"; do [ "$previous" = -r ] && cat "$arg" >> "$PIP_LOG.requirements"; previous=$arg; done
"""


def stub_environment(tmp_path: Path, venv: str, files: tuple[str, ...]):
    """A checkout of `files` whose `venv` holds stub python and pip: returns the env for `just` and a reader of the
    pip calls made so far."""
    for name in files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, tmp_path / name)
    bin = tmp_path / venv / "bin"
    bin.mkdir(parents=True)
    for name, text in (("python", "#!/bin/sh\n"), ("pip", PIP_STUB)):
        (bin / name).write_text(text)
        (bin / name).chmod(0o755)
    log = tmp_path / "pip.log"
    env = {"LAB_VENV": "", "PIP_LOG": str(log)}  # no environment of the caller's: the recipe's own

    def calls() -> list[str]:
        return log.read_text().splitlines() if log.exists() else []

    return env, calls


def test_the_environment_is_made_on_first_use_and_again_only_when_the_lock_changes(tmp_path):
    env, calls = stub_environment(tmp_path, ".venv", ("justfile", "pyproject.toml", "docker/locks/ci.txt"))
    run(["just", "_env"], cwd=tmp_path, env=env)
    first = calls()
    assert len(first) == 4, first
    assert "--upgrade pip" in first[0] and "torch==2.13.0+cpu" in first[1]
    assert "--require-hashes -r" in first[2] and "--no-deps -e ." in first[3]
    requirements = (tmp_path / "pip.log.requirements").read_text()
    assert "\ntransformers==" in requirements and "\nllama-cpp-python==" not in requirements  # built on demand

    run(["just", "_env"], cwd=tmp_path, env=env)
    assert calls() == first, "an unchanged lock installs nothing"

    with (tmp_path / "docker/locks/ci.txt").open("a") as lock:
        lock.write("# a changed lock\n")
    proc = run(["just", "_env"], cwd=tmp_path, env=env)
    assert len(calls()) == 8 and "setting up .venv" in proc.stderr


def test_the_vllm_environment_is_its_own_and_made_once_per_lock(tmp_path):
    env, calls = stub_environment(tmp_path, ".venv-vllm", ("justfile", "docker/locks/vllm.txt"))
    run(["just", "vllm-env"], cwd=tmp_path, env=env)
    first = calls()
    assert len(first) == 3, first
    assert "--upgrade pip" in first[0] and "torch==2.13.0+cpu" in first[1]
    assert "--no-deps --require-hashes -r docker/locks/vllm.txt" in first[2]
    assert "\nvllm-cpu==" in "\n" + (tmp_path / "pip.log.requirements").read_text()
    assert not (tmp_path / ".venv").exists(), "the lab's environment is not touched"

    run(["just", "vllm-env"], cwd=tmp_path, env=env)
    assert calls() == first, "an unchanged lock installs nothing"
    with (tmp_path / "docker/locks/vllm.txt").open("a") as lock:
        lock.write("# a changed lock\n")
    run(["just", "vllm-env"], cwd=tmp_path, env=env)
    assert len(calls()) == 6
