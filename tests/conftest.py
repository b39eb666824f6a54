"""Fixtures: a throwaway copy of the project with tiny params, built through the real CLI and DVC."""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import forked
import pytest
import yaml
from filelock import FileLock

from labs.core import kernels
from labs.registry import LABS
from labs.tools.stages import upstream_stages as stages_upstream

ROOT = Path(__file__).resolve().parents[1]

# The real model and schedule on two families and fewer rows: SFT's effect on exact-match is as clear as in
# the full curriculum (EM 0 -> 91 here, on an AVX-512 Xeon).
TINY = {
    "data": {"families": ["add", "sort"], "sft_per_family": 1500, "test_per_family": 50,
             "corpus_per_family": 1500, "preference_per_family": 400, "rl_per_family": 200,
             "domain": {"corpus": 1500, "sft": 600, "test": 50},
             "arith": {"train_digits": [2, 3], "test_digits": [2, 3, 4], "per_length": 800, "test_per_length": 20},
             "safety": {"sft": 400, "test": 40, "jailbreak": 20, "preference": 400}},
    # the CPU tier's earlier 4-layer model, on which every effect below was measured: the 8-layer default
    # (deep enough for speculative decoding to pay) would take `just test` past 15 minutes
    "pretrain": {"model": {"num_layers": 4}, "lr": 3.0e-3},
    # lora and qlora: their effect is asserted like sft's. LoRA takes 6 epochs: at 4 its held-out EM swung from
    # 14 to 54 with the CPU's kernels (AVX-512 vs AVX2 on one Xeon), at 6 it gave 78 and 69; QLoRA gave 40 and 43
    # at 4. The other methods only need to show that they train.
    # objectives: 30 steps each (every loss falls), one probe seed of 10 steps on fewer pairs (the tests read the
    # probe's table, not its accuracies: 40 steps took the stage from 69 to 110 s)
    "objectives": {"tokens": 61440, "warmup_steps": 5,
                   "probe": {"train_pairs": 300, "test_pairs": 100, "max_steps": 10, "seeds": [1337]}},
    # embeddings: one seed of short runs on fewer towns; the encoder's beats mean pooling (test_embeddings.py), the
    # SimCSE and causal rows are not asserted (at 60 steps the causal recall stayed where it started): 5 steps each
    # show they train (the stage alone: 71 -> 44 s, the asserted rows' recall the same)
    "embeddings": {"train_towns": 200, "test_towns": 50, "seeds": [1337], "encoder_simcse": {"steps": 5},
                   "encoder_supervised": {"steps": 60}, "causal_supervised": {"steps": 5}},
    # rag: a small store and a short reading fine-tune (what the tests assert of it holds after a few steps: the
    # 4-layer tiny model needs hundreds of steps before it copies a fact; the full run measures that)
    "rag": {"train_towns": 100, "test_questions": 1, "top_k": [1, 3], "latency_queries": 4,
            "reader": {"max_steps": 30}},
    # continued pretraining: two replay shares, short runs (the directions asserted in test_dynamics.py)
    "cpt": {"replay": [0.0, 0.3], "max_steps": 60, "seeds": [], "sft": {"max_steps": 60}},
    "sft_variants": {"max_steps": 100, "seeds": []},
    "cot": {"max_steps": 150, "max_new_tokens": 96},
    "mixing": {"steps_per_task": 60},  # its mixtures: REPLACED below
    "continual": {"order": ["add", "sort"], "steps_per_task": 60},
    "curriculum": {"max_steps": 30, "eval_every": 10, "eval_prompts": 20, "max_new_tokens": 80},
    "lora": {"epochs": 6, "lr": 5.0e-3, "seeds": []},
    "qlora": {"epochs": 4, "lr": 5.0e-3, "seeds": []},
    # the seed spread on a short adapter run: dora, retrained with one more seed (`seeds` of a method here)
    "peft_methods": {"methods": {"dora": {"max_steps": 60, "seeds": [1]}, "prefix": {"max_steps": 60, "seeds": []},
                                 "prompt": {"max_steps": 60, "seeds": []}, "ia3": {"max_steps": 60, "seeds": []}}},
    # the alignment labs: short schedules whose direction is still clear (asserted in test_alignment.py)
    "reward": {"samples_per_prompt": 1, "on_policy_prompts": 200, "epochs": 3},  # 55 -> 73% measured here
    # label: sampled at 0.7, a third of the pairs has one right answer (at 1.0 the tiny SFT model is mostly wrong)
    "label": {"pairs": 80, "temperature": 0.7},
    # scale: every strategy's loss curve and state against one process's; exact-match barely moves in 40 steps
    "scale": {"max_steps": 40, "logging_steps": 10},
    "dpo": {"max_steps": 40},
    # multiobjective: the two ends of w on a few hundred pairs, two epochs of each model (every accuracy and
    # refusal rate the test reads came out at 0 or 100)
    "multiobjective": {"weights": [0.0, 1.0], "reward_task_pairs": 400, "policy_task_pairs": 150,
                       "reward_epochs": 2, "epochs": 2},
    # rlaif: one loop (one seed) on a few hundred prompts; the judge on most of the tiny preference file
    "rlaif": {"judge": {"pairs": 600}, "seeds": [1337]},
    # selfinstruct: both filters, two rounds, one seed, few written tasks; 500 seeds a family and 600 steps, so that
    # the checker keeps some answers (at 200 and 200 the seed-only model answered none right); ROUGE-L 0.8, where
    # a sort task (6 words) one digit from another is a near-duplicate
    "selfinstruct": {"seeds_per_family": 500, "instructions": 300, "max_steps": 600, "seeds": [1337],
                     "rouge_threshold": 0.8},
    # constitution: one seed, a quarter of the assistant's steps on fewer task chats (the tiny safety files hold
    # ~380 teaching requests and ~380 red-team ones; at 700 steps its critiques faulted 85% of the harmful replies
    # and 13% of the benign); the tiny tokenizer spells the critiques in more tokens
    "constitution": {"task_chats": 300, "max_steps": 700, "seeds": [1337], "max_length": 320},
    "ppo": {"episodes": 512, "batch_size": 16, "mini_batches": 1, "lr": 3.0e-5},  # 32 updates
    # GRPO: twice the lr, held by a KL weight of 0.2 (2e-4 broke greedy EM), sampling at 0.7: at 1.0 the share of
    # right samples stayed flat for one seed of two on an AMD EPYC; at 0.7 it rose for seeds 1337, 1 and 2
    "grpo": {"max_steps": 80, "lr": 1.0e-4, "beta": 0.2, "temperature": 0.7},
    # compression: distill keeps its schedule (a 157k student needs it: 3 epochs gave EM 21 vs the teacher's 41),
    # prune and QAT take short ones; speeds from one round of 16 prompts

    "prune": {"sparsities": [0.7], "max_steps": 100},
    "quantize": {"qat": {"max_steps": 20}},
    "evaluate": {"speed_prompts": 16, "speed_rounds": 1},
    # inference: the real strategies, caches, drafts and server on fewer prompts and shorter loads
    "decode": {"prompts": 64, "diversity_prompts": 16, "diversity_runs": 2},
    "attention": {"prompt_lengths": [64], "new_tokens": [32], "rounds": 1},
    "speculative": {"draft_tokens": [4], "prompts": 8, "rounds": 1},
    "serve": {"concurrency": [1, 8], "requests_per_client": 2, "rounds": 1, "slots": 8},
}


