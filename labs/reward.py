"""reward — a Bradley-Terry reward model on preference pairs, with TRL's RewardTrainer.

    just lab reward      # dvc repro reward
    dvc exp run -S reward.lr=3e-4

The SFT model's body with a scalar head (AutoModelForSequenceClassification, num_labels=1; the head is
new, the body starts from SFT, which already "knows" the tasks). It reads a whole chat (user: prompt,
assistant: answer) and scores it at the last token. Training maximises log sigmoid(r(chosen) - r(rejected))
on the task world's pairs: chosen = the right answer, rejected = a plausible slip (a dropped carry, the
smaller number, a swapped pair). With `pairs: with_on_policy` it also learns from the SFT model's own
wrong answers paired with the right one, as RLHF's labellers compare the policy's samples (here the
answer checker is the labeller). With `pairs: human` it learns from what people preferred on the labelling
page (`just label`: data/labels/judgements.jsonl) instead; `with_human` adds those to with_on_policy's.
The DPO win rate and PPO use this model as the judge and the reward.

metrics/reward.json:
  * pairwise accuracy and mean margin on held-out pairs (per family),
  * correctness correlation: the SFT model's sampled answers to held-out prompts, scored by the reward
    model, against whether they are right (a reward model for RL must rank its policy's samples, not
    only the curated pairs),
  * ranks own samples: among those samples, how often a right answer outscores a wrong one to the same
    prompt: the comparison PPO's advantage rests on (50% is a coin),
  * length correlation: the same samples' reward against their length (a known reward-model shortcut).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from datasets import Dataset
from pydantic import Field
from trl import RewardConfig, RewardTrainer

from labs.core.config import SEED, Section, Seed, Tier, TrainParams, view
from labs.core.data import preference_chats, read_jsonl
from labs.core.evaluation import (
    MeasureParams,
    correlation,
    generate,
    matches,
    on_policy_pairs,
    ranks_own_samples,
    reward_scores,
)
from labs.core.judgements import JUDGEMENTS, training_pairs
from labs.core.models import load_model, load_reward_model, load_tokenizer, require, trainer_kwargs
from labs.core.run import checkpoint_dir, finish_checkpoints, run_card, save_curves, save_model, train_resumable


class RewardParams(TrainParams):
    """A Bradley-Terry reward model: the SFT model's architecture with a scalar head."""

    max_length: int = Field(128, gt=0)
    batch_size: int = Field(16, gt=0)
    epochs: float = Field(2, gt=0)
    lr: float = Field(5e-4, gt=0)
    center_rewards: float | None = Field(None, ge=0)
    """TRL's center_rewards_coefficient: pulls rewards to mean 0"""
    # dataset: the preference file's pairs. with_on_policy: plus pairs from the SFT model's own wrong answers
    # (sampled on `on_policy_prompts` of those prompts, checked against the chosen answer). human: people's
    # judgements from `just label` alone; with_human: with_on_policy's pairs and people's.
    pairs: Literal["dataset", "with_on_policy", "human", "with_human"] = "with_on_policy"
    """training pairs: dataset | with_on_policy (plus the SFT model's own wrong answers) | human | with_human"""
    on_policy_prompts: int = Field(2000, gt=0)
    """with_on_policy: prompts the SFT model answers"""
    on_policy_samples: int = Field(4, gt=0)
    """with_on_policy: answers sampled per prompt"""
    samples_per_prompt: int = Field(4, gt=0)
    """sampled SFT answers per held-out prompt for the correlations"""


# the keys of the evaluate section this lab's held-out measurements use
Measurement = view(MeasureParams, "max_new_tokens", "batch_size", "precision")


class Params(Section):
    """What reward reads from params.yaml."""

    seed: Seed = SEED
    tier: Tier = "cpu"
    reward: RewardParams = RewardParams()
    evaluate: Measurement = Measurement()


PREPARED, SFT, OUT = Path("data/prepared"), Path("models/sft"), Path("models/reward")


def pairwise(model, tokenizer, rows: list[dict]) -> dict:
    """Accuracy (percent of pairs where chosen outscores rejected) and mean margin, per family."""
    prompts = [r["prompt"] for r in rows]
    margins = np.array(reward_scores(model, tokenizer, prompts, [r["chosen"] for r in rows])) - np.array(
        reward_scores(model, tokenizer, prompts, [r["rejected"] for r in rows]))
    families = np.array([r.get("family", "all") for r in rows])
    accuracy = {f: round(100 * float((margins[families == f] > 0).mean()), 2) for f in sorted(set(families))}
    return {"accuracy": accuracy | {"overall": round(100 * float((margins > 0).mean()), 2)},
            "margin": round(float(margins.mean()), 4)}


