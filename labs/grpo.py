"""grpo — GRPO with a verifiable reward: the SFT model samples answers and learns from checking them.

    just lab grpo
    dvc exp run -S grpo.num_generations=4

No reward model and no value model. For each RL prompt the policy samples `num_generations` answers;
each gets a reward computed in Python from the prompt's gold answer:
  * correct: 1.0 when the text after the last "Answer:" equals the gold answer,
  * format:  `format_reward` when the answer ends its turn (EOS) in the "... Answer: X" form.
An answer's advantage is its reward minus its group's mean (over the group's std), so the group itself
is the baseline; a KL penalty (beta) to the frozen SFT model keeps the policy near it.

metrics/grpo.json: mean reward per step (first vs last tenth of training, and plots/grpo/), held-out
exact-match before (SFT) and after, greedy and of one sample per prompt (what GRPO trains), KL to SFT.
"""

from __future__ import annotations

from pathlib import Path

from datasets import Dataset
from pydantic import Field
from trl import GRPOConfig, GRPOTrainer

from labs.core.config import SEED, Section, Seed, Tier, TrainParams, view
from labs.core.data import read_jsonl, user_turn
from labs.core.evaluation import (
    MeasureParams,
    checkable,
    exact_match,
    extract_answer,
    generate,
    is_correct,
    kl_to_reference,
    percent,
)
from labs.core.models import load_model, load_tokenizer, require, trainer_kwargs
from labs.core.run import checkpoint_dir, finish_checkpoints, run_card, save_curves, save_model, train_resumable, trend


class GRPOParams(TrainParams):
    """GRPO with a verifiable reward: exact match of the final answer plus a format reward."""

    num_generations: int = Field(8, ge=2)
    """completions per prompt: the group whose mean is the baseline"""
    beta: float = Field(0.04, ge=0)  # KL penalty to the reference (TRL's default is 0: no reference at all)
    """KL penalty to the reference model (0: no reference at all)"""
    temperature: float = Field(1.0, gt=0)
    """sampling temperature of the completions"""
    max_completion_length: int = Field(48, gt=0)
    """tokens a completion may have"""
    format_reward: float = Field(0.2, ge=0)
    """for an answer in the "... Answer: X" form that ended with EOS"""
    batch_size: int = Field(64, gt=0)
    """completions per step: 8 prompts x num_generations"""
    max_steps: int = 300
    lr: float = Field(5e-5, gt=0)
    warmup_steps: int = Field(10, ge=0)
    logging_steps: int = Field(5, gt=0)


# the keys of the evaluate section this lab's held-out measurements use
Measurement = view(MeasureParams, "max_new_tokens", "batch_size")


class Params(Section):
    """What grpo reads from params.yaml."""

    seed: Seed = SEED
    tier: Tier = "cpu"
    grpo: GRPOParams = GRPOParams()
    evaluate: Measurement = Measurement()


PREPARED, SFT, OUT = Path("data/prepared"), Path("models/sft"), Path("models/grpo")
CURVES = {"reward": "train/reward", "rewards/correct/mean": "train/correct", "kl": "train/kl",
          "completions/mean_length": "train/completion_length"}


def text(completion) -> str:
    """TRL hands conversational completions over as a list of messages."""
    return completion[0]["content"] if isinstance(completion, list) else completion


def correct(completions, answer, **_) -> list[float]:
    """1.0 for the gold answer after the last "Answer:"; `answer` is the dataset column of that name."""
    return [float(is_correct(text(c), gold)) for c, gold in zip(completions, answer, strict=True)]


def format_reward(weight: float, eos_token_id: int):
    """`weight` for an answer in the "... Answer: X" form that ended its turn with EOS."""
    def formatted(completions, completion_ids, **_) -> list[float]:
        return [weight * float(extract_answer(text(c)) is not None and eos_token_id in ids)
                for c, ids in zip(completions, completion_ids, strict=True)]
    formatted.__name__ = "format"  # TRL logs each reward under its function's name: rewards/format/mean
    return formatted


def held_out(prepared: Path) -> list[dict]:
    """Held-out prompts with answers to check: the sft test file's (the task world's families, which the SFT model
    was taught), or, where that file holds reference replies only (real instruction data), the rl test file's
    (GSM8K's test split: the task GRPO trained on)."""
    test = read_jsonl(prepared / "sft_test.jsonl", "sft")
    return test if checkable(test) else read_jsonl(prepared / "rl_test.jsonl", "rl")


def run(params: Params) -> dict:
    cfg, ev = params.grpo, params.evaluate
    sft = require(SFT, "config.json", "sft")
    tokenizer = load_tokenizer(sft)
    policy = load_model(sft, cfg.precision, cfg.attn_implementation, training=True)
    reference = load_model(sft, cfg.precision, cfg.attn_implementation)

    train_file = PREPARED / "rl_train.jsonl"
    rows = read_jsonl(train_file, "rl")
    dataset = Dataset.from_list([{"prompt": user_turn(r["prompt"]), "answer": r["answer"]} for r in rows])
    checkpoints = checkpoint_dir("grpo", {"seed": params.seed, "tier": params.tier, "grpo": cfg.model_dump()},
                                 [train_file, sft])
    common = trainer_kwargs(params, cfg, checkpoints) | {"eval_strategy": "no"}
    common.pop("include_num_input_tokens_seen")
    args = GRPOConfig(**common, num_generations=cfg.num_generations, beta=cfg.beta, temperature=cfg.temperature,
                      max_completion_length=cfg.max_completion_length, top_k=0, top_p=1.0)
    card = run_card("grpo", params, cfg)
    rewards = [correct, format_reward(cfg.format_reward, tokenizer.eos_token_id)]
    trainer = GRPOTrainer(model=policy, reward_funcs=rewards, args=args, train_dataset=dataset,
                          processing_class=tokenizer)
    metrics = train_resumable(trainer, checkpoints, card)
    history = trainer.state.log_history

    test = held_out(PREPARED)
    prompts = [r["prompt"] for r in test]
    before, _ = generate(reference, tokenizer, prompts, ev.max_new_tokens, ev.batch_size)
    after, ended = generate(policy, tokenizer, prompts, ev.max_new_tokens, ev.batch_size)
    # GRPO optimises the answers it samples: held-out accuracy of one sample per prompt at its temperature
    sampled = {name: exact_match(test, generate(model, tokenizer, prompts, ev.max_new_tokens, ev.batch_size,
                                                temperature=cfg.temperature, seed=params.seed)[0])["overall"]
               for name, model in (("before", reference), ("after", policy))}
    reward_first, reward_last = trend(history, "reward")
    metrics |= {
        "reward_first": reward_first, "reward_last": reward_last,
        "correct_first": trend(history, "rewards/correct/mean")[0],
        "correct_last": trend(history, "rewards/correct/mean")[1],
        "exact_match_before": exact_match(test, before), "exact_match": exact_match(test, after),
        "sampled_exact_match_before": sampled["before"], "sampled_exact_match": sampled["after"],
        "eos_rate": percent(ended),
        "kl_to_sft": kl_to_reference(policy, reference, tokenizer, prompts, ev.max_new_tokens, ev.batch_size,
                                     params.seed),
    }
    save_model(policy, tokenizer, OUT, card)
    save_curves("grpo", history, CURVES)
    finish_checkpoints(checkpoints)
    print(f"grpo: mean reward {reward_first} -> {reward_last}; held-out exact-match "
          f"{metrics['exact_match_before']['overall']} -> {metrics['exact_match']['overall']}")
    return metrics