# HF_HUB_OFFLINE: no test may reach a model hub; a hub id must fail at once, not after a timeout.
# LLAMA_CPP_DIR: the workspaces are copies without build/; `just llama-cpp` put the converter in this checkout's.
# LAB_VENV: the `just` recipes a test runs use this environment, not a .venv of their own in each workspace.
# LAB_VLLM_VENV, LAB_LLAMA_SERVER: serve's engines, built once in this checkout by `just test`'s dependencies
# (`just vllm-env`, `just llama-server`: ~1 and ~2 min the first time, then reused while their inputs stay).
ENV = {"PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "LAB_VENV": sys.prefix,
       "LLAMA_CPP_DIR": os.environ.get("LLAMA_CPP_DIR", str(ROOT / "build" / "llama.cpp")),
       "LAB_VLLM_VENV": os.environ.get("LAB_VLLM_VENV", str(ROOT / ".venv-vllm")),
       "LAB_LLAMA_SERVER": os.environ.get("LAB_LLAMA_SERVER", str(ROOT / "build/llama-server/llama-server"))}


# params the tiny project replaces whole (merging would keep the full curriculum's families in them)
REPLACED = {("mixing", "mixtures"): {"uniform": {"add": 1, "sort": 1}, "add_heavy": {"add": 3, "sort": 1}}}


