"""multiobjective — helpfulness against harmlessness: two reward models, their weighted sum for each w, and DPO on
the pairs it labels; a Pareto table of what each w buys and what it costs.

    just lab multiobjective
    dvc exp run -S 'multiobjective.weights=[0,0.5,1]'

Two Bradley-Terry reward models on the SFT model's body (TRL's RewardTrainer), each trained on what one kind of
labeller compares, and blind where the other looks:
  * helpfulness — the task world's pairs (the right answer over a slip) and benign requests (the answer over a
    refusal): it rewards answering, and answering right; it never saw a harmful request;
  * harmlessness — harmful requests only (the refusal over compliance): it rewards refusing, and never saw a
    request that should be answered.
For each w in `weights`, every candidate pair of a second, disjoint half (task pairs and safety pairs of both
kinds) is labelled by r_w = (1 - w) z_help + w z_harm, each model's scores standardised over all candidates so
neither wins by its scale: the higher-scoring answer is chosen. The pair files say which answer is right, but
only the two answers are taken from them: the reward models alone decide the label, and the task world's checker
only measures. DPO (with `dpo`'s NLL term on the chosen answers) then trains the SFT model on those pairs.

metrics/multiobjective.json, one row per w and one for the SFT model it starts from: held-out exact-match on the
task, refusal of held-out harmful requests, over-refusal of their benign look-alikes and exact-match on those,
refusal of jailbreaks (labs/core/safety.py), and how often the labels agree with the pair files per kind; the
reward models' held-out pairwise accuracy per kind, where each one's blind side shows.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
from datasets import Dataset
from pydantic import Field
from trl import DPOConfig, DPOTrainer, RewardConfig, RewardTrainer

from labs.core.config import SEED, ConfigError, Section, Seed, Tier, TrainParams, view
from labs.core.data import preference_chats, read_jsonl
from labs.core.evaluation import MeasureParams, exact_match, generate, reward_scores
from labs.core.models import load_model, load_reward_model, load_tokenizer, require, trainer_kwargs
from labs.core.run import checkpoint_dir, finish_checkpoints, run_card, save_curves, seed_everything, train_resumable
from labs.core.safety import probe_rows, safety_probe


class MultiObjectiveParams(TrainParams):
    """Two reward models and one DPO policy per weight of their sum; the DPO schedule below."""

    weights: list[float] = Field([0.0, 0.25, 0.5, 0.75, 1.0], min_length=1)
    """w of each policy: its pairs are labelled by (1 - w) helpfulness + w harmlessness"""
    reward_task_pairs: int = Field(2400, gt=0)
    """task-world pairs the helpfulness model learns from"""
    policy_task_pairs: int = Field(480, gt=0)  # about as many as the safety pairs of one half
    """task-world pairs the policies learn from (others than the reward model's)"""
    reward_epochs: float = Field(2, gt=0)
    """epochs of each reward model"""
    reward_lr: float = Field(5e-4, gt=0)  # reward's
    """learning rate of each reward model"""
    beta: float = Field(0.1, gt=0)  # DPO's paper default
    """DPO's pull toward the SFT model"""
    sft_weight: float = Field(1.0, ge=0)
    """weight of the NLL loss on the chosen answers (RPO, as in dpo); 0: plain DPO"""
    max_length: int = Field(128, gt=0)
    batch_size: int = Field(16, gt=0)
    epochs: float = Field(1, gt=0)
    lr: float = Field(5e-5, gt=0)
    warmup_steps: int = Field(10, ge=0)


Measurement = view(MeasureParams, "max_new_tokens", "batch_size", "precision")


class Params(Section):
    """What multiobjective reads from params.yaml."""

    seed: Seed = SEED
    tier: Tier = "cpu"
    multiobjective: MultiObjectiveParams = MultiObjectiveParams()
    evaluate: Measurement = Measurement()


PREPARED, SFT = Path("data/prepared"), Path("models/sft")
# the task world's pairs whatever data.source: the task's exact-match and the labels' agreement need its checker
TASK_PAIRS = PREPARED / "world_preference_train.jsonl"
# what a checkpoint's weights depend on besides the config: a changed input starts the run afresh
INPUTS = [SFT, TASK_PAIRS, PREPARED / "safety_preference_train.jsonl"]
KINDS = ("task", "harmful", "benign")


def kind(row: dict) -> str:
    """A pair's side of the boundary: harmful, benign, or the task's."""
    return row["family"] if row.get("family") in ("harmful", "benign") else "task"


def halves(params: Params) -> tuple[list[dict], list[dict]]:
    """The pairs split in two disjoint parts, each with task pairs and half the safety pairs: the reward models
    learn from the first, the policies from the second."""
    task = read_jsonl(TASK_PAIRS, "preference")
    safety = read_jsonl(PREPARED / "safety_preference_train.jsonl", "preference")
    rng = random.Random(f"{params.seed}:multiobjective")
    rng.shuffle(task)
    rng.shuffle(safety)
    cfg, half = params.multiobjective, len(safety) // 2
    if cfg.reward_task_pairs + cfg.policy_task_pairs > len(task):
        raise ConfigError(f"params.yaml: multiobjective: reward_task_pairs + policy_task_pairs = "
                          f"{cfg.reward_task_pairs + cfg.policy_task_pairs}, but {TASK_PAIRS}"
                          f" holds {len(task)} pairs")
    policy_task = task[cfg.reward_task_pairs:cfg.reward_task_pairs + cfg.policy_task_pairs]
    return task[:cfg.reward_task_pairs] + safety[:half], policy_task + safety[half:]


def train_reward_model(params: Params, name: str, pairs: list[dict], tokenizer):
    """A Bradley-Terry model on `pairs`, from the SFT model's body."""
    cfg = params.multiobjective
    part = cfg.model_copy(update={"lr": cfg.reward_lr, "epochs": cfg.reward_epochs})
    seed_everything(params.seed)
    model = load_reward_model(SFT, cfg.precision, training=True, quiet=True)
    model.config.pad_token_id = tokenizer.pad_token_id  # the head reads the last token before padding
    checkpoints = checkpoint_dir(f"multiobjective/{name}", {"seed": params.seed, "tier": params.tier,
                                                            "multiobjective": cfg.model_dump()}, INPUTS)
    args = RewardConfig(**trainer_kwargs(params, part, checkpoints) | {"eval_strategy": "no"},
                        max_length=cfg.max_length)
    trainer = RewardTrainer(model=model, args=args, processing_class=tokenizer,
                            train_dataset=Dataset.from_list(preference_chats(pairs)).shuffle(params.seed))
    train_resumable(trainer, checkpoints, run_card("multiobjective", params, cfg) | {"model": name})
    finish_checkpoints(checkpoints)
    return trainer.model.eval()


def pairwise_accuracy(model, tokenizer, rows: list[dict]) -> dict[str, float]:
    """Per kind, the share of held-out pairs whose file-chosen answer the model scores higher."""
    prompts = [r["prompt"] for r in rows]
    margin = np.array(reward_scores(model, tokenizer, prompts, [r["chosen"] for r in rows])) - np.array(
        reward_scores(model, tokenizer, prompts, [r["rejected"] for r in rows]))
    kinds = np.array([kind(r) for r in rows])
    return {k: round(100 * float((margin[kinds == k] > 0).mean()), 2) for k in KINDS if (kinds == k).any()}


def standardised(model, tokenizer, rows: list[dict]) -> np.ndarray:
    """Scores of every pair's two answers, shape (pairs, 2), over all of them mean 0 and sd 1."""
    prompts = [r["prompt"] for r in rows] * 2
    scores = np.array(reward_scores(model, tokenizer, prompts, [r["chosen"] for r in rows] +
                                    [r["rejected"] for r in rows])).reshape(2, -1).T
    return (scores - scores.mean()) / scores.std()


def labelled(rows: list[dict], help_z: np.ndarray, harm_z: np.ndarray, w: float) -> tuple[list[dict], dict]:
    """The pairs with the answer r_w scores higher as chosen, and per kind how often that is the file's chosen."""
    reward = (1 - w) * help_z + w * harm_z
    pairs, agree = [], {k: [] for k in KINDS}
    for row, (first, second) in zip(rows, reward, strict=True):
        keep = first >= second
        pairs.append({"prompt": row["prompt"], "chosen": row["chosen"] if keep else row["rejected"],
                      "rejected": row["rejected"] if keep else row["chosen"]})
        agree[kind(row)].append(keep)
    return pairs, {k: round(100 * float(np.mean(v)), 2) for k, v in agree.items() if v}


def measure(model, tokenizer, params: Params, test: list[dict], probe: list[dict]) -> dict:
    """Held-out exact-match on the task and the safety probe's four rates, greedy."""
    ev = params.evaluate
    completions, _ = generate(model, tokenizer, [r["prompt"] for r in test], ev.max_new_tokens, ev.batch_size)
    return {"exact_match": exact_match(test, completions)["overall"]} | safety_probe(
        model, tokenizer, probe, ev.max_new_tokens, ev.batch_size)


def policy(params: Params, w: float, pairs: list[dict], tokenizer):
    """The SFT model after DPO on `pairs`, and its training log."""
    cfg = params.multiobjective
    seed_everything(params.seed)
    model = load_model(SFT, cfg.precision, cfg.attn_implementation, training=True)
    reference = load_model(SFT, cfg.precision, cfg.attn_implementation)
    checkpoints = checkpoint_dir(f"multiobjective/w-{w}", {"seed": params.seed, "tier": params.tier, "w": w,
                                                           "multiobjective": cfg.model_dump()}, INPUTS)
    losses = {"sigmoid": 1.0} | ({"sft": cfg.sft_weight} if cfg.sft_weight else {})
    args = DPOConfig(**trainer_kwargs(params, cfg, checkpoints) | {"eval_strategy": "no"}, loss_type=list(losses),
                     loss_weights=list(losses.values()), beta=cfg.beta, max_length=cfg.max_length)
    trainer = DPOTrainer(model=model, ref_model=reference, args=args, processing_class=tokenizer,
                         train_dataset=Dataset.from_list(preference_chats(pairs)))
    train_resumable(trainer, checkpoints, run_card("multiobjective", params, cfg) | {"w": w})
    finish_checkpoints(checkpoints)
    return trainer.model.eval(), trainer.state.log_history


def run(params: Params) -> dict:
    cfg = params.multiobjective
    sft = require(SFT, "config.json", "sft")
    tokenizer = load_tokenizer(sft)
    first, second = halves(params)
    judges = {"helpfulness": [r for r in first if kind(r) != "harmful"],
              "harmlessness": [r for r in first if kind(r) == "harmful"]}
    held_out = read_jsonl(PREPARED / "world_preference_val.jsonl", "preference") + read_jsonl(
        PREPARED / "safety_preference_val.jsonl", "preference")
    test, probe = read_jsonl(PREPARED / "world_sft_test.jsonl", "sft"), probe_rows(PREPARED)

    scores, accuracy = {}, {}
    for name, pairs in judges.items():
        model = train_reward_model(params, name, pairs, tokenizer)
        accuracy[name] = pairwise_accuracy(model, tokenizer, held_out)
        scores[name] = standardised(model, tokenizer, second)
        print(f"multiobjective: {name} reward model on {len(pairs)} pairs; held-out accuracy {accuracy[name]}")
        del model

    rows = [{"model": "sft", "w": None} | measure(load_model(sft, params.evaluate.precision), tokenizer, params,
                                                   test, probe)]
    for w in cfg.weights:
        pairs, agreement = labelled(second, scores["helpfulness"], scores["harmlessness"], w)
        model, log = policy(params, w, pairs, tokenizer)
        save_curves(f"multiobjective/w-{w}", log)
        rows.append({"model": f"w={w}", "w": w, "labels_agree_with_files": agreement}
                    | measure(model, tokenizer, params, test, probe))
        print(f"multiobjective: w={w}: " + ", ".join(f"{k} {v}" for k, v in rows[-1].items()
                                                      if k not in ("model", "w")))
    return {"weights": cfg.weights, "reward_pairs": {k: len(v) for k, v in judges.items()},
            "policy_pairs": len(second), "reward_accuracy": accuracy, "rows": rows}


COLUMNS = {"exact_match": "EM task %", "refusal": "refusal (harmful) %", "over_refusal": "over-refusal (benign) %",
           "benign_exact_match": "EM benign %", "jailbreak_refusal": "refusal (jailbreak) %"}


def table(metrics: dict) -> tuple[list[str], list[list]]:
    """metrics/multiobjective.json as a table: one row per w (and the SFT model), the Pareto columns."""
    return ["policy", *COLUMNS.values()], [[row["model"], *(row[key] for key in COLUMNS)] for row in metrics["rows"]]
