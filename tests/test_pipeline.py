"""The spine end to end on a tiny model: real CLI, real DVC, asserting each lab's effect."""

import hashlib
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from labs.core import kernels
from labs.registry import LABS
from tests.conftest import PINNED, lab, lab_env, run

pytestmark = pytest.mark.slow


ROOT = Path(__file__).resolve().parents[1]


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_every_stage_leaves_its_outputs(built):
    for model in ("tokenizer", "pretrain", "sft"):
        assert (built / "models" / model / "tokenizer.json").exists()
    for model in ("pretrain", "sft"):
        files = {p.name for p in (built / "models" / model).iterdir()}
        assert {"model.safetensors", "config.json", "run_card.json", "chat_template.jinja"} <= files
        assert not any(name.endswith((".bin", ".pt", ".pth", ".pkl")) for name in files), "safetensors only"
        weights = (built / "models" / model / "model.safetensors").stat().st_mode & 0o777
        assert weights == 0o644, f"{oct(weights)}: a container running as another user reads the weights"
    card = load(built / "models/sft/run_card.json")
    assert card["tier"] == "cpu" and card["seed"] == 1337 and card["config"]["lr"] == 2e-3
    assert {"torch", "transformers", "trl", "peft", "datasets", "dvc"} <= set(card["versions"])
    assert "git_revision" not in card, "provenance goes to the metrics' run block, not into a DVC out"
    run_stats = load(built / "metrics/sft.json")["run"]
    assert run_stats["wall_time_s"] > 0 and run_stats["peak_rss_mb"] > 50 and run_stats["device"] == "cpu"
    assert run_stats["git_revision"] and run_stats["kernels"]["pins"] == dict.fromkeys(kernels.PINS), \
        "the run block records the kernels the tiny build ran with: the fast switch (tests/conftest.py)"
    assert not list(built.glob(".checkpoints/sft/*")), "a finished run leaves no checkpoints to resume from"


def test_training_logs_progress_lines_not_raw_dicts(built):
    """Under a pipe (DVC's output in CI) each logging step is one plain line: step / total, loss, tokens/s, time
    left; no carriage returns, no dicts of the trainer's logs."""
    log = (built / ".sft.log").read_text()
    step = r"^sft: step \d+/\d+ \(\d+%\)  loss \d+\.\d{4}  [\d,]+ tok/s  \d+:\d\d left$"
    assert re.search(step, log, re.M), log[-2000:]
    assert re.search(r"^sft: eval loss \d+\.\d{4}$", log, re.M), log[-2000:]
    assert "\r" not in log and "{'loss'" not in log and "{'eval_loss'" not in log
    after_sft = list(LABS)[list(LABS).index("sft") + 1]  # the registry's next lab
    assert "sft finished in" in log and f"next: just lab {after_sft} " in log


def test_pretraining_lowers_validation_loss(built):
    metrics = load(built / "metrics/pretrain.json")
    assert metrics["val_loss"] < 0.6 * metrics["val_loss_before"]


def test_sft_lowers_loss_and_raises_exact_match_over_the_base(built):
    sft = load(built / "metrics/sft.json")
    assert sft["val_loss"] < 0.5 * sft["val_loss_before"]
    table = load(built / "metrics/evaluate.json")["models"]
    base, tuned = table["pretrain"]["exact_match"], table["sft"]["exact_match"]
    assert set(tuned) == {"add", "sort", "overall"}
    assert tuned["overall"] >= base["overall"] + 20, (base, tuned)
    assert table["sft"]["answer_perplexity"] < table["pretrain"]["answer_perplexity"]
    assert tuned == sft["exact_match"], "evaluate and sft measure the same model the same way"


def test_sft_model_ends_its_turn_with_eos(built):
    """The RL labs sample from the SFT model: it must stop by itself, where the base model rambles on."""
    table = load(built / "metrics/evaluate.json")["models"]
    assert table["sft"]["eos_rate"] >= 95 and table["pretrain"]["eos_rate"] < 50, table


def test_dvc_repro_right_after_is_a_noop(built_copy):
    start = time.perf_counter()
    proc = run(["dvc", "repro"], cwd=built_copy)
    assert "didn't change, skipping" in proc.stdout or "up to date" in proc.stdout
    assert "Running stage" not in proc.stdout
    assert time.perf_counter() - start < 30
    assert "up to date" in run(["dvc", "status"], cwd=built_copy).stdout


def stale(ws: Path) -> set[str]:
    """The stages `dvc status` says must run again."""
    return {name.split(":")[-1] for name in json.loads(run(["dvc", "status", "--json"], cwd=ws).stdout)}