def parallel() -> bool:
    """Whether this is one of several pytest-xdist workers (`just test` runs two)."""
    return int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1


# Test commands run with the fast switch (each library's own kernels: quicker, and other bits on every CPU
# generation), so the tiny curriculum's effect thresholds must hold whatever the kernels, not by bit-exactness.
# On an AVX-512/AMX Xeon the stages after sft (lora, qlora, dpo and its variants, ppo, grpo, evaluate's win
# rate) passed under the fast switch and under the pins alike, once lora, ORPO and GRPO were retuned (their
# comments). The tests of what the pins promise ask for them: PINNED (test_kernels, the resume test).
PINNED = {**kernels.PINS, kernels.FAST_SWITCH: "0"}
FAST = {kernels.FAST_SWITCH: "1"}


def lab_env(env: dict | None = None) -> dict:
    """The environment every command a test runs gets: under pytest-xdist two workers share the two cores, one
    torch thread per lab each, where two threads each only fought over them; fast kernels unless `env` pins them
    (this process's own `import labs` set the pins in os.environ, so they are dropped first, with pytest's name of
    the running test: it would set every test's commands apart from the fork server's)."""
    threads = {"LAB_THREADS": "1"} if parallel() else {}
    dropped = {*kernels.PINS, "PYTEST_CURRENT_TEST"}
    inherited = {name: value for name, value in os.environ.items() if name not in dropped}
    return {**inherited, **ENV, **threads, "PYTHONDONTWRITEBYTECODE": "1", **FAST, **(env or {})}


def run(args: list[str], cwd: Path, check: bool = True, env: dict | None = None,
        **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, env=lab_env(env), **kwargs)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def fork_server() -> forked.Server:
    """This pytest process's fork server (tests/forked.py), in the environment of a command that passes no `env`
    (first asked for by `fork_server_started`, before any test changes os.environ)."""
    return forked.server(lab_env())


def forking() -> bool:
    """Whether labs may be forked from the fork server; LAB_TEST_FORK=0 makes every lab a subprocess (what the
    server saves: docs/decisions.md)."""
    return os.environ.get("LAB_TEST_FORK", "1") != "0"


@pytest.fixture(scope="session", autouse=True)
def fork_server_started(request):
    """The server imports the libraries (~25 s of a core) while the first tests run, not when the first lab waits;
    not for the image tests, whose labs run in the image."""
    if forking() and any(item.get_closest_marker("image") is None for item in request.session.items):
        fork_server().ensure_running()


def start_lab(args: list[str], cwd: Path, env: dict, stdout: Path, stderr: Path):
    """`python -m labs ARGS` in `cwd`, its output in files: forked from the fork server when `env` is the server's,
    else a subprocess. Either answers poll(), wait(), kill() and returncode."""
    if forking() and fork_server().matches(env):
        return fork_server().start(args, cwd, env, stdout, stderr)
    out = stdout.open("w")
    err = out if stderr == stdout else stderr.open("w")
    with out, err:
        return subprocess.Popen([sys.executable, "-m", "labs", *args], cwd=cwd, env=env, stdout=out, stderr=err)


