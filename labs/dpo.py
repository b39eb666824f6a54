"""dpo — preference optimisation of the SFT model on chosen/rejected pairs; DPO by default.

    just lab dpo
    dvc exp run -S dpo.loss=ipo            # or kto | orpo | simpo; `dvc exp show` compares them

Every method starts from the SFT model and learns from the same pairs (chosen = right answer, rejected =
a plausible slip), with no reward model:
`pairs: on_policy` (the CPU tier's default) replaces the file's pairs with the SFT model's own mistakes:
answers sampled on the same prompts, checked against the chosen answer, each wrong one rejected.
`pairs: human` trains on what people preferred on the labelling page (`just label`: data/labels/judgements.jsonl),
`with_human` on those and the on-policy pairs together.
`sft_weight` adds the chosen answers' NLL to DPO/IPO (RPO): without it DPO lowers the likelihood of right
answers too, and greedy answers of families it barely saw pairs for get worse.
  * sigmoid — DPO: -log sigmoid(beta * (chosen's log-ratio to the frozen reference - rejected's))
  * ipo     — IPO: the same log-ratio margin pulled to 1/(2 beta) by a squared loss (does not saturate)
  * kto     — KTO: each pair split into two unpaired rows (chosen: desirable, rejected: undesirable)
  * orpo    — ORPO: SFT loss on chosen + beta * odds-ratio loss; no reference model
  * simpo   — SimPO: length-normalised log-likelihood margin beyond a target gamma; no reference model
DPO/IPO/KTO run on TRL's stable trainers; ORPO and SimPO (CPOTrainer) live in trl.experimental.

metrics/dpo.json, every method measured the same way against the SFT model it started from:
  * exact-match on held-out prompts before (SFT) and after,
  * preference accuracy: held-out pairs (of the kind it trained on; the dataset's too) where the policy
    raised chosen over rejected relative to the SFT model (DPO's implicit reward, beta * log-ratio, ranks
    chosen first), the mean log-ratio margin, and how often the policy itself prefers chosen,
  * KL(policy || SFT) per completion on held-out prompts (sampled; the target is < 5 nats),
  * win rate against the SFT model's greedy answers, judged by the `reward` model (ties count half).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from datasets import Dataset
from pydantic import Field
from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer

from labs.core.config import SEED, Section, Seed, Tier, TrainParams, view
from labs.core.data import assistant_turn, preference_chats, read_jsonl, user_turn
from labs.core.evaluation import (
    MeasureParams,
    answer_logprobs,
    generate,
    kl_to_reference,
    on_policy_pairs,
    percent,
    reference_scores,
    reward_scores,
    rouge_change,
    win_rate,
)
from labs.core.judgements import JUDGEMENTS, training_pairs
from labs.core.models import load_model, load_reward_model, load_tokenizer, require, trainer_kwargs
from labs.core.run import checkpoint_dir, finish_checkpoints, run_card, save_curves, save_model, train_resumable


class DPOParams(TrainParams):
    """Preference optimisation of the SFT model; `loss` picks the method."""

    # sigmoid = DPO, ipo = IPO (both DPOTrainer), kto = KTO on the pairs split into unpaired rows,
    # orpo = ORPO and simpo = SimPO (no reference model; trl.experimental ORPOTrainer / CPOTrainer)
    loss: Literal["sigmoid", "ipo", "kto", "orpo", "simpo"] = "sigmoid"
    """the method: sigmoid (DPO) | ipo | kto | orpo | simpo"""
    # dataset: the preference file's pairs. on_policy: the SFT model's own wrong answers (sampled on those
    # prompts, checked against the chosen answer) are the rejected side: needs checkable answers.
    # human: people's judgements from `just label`; with_human: on_policy's pairs and people's together.
    pairs: Literal["dataset", "on_policy", "human", "with_human"] = "on_policy"
    """where pairs come from: dataset | on_policy (the SFT model's own wrong answers rejected) | human | with_human"""
    samples_per_prompt: int = Field(4, gt=0)
    """on_policy: answers sampled per prompt"""
    temperature: float = Field(0.5, gt=0)  # on_policy: lower finds the mistakes greedy decoding makes
    """on_policy: sampling temperature of the SFT model's answers"""
    max_prompts: int | None = Field(None, gt=0)
    """on_policy: prompts sampled from (null: all)"""
    beta: float | None = Field(None, gt=0)  # null: the method's paper default (labs/dpo.py DEFAULT_BETA)
    """strength of the pull toward the reference; null: the method's paper default"""
    simpo_gamma: float = Field(0.5, ge=0)
    """SimPO's target reward margin"""
    # sigmoid / ipo: weight of an added NLL loss on the chosen answers (RPO); it keeps the chosen answers'
    # likelihood from falling with the rejected ones', DPO's known failure
    sft_weight: float = Field(4.0, ge=0)
    """weight of an added NLL loss on the chosen answers (RPO); 0: off"""
    max_length: int = Field(128, gt=0)
    batch_size: int = Field(16, gt=0)
    epochs: float = Field(2, gt=0)
    lr: float = Field(5e-5, gt=0)


# the keys of the evaluate section this lab's held-out measurements use
Measurement = view(MeasureParams, "max_new_tokens", "batch_size", "precision")


class Params(Section):
    """What dpo reads from params.yaml."""

    seed: Seed = SEED
    tier: Tier = "cpu"
    dpo: DPOParams = DPOParams()
    evaluate: Measurement = Measurement()


PREPARED, SFT, REWARD, OUT = Path("data/prepared"), Path("models/sft"), Path("models/reward"), Path("models/dpo")
# Each method's beta where `dpo.beta` is null: the papers' defaults (SimPO's beta scales a per-token
# average, so it is ~20x DPO's; ORPO's is the weight of its odds-ratio term).
DEFAULT_BETA = {"sigmoid": 0.1, "ipo": 0.1, "kto": 0.1, "orpo": 0.1, "simpo": 2.0}


def unpaired(rows: list[dict]) -> list[dict]:
    """KTO's format: every pair becomes a desirable and an undesirable completion of the same prompt."""
    return [{"prompt": user_turn(r["prompt"]), "completion": assistant_turn(r[side]), "label": side == "chosen"}
            for r in rows for side in ("chosen", "rejected")]


def build_trainer(cfg: DPOParams, beta: float, common: dict, model, reference, tokenizer, train, val):
    data = {"train_dataset": Dataset.from_list(preference_chats(train)),
            "eval_dataset": Dataset.from_list(preference_chats(val)), "processing_class": tokenizer}
    if cfg.loss in ("sigmoid", "ipo"):
        losses = {cfg.loss: 1.0} | ({"sft": cfg.sft_weight} if cfg.sft_weight else {})
        args = DPOConfig(**common, loss_type=list(losses), loss_weights=list(losses.values()), beta=beta,
                         max_length=cfg.max_length)
        return DPOTrainer(model=model, ref_model=reference, args=args, **data)
    if cfg.loss == "kto":
        args = KTOConfig(**common, beta=beta, max_length=cfg.max_length)
        return KTOTrainer(model=model, ref_model=reference, args=args, processing_class=tokenizer,
                          train_dataset=Dataset.from_list(unpaired(train)),
                          eval_dataset=Dataset.from_list(unpaired(val)))
    if cfg.loss == "orpo":
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        return ORPOTrainer(model=model, args=ORPOConfig(**common, beta=beta, max_length=cfg.max_length), **data)
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    args = CPOConfig(**common, loss_type="simpo", cpo_alpha=0.0, beta=beta, simpo_gamma=cfg.simpo_gamma,
                     max_length=cfg.max_length)
    return CPOTrainer(model=model, args=args, **data)


def preferences(policy, reference, tokenizer, rows: list[dict]) -> dict:
    """How the policy ranks held-out pairs, on its own and relative to the reference."""
    prompts = [r["prompt"] for r in rows]
    logp = {side: np.array(answer_logprobs(policy, tokenizer, prompts, [r[side] for r in rows]))
            for side in ("chosen", "rejected")}
    ref = {side: np.array(answer_logprobs(reference, tokenizer, prompts, [r[side] for r in rows]))
           for side in ("chosen", "rejected")}
    margin = (logp["chosen"] - ref["chosen"]) - (logp["rejected"] - ref["rejected"])
    return {
        "preference_accuracy": round(100 * float((margin > 0).mean()), 2),
        "log_ratio_margin": round(float(margin.mean()), 4),
        "prefers_chosen_before": round(100 * float((ref["chosen"] > ref["rejected"]).mean()), 2),
        "prefers_chosen": round(100 * float((logp["chosen"] > logp["rejected"]).mean()), 2),
        "chosen_logp_change": round(float((logp["chosen"] - ref["chosen"]).mean()), 4),
    }


def run(params: Params) -> dict:
    cfg, ev = params.dpo, params.evaluate
    beta = cfg.beta if cfg.beta is not None else DEFAULT_BETA[cfg.loss]
    sft = require(SFT, "config.json", "sft")
    judge_path = require(REWARD, "config.json", "reward")
    tokenizer = load_tokenizer(sft)
    model = load_model(sft, cfg.precision, cfg.attn_implementation, training=True)
    reference = load_model(sft, cfg.precision, cfg.attn_implementation)  # frozen: the policy's anchor

    files = [PREPARED / f"preference_{split}.jsonl" for split in ("train", "val")]
    train, val = (read_jsonl(f, "preference") for f in files)
    dataset_pairs = len(train)
    if cfg.pairs in ("on_policy", "with_human"):
        train, val = (on_policy_pairs(reference, tokenizer, rows, cfg.samples_per_prompt, cfg.temperature,
                                      ev.max_new_tokens, ev.batch_size, params.seed, "dpo")
                      for rows in (train[:cfg.max_prompts], val))
    human = training_pairs(JUDGEMENTS) if cfg.pairs in ("human", "with_human") else []
    if human:
        files.append(JUDGEMENTS)
        train = human if cfg.pairs == "human" else train + human
    checkpoints = checkpoint_dir("dpo", {"seed": params.seed, "tier": params.tier, "dpo": cfg.model_dump()},
                                 [*files, sft])
    card = run_card("dpo", params, cfg)
    trainer = build_trainer(cfg, beta, trainer_kwargs(params, cfg, checkpoints), model, reference, tokenizer,
                            train, val)
    metrics = {"loss": cfg.loss, "beta": beta, "pairs": cfg.pairs, "train_pairs": len(train),
               "dataset_pairs": dataset_pairs} | ({"human_pairs": len(human)} if human else {})
    metrics |= train_resumable(trainer, checkpoints, card)
    policy = trainer.model

    test = read_jsonl(PREPARED / "sft_test.jsonl", "sft")
    prompts = [r["prompt"] for r in test]
    before, _ = generate(reference, tokenizer, prompts, ev.max_new_tokens, ev.batch_size)
    after, ended = generate(policy, tokenizer, prompts, ev.max_new_tokens, ev.batch_size)
    metrics |= {f"{key}_before": value for key, value in reference_scores(test, before).items()}
    metrics |= reference_scores(test, after) | {"eos_rate": percent(ended)}
    # held-out pairs of the kind it trained on (validation prompts), and the dataset's held-out pairs
    metrics |= preferences(policy, reference, tokenizer, val)
    # and pairs it trained on: that the objective itself moved, whatever it does to held-out answers
    metrics["fit_preference_accuracy"] = preferences(policy, reference, tokenizer, train[:256])["preference_accuracy"]
    curated = preferences(policy, reference, tokenizer, read_jsonl(PREPARED / "preference_test.jsonl", "preference"))
    metrics |= {"dataset_preference_accuracy": curated["preference_accuracy"],
                "dataset_prefers_chosen_before": curated["prefers_chosen_before"],
                "dataset_prefers_chosen": curated["prefers_chosen"]}
    metrics["kl_to_sft"] = kl_to_reference(policy, reference, tokenizer, prompts, ev.max_new_tokens, ev.batch_size,
                                           params.seed)
    judge = load_reward_model(judge_path, ev.precision)
    after_scores = reward_scores(judge, tokenizer, prompts, after)
    metrics |= win_rate(after_scores, reward_scores(judge, tokenizer, prompts, before), after, before)

    save_model(policy, tokenizer, OUT, card)
    save_curves("dpo", trainer.state.log_history)
    finish_checkpoints(checkpoints)
    print(f"dpo ({cfg.loss}): held-out exact-match {metrics['exact_match_before']['overall']} -> "
          f"{metrics['exact_match']['overall']}{rouge_change(metrics)}; "
          f"preference accuracy {metrics['preference_accuracy']}%; "
          f"KL to SFT {metrics['kl_to_sft']}; win rate vs SFT {metrics['win_rate']}%")
    return metrics