def importers(module: str) -> set[str]:
    from labs.tools.stages import code_deps

    return {name for name in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"] if module in code_deps(name)}


def test_an_edit_makes_stale_exactly_the_stages_that_read_it(built_copy):
    """A stage depends on its own module, the core modules it imports and the params it reads, nothing else:
    editing one lab re-runs that lab, editing a core module re-runs exactly the labs that import it."""
    for path, expected in (("labs/dpo.py", {"dpo"}), ("labs/core/adapters.py", importers("labs/core/adapters.py")),
                           ("labs/core/train.py", importers("labs/core/train.py"))):
        original = (built_copy / path).read_text()
        (built_copy / path).write_text(original + "# an edit\n")
        assert stale(built_copy) == expected, path
        (built_copy / path).write_text(original)
    assert importers("labs/core/adapters.py") == {"lora", "qlora", "peft_methods", "continual"}
    original = (built_copy / "params.yaml").read_text()
    params = yaml.safe_load(original)
    params["dpo"]["lr"] *= 2
    (built_copy / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert stale(built_copy) == {"dpo"}
    params["evaluate"]["models"] = ["sft"]  # evaluate's own key: the labs that read other evaluate keys stay
    (built_copy / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert stale(built_copy) == {"dpo", "evaluate"}
    (built_copy / "params.yaml").write_text(original)
    assert stale(built_copy) == set()


def test_forced_pretrain_rerun_at_a_later_commit_leaves_its_hash_and_downstream_alone(built_copy):
    """Outputs are a pure function of inputs: re-running a training stage at a commit that changed none of its
    inputs gives the same bytes, so DVC keeps every stage downstream of it up to date. pretrain, the stage every
    model descends from, trains in a fifth of sft's time; sft's own bytes are checked run against run by
    test_killed_sft_resumes_to_the_same_model."""
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@localhost"]
    run(["git", "add", "-A"], cwd=built_copy)
    run([*git, "commit", "-qm", "built"], cwd=built_copy)
    def outputs() -> dict:  # what pretrain's stage records of its model and curves (its metrics hold timings)
        outs = yaml.safe_load((built_copy / "dvc.lock").read_text())["stages"]["pretrain"]["outs"]
        return {out["path"]: out["md5"] for out in outs if not out["path"].startswith("metrics/")}

    recorded = outputs()
    assert set(recorded) == {"models/pretrain", "plots/pretrain"}
    (built_copy / "labs/dpo.py").write_text((built_copy / "labs/dpo.py").read_text() + "# a later change\n")
    run([*git, "commit", "-qam", "later"], cwd=built_copy)
    # run as the build ran it (`dvc repro pretrain`, the same thread count: it decides the order of float sums)
    proc = run(["dvc", "repro", "--force", "--single-item", "pretrain"], cwd=built_copy)
    assert "Running stage 'pretrain'" in proc.stdout
    assert outputs() == recorded
    assert stale(built_copy) == {"dpo"}


def test_just_lab_refreshes_evaluate_only_when_nothing_else_must_be_built(built_copy):
    """`just lab sft` must not train the alignment chain for the evaluation table: with dpo out of date it says
    so and leaves evaluate alone; once only evaluate is out of date, it refreshes it."""
    original = (built_copy / "params.yaml").read_text()
    params = yaml.safe_load(original)
    params["dpo"]["lr"] *= 2
    (built_copy / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    table = (built_copy / "metrics/evaluate.json").read_text()
    dpo_card = load(built_copy / "models/dpo/run_card.json")
    proc = run(["just", "lab", "sft"], cwd=built_copy)
    assert "evaluate not refreshed: it would first run dpo" in proc.stderr, proc.stderr
    assert "Running stage" not in proc.stdout, proc.stdout
    assert (built_copy / "metrics/evaluate.json").read_text() == table
    assert load(built_copy / "models/dpo/run_card.json") == dpo_card

    (built_copy / "params.yaml").write_text(original)
    (built_copy / "metrics/evaluate.json").unlink()
    proc = run(["just", "lab", "sft"], cwd=built_copy)
    # DVC runs evaluate, or restores the run it has cached for the same inputs
    refreshed = ("Running stage 'evaluate'", "Stage 'evaluate' is cached")
    assert any(line in proc.stdout for line in refreshed) and "not refreshed" not in proc.stderr, proc.stdout
    assert load(built_copy / "metrics/evaluate.json")["models"]["sft"]
    assert "sft is up to date: nothing to run" in proc.stderr, proc.stderr

    # before it starts, `just lab` names the stages DVC will run, in curriculum order
    params["dpo"]["lr"] /= 2
    params["prepare"]["val_fraction"] = 0.1
    (built_copy / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    proc = run(["just", "lab", "tokenizer"], cwd=built_copy)
    assert "dvc repro tokenizer runs: prepare tokenizer\n" in proc.stderr, proc.stderr
    assert "tokenizer finished in" in proc.stdout and "next: just lab pretrain" in proc.stdout, proc.stdout


def test_data_regenerates_the_same_bytes(built_copy):
    recorded = (built_copy / "data.dvc").read_text()
    run(["just", "data"], cwd=built_copy)
    assert (built_copy / "data.dvc").read_text() == recorded
    # the new domain draws from its own streams: changing it leaves the main world's files as they were
    main_world = {p.name: p.read_bytes() for p in (built_copy / "data/raw").glob("*.jsonl") if "domain" not in p.name}
    lab("data", "-S", "data.domain.corpus=100", "-S", "data.domain.sft=50", cwd=built_copy)
    assert {p.name: p.read_bytes() for p in (built_copy / "data/raw").glob("*.jsonl") if "domain" not in p.name} \
        == main_world
    assert len((built_copy / "data/raw/domain_sft.jsonl").read_text().splitlines()) == 50


def test_killed_sft_resumes_to_the_same_model(workspace):
    """kill -9 mid-training, or after training before the model is saved, run again: it resumes from the
    checkpoint and ends byte-identical to an uninterrupted run of the same config. A short schedule on its own
    tiny base, so it needs no `built` project and runs while that is being built."""
    lab("tokenizer", cwd=workspace, env=PINNED)
    lab("pretrain", "-S", "pretrain.max_steps=20", cwd=workspace, env=PINNED)
    short = ["-S", "sft.max_steps=60", "-S", "sft.save_steps=20"]  # first checkpoint after ~4 s of training
    lab("sft", *short, cwd=workspace, env=PINNED)
    reference = sha(workspace / "models/sft/model.safetensors")
    reference_em = load(workspace / "metrics/sft.json")["exact_match"]

    # the same environment as the runs before and after it (under xdist: one thread), as a user's re-run has
    proc = subprocess.Popen([sys.executable, "-m", "labs", "sft", *short], cwd=workspace, env=lab_env(PINNED),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not list((workspace / ".checkpoints/sft").glob("*/checkpoint-*/trainer_state.json")):
        assert proc.poll() is None and time.time() < deadline, "no checkpoint was written"
        time.sleep(0.2)
    time.sleep(1)  # let the checkpoint finish writing before the kill
    assert proc.poll() is None, "the run ended before the kill: nothing was interrupted"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = sorted(workspace.glob(".checkpoints/sft/*/checkpoint-*/run_card.json"))
    assert saved and load(saved[0])["config"] == load(workspace / "models/sft/run_card.json")["config"]
    assert sha(workspace / "models/sft/model.safetensors") == reference, "a killed run must not touch outputs"

    resumed = lab("sft", *short, cwd=workspace, env=PINNED)
    assert "resuming from" in resumed.stdout
    assert load(workspace / "metrics/sft.json")["resumed_from_step"] > 0
    assert sha(workspace / "models/sft/model.safetensors") == reference
    assert load(workspace / "metrics/sft.json")["exact_match"] == reference_em

    # Killed after its last step (60, mid-epoch), before the model was saved: the first evaluation is before
    # training, the second right after it. Resumed at step 60, the Trainer would train step 61.
    proc = subprocess.Popen([sys.executable, "-m", "labs", "sft", *short], cwd=workspace, text=True,
                            env=lab_env(PINNED | {"PYTHONUNBUFFERED": "1"}), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    evaluations = 0
    for line in proc.stdout:
        evaluations += line.startswith("sft: eval loss")
        if evaluations == 2:
            break
    proc.kill()
    proc.wait()
    assert evaluations == 2, "the run ended before its evaluation after training"
    resumed = lab("sft", *short, cwd=workspace, env=PINNED)
    assert "resuming from" in resumed.stdout
    assert load(workspace / "metrics/sft.json")["steps"] == 60
    assert sha(workspace / "models/sft/model.safetensors") == reference


def test_gpu_tier_path_starts_from_a_local_hub_style_model(workspace):
    """The t4/a100 path (`pretrain.base_model` = a hub id) on a model saved locally with save_pretrained:
    a tokenizer without chat template or pad token gets both, continued pretraining runs `max_steps`, and
    sft trains on the result. Precision stays fp32 here: fp16/bf16 autocast needs the GPU this machine lacks."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    lab("tokenizer", cwd=workspace)
    hub = workspace / "hub-model"
    tokenizer = AutoTokenizer.from_pretrained(workspace / "models/tokenizer")
    tokenizer.chat_template, tokenizer.pad_token = None, None
    tokenizer.save_pretrained(hub)
    (hub / "chat_template.jinja").unlink(missing_ok=True)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=2, intermediate_size=64, eos_token_id=tokenizer.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(hub)

    gpu_like = ["-S", "tier=t4", "-S", "pretrain.base_model=hub-model", "-S", "pretrain.max_steps=4",
                "-S", "pretrain.precision=fp32", "-S", "pretrain.save_steps=2", "-S", "pretrain.batch_size=4"]
    lab("pretrain", *gpu_like, cwd=workspace)
    card = load(workspace / "models/pretrain/run_card.json")
    assert card["tier"] == "t4" and card["config"]["base_model"] == "hub-model"
    assert card["config"]["lr"] == 1e-4, "the t4 tier's overrides apply"
    assert (workspace / "models/pretrain/chat_template.jinja").exists()
    metrics = load(workspace / "metrics/pretrain.json")
    assert metrics["steps"] == 4 and metrics["parameters"] < 100_000

    lab("sft", "-S", "tier=t4", "-S", "sft.precision=fp32", "-S", "sft.max_steps=3", "-S", "sft.batch_size=4",
        "-S", "evaluate.max_new_tokens=4", cwd=workspace)
    assert load(workspace / "metrics/sft.json")["steps"] == 3