def lab(*args: str, cwd: Path, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m labs ARGS`, forked from the fork server where its environment allows (`start_lab`). A command
    expected to fail (check=False) runs as a subprocess: its error output is read as a user sees it, from a fresh
    interpreter, messages of the libraries' imports and all."""
    command = [sys.executable, "-m", "labs", *args]
    if not check:
        return run(command, cwd=cwd, check=False, env=env)
    with tempfile.TemporaryDirectory() as tmp:
        stdout, stderr = Path(tmp) / "stdout", Path(tmp) / "stderr"
        code = start_lab(list(args), cwd, lab_env(env), stdout, stderr).wait()
        proc = subprocess.CompletedProcess(command, code, stdout.read_text(), stderr.read_text())
    if code != 0:
        raise AssertionError(f"{' '.join(command)} exited {code}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = merge(base.get(key, {}), value) if isinstance(value, dict) else value
    return out


def make_workspace(path: Path, overrides: dict = TINY) -> Path:
    """A copy of the project (code, dvc.yaml, tiny params) in its own git + DVC repository."""
    path.mkdir(parents=True, exist_ok=True)
    shutil.copytree(ROOT / "labs", path / "labs", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".dvcignore", "justfile", "data.dvc", "data/.gitignore",
                 "data/labels/judgements.jsonl.dvc", "data/labels/.gitignore",
                 "docker/locks/vllm.txt", "docker/llama-cpp.env"):  # serve's engine builds are stage deps
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, path / name)

    params = merge(yaml.safe_load((ROOT / "params.yaml").read_text()), overrides)
    if overrides is TINY:
        for (section, key), value in REPLACED.items():
            params[section][key] = value
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q"], cwd=path)
    run(["dvc", "init", "-q"], cwd=path)
    run(["dvc", "config", "core.analytics", "false"], cwd=path)
    run(["just", "_no-judgements"], cwd=path)  # none yet, as on a fresh clone
    return path


# DVC's repository lock lets one `dvc repro` run at a time, and DVC runs stages one by one. So `built` runs the
# stages up to pretrain through `dvc repro`, then every later stage through the same CLI that DVC calls
# (`python -m labs NAME`, forked: `start_lab`), two at a time, one thread each, each as soon as the stages it reads
# from are done: on two cores that halves the wait. `dvc commit` then records their outputs in dvc.lock, and
# test_dvc_repro_right_after_is_a_noop checks that DVC agrees nothing is left to run.
SPINE = ["prepare", "tokenizer", "pretrain"]


def build_order(ws: Path) -> list[str]:
    """The stages after the spine: a stage more others wait on goes first (when two are ready, the one with the
    longer chain of work behind it), and among equals the longer one, so that no long stage is left running
    alone at the end while the other slot idles. A stage's length is its wall time in the committed
    metrics/<lab>.json (the full curriculum's run: what is known before the tiny one has run); a stage with none
    yet counts as the longest, since starting a short one early costs nothing and ending on a long one does."""
    after = upstream_stages(ws)

    def downstream(stage: str) -> set[str]:
        direct = {name for name, ups in after.items() if stage in ups}
        return direct.union(*(downstream(name) for name in direct))

    def seconds(stage: str) -> float:
        path = ROOT / "metrics" / f"{stage}.json"
        return json.loads(path.read_text()).get("run", {}).get("wall_time_s", 0.0) if path.exists() else math.inf

    later = [name for name in LABS if name in after and name not in SPINE]
    return sorted(later, key=lambda name: (-len(downstream(name)), -seconds(name)))


def upstream_stages(ws: Path) -> dict[str, set[str]]:
    """stage -> the stages whose outputs it reads, in workspace `ws`."""
    return stages_upstream(yaml.safe_load((ws / "dvc.yaml").read_text())["stages"])


def run_in_parallel(ws: Path, stages: list[str], done: set[str], slots: int = 2, timeout: int = 3600) -> None:
    """Each stage in `stages` once every stage it reads from is in `done`, at most `slots` at a time. The timeout
    stops a hung stage; it is about twice what the stages took on a 2-core AMD EPYC beside the other pytest worker."""
    after = upstream_stages(ws)
    env = lab_env({"LAB_THREADS": "1"})
    waiting, running, done = list(stages), {}, set(done)
    deadline = time.monotonic() + timeout
    try:
        while waiting or running:
            for stage in [s for s in waiting if after[s] <= done][:slots - len(running)]:
                log = ws / f".{stage}.log"
                running[stage] = (start_lab([stage], ws, env, log, log), log)
                waiting.remove(stage)
            if not running:
                raise AssertionError(f"stages whose upstream never ran: {waiting}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{sorted(running)} still running after {timeout} s")
            time.sleep(0.5)
            for stage, (proc, log) in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[stage]
                if proc.returncode != 0:
                    raise AssertionError(f"{stage} exited {proc.returncode}\n{log.read_text()[-3000:]}")
                done.add(stage)
    finally:  # a failed or late stage stops the others: nothing keeps running after the build has failed
        for proc, _ in running.values():
            proc.kill()


def build(ws: Path) -> None:
    make_workspace(ws)
    run(["just", "data"], cwd=ws)
    run(["dvc", "repro", SPINE[-1]], cwd=ws, timeout=900)
    later = build_order(ws)
    run_in_parallel(ws, later, done=set(SPINE))
    run(["dvc", "commit", "--force", "--quiet", *later], cwd=ws)


@pytest.fixture(scope="session")
def built(tmp_path_factory) -> Path:
    """The tiny project after `just data` and the whole curriculum: `dvc repro pretrain`, then every later stage
    two at a time as its upstream finishes, every output recorded by `dvc commit`. Built once for all pytest-xdist
    workers (the first to ask builds it behind a file lock, the others wait and reuse it). Read-only for tests:
    one that runs anything in it takes `built_copy`."""
    if reuse := os.environ.get("LAB_TEST_BUILT"):  # a developer's shortcut: a `built` workspace of an earlier run
        return Path(reuse)
    shared = tmp_path_factory.getbasetemp()
    if parallel():
        shared = shared.parent  # the directory every worker's basetemp is in
    ws, outcome = shared / "built", shared / "built.outcome"
    with FileLock(shared / "built.lock"):
        if not outcome.exists():
            try:
                build(ws)
                outcome.write_text("ok")
            except BaseException as exc:  # the waiting workers fail with the same cause instead of rebuilding
                outcome.write_text(f"building the tiny curriculum failed: {exc}"[:5000])
                raise
    if (text := outcome.read_text()) != "ok":
        pytest.fail(text, pytrace=False)
    return ws


@pytest.fixture
def built_copy(built, tmp_path) -> Path:
    """A private copy of `built` (git, DVC cache and all) for a test that runs labs, DVC or just in it."""
    return Path(shutil.copytree(built, tmp_path / "built", symlinks=True))


@pytest.fixture(scope="session")
def prepared_template(tmp_path_factory) -> Path:
    """A tiny project with data generated and prepared, made once; `workspace` hands each test a copy."""
    ws = make_workspace(tmp_path_factory.mktemp("template") / "ws")
    lab("data", cwd=ws)
    lab("prepare", cwd=ws)
    return ws


@pytest.fixture
def workspace(prepared_template, tmp_path) -> Path:
    """A fresh tiny project with data generated and prepared (no models)."""
    return Path(shutil.copytree(prepared_template, tmp_path / "ws", symlinks=True))


def pytest_report_header() -> list[str]:
    """The CPU this suite runs on and what its kernels compute with: results are pinned to AVX2 code paths, and a
    failure on one machine only is read against these lines first."""
    probe = "import json, labs, labs.core.kernels as k; print(json.dumps(k.in_force()))"
    force = {mode: json.loads(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                                             check=True, env=lab_env(env)).stdout)
             for mode, env in (("pinned", PINNED), ("fast", FAST))}
    cpu = kernels.cpu()
    return [f"cpu: {cpu['model']}; flags: {' '.join(cpu['flags']) or 'none of ' + ', '.join(kernels.FLAGS)}",
            f"labs compute with torch capability {force['pinned']['capability']} (pins {force['pinned']['pins']}); "
            f"the tiny curriculum with the fast switch: {force['fast']['capability']}"]


def pytest_collection_modifyitems(items):
    """One test of the built project, then every test that needs none, then the other built ones, longest first
    (`long` marks). `just test` has pytest-xdist hand out tests two at a time from the front (`--maxschedchunk
    1`): one worker takes the first and builds the project while the other runs the tests that need none, and
    then the two share what is left without one holding a queue of tests the other waits out."""
    def seconds(item) -> float:
        mark = item.get_closest_marker("long")
        return mark.args[0] if mark else 0

    built = sorted((item for item in items if "built" in item.fixturenames), key=seconds, reverse=True)
    rest = [item for item in items if "built" not in item.fixturenames]
    items[:] = built[:1] + rest + built[1:]


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread_per_worker():
    """In-process models too: two xdist workers on two cores, one thread each."""
    if parallel():
        import torch

        torch.set_num_threads(1)
