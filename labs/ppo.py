"""ppo — RLHF with PPO: the SFT model learns to please the `reward` model without drifting far from itself.

    just lab ppo
    dvc exp run -S ppo.kl_coef=0.2

The four models of RLHF, all on the SFT model's architecture:
  * policy    — the SFT model, trained: it answers the RL prompts by sampling,
  * reference — the SFT model, frozen: the per-token KL penalty (kl_coef) is measured against it,
  * reward    — the `reward` lab's model, frozen: scores each finished answer (at its EOS),
  * value     — initialised from the reward model, trained: predicts the return, for GAE advantages.
Each update samples a batch of answers, scores them (minus `missing_eos_penalty` for an answer that never
ended), and takes `ppo_epochs` clipped PPO steps on them. TRL removed PPOTrainer after 1.12.0; this
project pins trl 1.12.0, where it is `trl.experimental.ppo` (see pyproject.toml).

metrics/ppo.json: the reward and KL curves (first vs last tenth of training, and plots/ppo/), held-out
exact-match before/after, mean reward of held-out answers before/after (greedy, and sampled as in training:
`heldout_seeds` draws per prompt with the same random numbers, and the change's bootstrap 95% interval over
prompts), and the signs of reward hacking: answer length, repetition, and answers that no longer end. Read
the training curve with care: each batch mixes task families the judge scores on different scales, so its
ups and downs are mostly the batches'; the held-out sampled reward is the policy's.
PPOTrainer has no resume_from_checkpoint: a killed run starts over (it takes minutes on the CPU tier).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from datasets import Dataset
from pydantic import Field
from scipy import stats

from labs.core.config import SEED, Section, Seed, Tier, TrainParams, view
from labs.core.data import chat_prompt, read_jsonl
from labs.core.evaluation import (
    MeasureParams,
    exact_match,
    generate,
    kl_to_reference,
    mean_words,
    percent,
    repetition,
    reward_scores,
)
from labs.core.models import load_model, load_reward_model, load_tokenizer, require, trainer_kwargs
from labs.core.run import (
    CHECKPOINT_ROOT,
    finish_checkpoints,
    run_card,
    save_curves,
    save_model,
    show_progress,
    trend,
)


class PPOParams(TrainParams):
    """RLHF with PPO: policy and value model trained, reward model and reference frozen."""

    episodes: int = Field(4096, gt=0)
    """prompts sampled in all (TRL's total_episodes)"""
    kl_coef: float = Field(0.05, ge=0)
    """per-token KL penalty to the reference, subtracted from the reward"""
    ppo_epochs: int = Field(4, gt=0)
    """optimisation passes over each batch of rollouts"""
    mini_batches: int = Field(4, gt=0)
    """optimizer steps per pass over a batch"""
    temperature: float = Field(1.0, gt=0)
    """sampling temperature of the policy's answers"""
    response_length: int = Field(48, gt=0)
    """tokens an answer may have"""
    missing_eos_penalty: float | None = Field(1.0, ge=0)
    """subtracted from the score of a completion with no EOS"""
    gae_lambda: float = Field(0.95, ge=0, le=1)
    """GAE's lambda: bias/variance trade-off of the advantages"""
    gamma: float = Field(1.0, ge=0, le=1)
    """discount of future rewards"""
    heldout_seeds: int = Field(4, gt=0)
    """sampled answers per held-out prompt, before and after training"""
    bootstrap_resamples: int = Field(2000, gt=0)
    """bootstrap resamples for the 95% interval of the held-out reward's change"""
    batch_size: int = Field(64, gt=0)  # answers sampled per update: smaller updates were as noisy as the family mix
    """answers sampled per update"""
    lr: float = Field(2e-4, gt=0)
    warmup_steps: int = Field(0, ge=0)
    lr_scheduler: Literal["linear", "cosine", "constant_with_warmup"] = "linear"
    logging_steps: int = Field(1, gt=0)  # one log per update: the reward and KL curves


# the keys of the evaluate section this lab's held-out measurements use
Measurement = view(MeasureParams, "max_new_tokens", "batch_size", "precision")


class Params(Section):
    """What ppo reads from params.yaml."""

    seed: Seed = SEED
    tier: Tier = "cpu"
    ppo: PPOParams = PPOParams()
    evaluate: Measurement = Measurement()


PREPARED, SFT, REWARD, OUT = Path("data/prepared"), Path("models/sft"), Path("models/reward"), Path("models/ppo")
CURVES = {"objective/scores": "train/reward", "objective/kl": "train/kl", "objective/rlhf_reward": "train/rlhf_reward",
          "val/num_eos_tokens": "train/eos_tokens"}


def prompt_ids(tokenizer, rows: list[dict]) -> Dataset:
    """PPOTrainer takes tokenized prompts: the chat template up to the assistant's turn."""
    return Dataset.from_list([{"input_ids": tokenizer(chat_prompt(tokenizer, r["prompt"]), add_special_tokens=False)
                               ["input_ids"]} for r in rows])


def answers_report(policy, judge, tokenizer, test: list[dict], params: Params) -> dict:
    """Greedy answers to held-out prompts (exact-match, reward, hacking signs), and the reward of answers
    sampled as in training, per prompt, averaged over `heldout_seeds` draws. The draws use the same prompts
    and random numbers for every model, so unlike the training curve (a new mix of task families each batch)
    a difference is the policy's alone."""
    prompts, ev, cfg = [r["prompt"] for r in test], params.evaluate, params.ppo
    answers, ended = generate(policy, tokenizer, prompts, ev.max_new_tokens, ev.batch_size)
    draws = []
    for draw in range(cfg.heldout_seeds):
        sampled_answers, _ = generate(policy, tokenizer, prompts, ev.max_new_tokens, ev.batch_size,
                                      temperature=cfg.temperature, seed=params.seed + draw)
        draws.append(reward_scores(judge, tokenizer, prompts, sampled_answers))
    sampled = np.mean(draws, axis=0)  # per prompt
    return {"exact_match": exact_match(test, answers), "eos_rate": percent(ended),
            "reward": round(float(np.mean(reward_scores(judge, tokenizer, prompts, answers))), 4),
            "sampled_reward": round(float(sampled.mean()), 4), "sampled_per_prompt": sampled,
            "words": mean_words(answers), "repetition": repetition(answers)}


def reward_gain(before: np.ndarray, after: np.ndarray, params: Params) -> dict:
    """The held-out sampled reward's change, prompt by prompt, with a bootstrap 95% interval over prompts:
    the draws' own noise moves the mean by a few hundredths, so a change's sign needs one."""
    change = after - before
    interval = stats.bootstrap((change,), np.mean, confidence_level=0.95, n_resamples=params.ppo.bootstrap_resamples,
                               method="percentile", rng=np.random.default_rng(params.seed)).confidence_interval
    return {"mean": round(float(change.mean()), 4), "ci95": [round(float(interval.low), 4),
                                                             round(float(interval.high), 4)],
            "prompts": len(change), "draws_per_prompt": params.ppo.heldout_seeds}


def ppo_config(params: Params, scratch: Path):
    """TRL's PPOConfig from the ppo section: the shared trainer settings plus PPO's own."""
    from trl.experimental.ppo import PPOConfig

    cfg = params.ppo
    # No checkpoints: PPOTrainer.train() cannot resume from one (see the docstring).
    common = trainer_kwargs(params, cfg, scratch) | {"save_strategy": "no", "eval_strategy": "no"}
    common.pop("num_train_epochs"), common.pop("max_steps"), common.pop("include_num_input_tokens_seen")
    return PPOConfig(
        **common, total_episodes=cfg.episodes, num_ppo_epochs=cfg.ppo_epochs, num_mini_batches=cfg.mini_batches,
        kl_coef=cfg.kl_coef, temperature=cfg.temperature, response_length=cfg.response_length, stop_token="eos",
        missing_eos_penalty=cfg.missing_eos_penalty, lam=cfg.gae_lambda, gamma=cfg.gamma,
        num_sample_generations=0,  # no sample tables mid-training: held-out answers are measured below
    )


def run(params: Params) -> dict:
    from trl.experimental.ppo import PPOTrainer

    cfg = params.ppo
    sft = require(SFT, "config.json", "sft")
    reward_path = require(REWARD, "config.json", "reward")
    tokenizer = load_tokenizer(sft)
    tokenizer.padding_side = "left"  # prompts are batched for generation
    policy = load_model(sft, cfg.precision, cfg.attn_implementation, training=True)
    reference = load_model(sft, cfg.precision, cfg.attn_implementation)
    reward = load_reward_model(reward_path, cfg.precision)
    value = load_reward_model(reward_path, cfg.precision, training=True)  # a value head that starts out informed
    for model in (reward, value):
        model.config.pad_token_id = tokenizer.pad_token_id

    test = read_jsonl(PREPARED / "sft_test.jsonl", "sft")
    before = answers_report(reference, reward, tokenizer, test, params)

    scratch = CHECKPOINT_ROOT / "ppo"
    card = run_card("ppo", params, cfg)
    trainer = PPOTrainer(
        args=ppo_config(params, scratch), processing_class=tokenizer, model=policy, ref_model=reference,
        reward_model=reward, value_model=value,
        train_dataset=prompt_ids(tokenizer, read_jsonl(PREPARED / "rl_train.jsonl", "rl")),
        eval_dataset=prompt_ids(tokenizer, read_jsonl(PREPARED / "rl_val.jsonl", "rl")),
    )
    show_progress(trainer, "ppo")
    trainer.train()
    history = trainer.state.log_history

    after = answers_report(policy, reward, tokenizer, test, params)
    reward_first, reward_last = trend(history, "objective/scores")
    kl_first, kl_last = trend(history, "objective/kl")
    metrics = {
        "updates": trainer.state.global_step, "episodes": trainer.state.episode,
        "reward_first": reward_first, "reward_last": reward_last, "kl_first": kl_first, "kl_last": kl_last,
        "kl_max": round(max(e["objective/kl"] for e in history if "objective/kl" in e), 4),
        "exact_match_before": before["exact_match"], "exact_match": after["exact_match"],
        "heldout_reward_before": before["reward"], "heldout_reward": after["reward"],
        "heldout_sampled_reward_before": before["sampled_reward"], "heldout_sampled_reward": after["sampled_reward"],
        "heldout_sampled_reward_gain": reward_gain(before["sampled_per_prompt"], after["sampled_per_prompt"], params),
        "eos_rate_before": before["eos_rate"], "eos_rate": after["eos_rate"],
        "words_before": before["words"], "words": after["words"],
        "repetition_before": before["repetition"], "repetition": after["repetition"],
        "kl_to_sft": kl_to_reference(policy, reference, tokenizer, [r["prompt"] for r in test],
                                     params.evaluate.max_new_tokens, params.evaluate.batch_size, params.seed),
    }
    save_model(policy, tokenizer, OUT, card)
    save_curves("ppo", history, CURVES)
    finish_checkpoints(scratch)
    print(f"ppo: reward {reward_first} -> {reward_last} (KL {kl_first} -> {kl_last}); held-out exact-match "
          f"{before['exact_match']['overall']} -> {after['exact_match']['overall']}, sampled answers' reward "
          f"{before['sampled_reward']} -> {after['sampled_reward']} (95% CI of the change "
          f"{metrics['heldout_sampled_reward_gain']['ci95']})")
    return metrics