def run(params: Params) -> dict:
    cfg = params.reward
    sft = require(SFT, "config.json", "sft")
    tokenizer = load_tokenizer(sft)
    model = load_reward_model(sft, cfg.precision, training=True, quiet=True)
    model.config.pad_token_id = tokenizer.pad_token_id  # the head reads the last token before padding

    files = [PREPARED / f"preference_{split}.jsonl" for split in ("train", "val", "test")]
    train, val, test = (read_jsonl(f, "preference") for f in files)
    policy = load_model(sft, params.evaluate.precision)  # the SFT model: its own answers, to label and to judge
    dataset_pairs, on_policy = len(train), []
    if cfg.pairs in ("with_on_policy", "with_human"):
        on_policy = on_policy_pairs(policy, tokenizer, train[:cfg.on_policy_prompts], cfg.on_policy_samples, 1.0,
                                    params.evaluate.max_new_tokens, params.evaluate.batch_size, params.seed, "reward")
    human = training_pairs(JUDGEMENTS) if cfg.pairs in ("human", "with_human") else []
    pairs = human if cfg.pairs == "human" else train + on_policy + human
    checkpoints = checkpoint_dir("reward", {"seed": params.seed, "tier": params.tier, "reward": cfg.model_dump()},
                                 [*files[:2], sft, *([JUDGEMENTS] if human else [])])
    args = RewardConfig(**trainer_kwargs(params, cfg, checkpoints), max_length=cfg.max_length,
                        center_rewards_coefficient=cfg.center_rewards)
    card = run_card("reward", params, cfg)
    trainer = RewardTrainer(model=model, args=args,
                            train_dataset=Dataset.from_list(preference_chats(pairs)).shuffle(params.seed),
                            eval_dataset=Dataset.from_list(preference_chats(val)), processing_class=tokenizer)
    before = pairwise(model, tokenizer, test)
    metrics = {"pairs": cfg.pairs, "dataset_pairs": dataset_pairs, "on_policy_pairs": len(on_policy)}
    metrics |= {"human_pairs": len(human)} if human else {}
    metrics |= train_resumable(trainer, checkpoints, card)
    after = pairwise(model, tokenizer, test)
    metrics |= {"accuracy_before": before["accuracy"], "accuracy": after["accuracy"],
                "margin_before": before["margin"], "margin": after["margin"]}

    # What the judge makes of a policy's own samples: the SFT model answering held-out prompts.
    rows = read_jsonl(PREPARED / "sft_test.jsonl", "sft") * cfg.samples_per_prompt
    prompts = [r["prompt"] for r in rows]
    samples, _ = generate(policy, tokenizer, prompts, params.evaluate.max_new_tokens, params.evaluate.batch_size,
                          temperature=1.0, seed=params.seed)
    scores = reward_scores(model, tokenizer, prompts, samples)
    correct = [matches(s, r) for s, r in zip(samples, rows, strict=True)]  # real instruction data: the reference reply
    lengths = [len(tokenizer(s)["input_ids"]) for s in samples]
    families = {r.get("family") for r in rows}
    metrics |= {
        "samples": len(samples),
        "ranks_own_samples": ranks_own_samples(prompts, scores, correct),
        "samples_correct_pct": round(100 * float(np.mean(correct)), 2),
        "correctness_correlation": correlation(scores, correct),
        "length_correlation": correlation(scores, lengths),
        # the same within each family: across families, length mostly tells which task it is
        "length_correlation_by_family": {f: correlation(
            [s for s, r in zip(scores, rows, strict=True) if r.get("family") == f],
            [n for n, r in zip(lengths, rows, strict=True) if r.get("family") == f]) for f in sorted(families)},
    }
    save_model(trainer.model, tokenizer, OUT, card)
    save_curves("reward", trainer.state.log_history)
    finish_checkpoints(checkpoints)
    print(f"reward: held-out pairwise accuracy {before['accuracy']['overall']} -> {after['accuracy']['overall']}%, "
          f"margin {after['margin']}; correlation with correctness {metrics['correctness_correlation']}, "
          f"with length {metrics['length_correlation']}")
    return metrics
