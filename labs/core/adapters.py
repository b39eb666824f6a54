"""PEFT adapters for the sft task: the config each method needs and the shared training entry point
(lora, qlora and peft_methods train through it, so their rows compare)."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch
from peft import IA3Config, LoraConfig, PrefixTuningConfig, PromptTuningConfig
from pydantic import Field
from trl import SFTTrainer

from labs.core.config import ConfigError, Section, TrainParams
from labs.core.run import run_card, seed_everything
from labs.core.train import chat_args, fit, held_out_scores, sft_chats


class AdapterParams(TrainParams):
    """The sft task through a PEFT adapter on the frozen pretrained model: the `lora` section (qlora's
    extends it; peft_methods' methods override a few of its keys)."""

    max_length: int = Field(128, gt=0)
    batch_size: int = Field(16, gt=0)
    epochs: float = Field(8, gt=0)  # 4 epochs never learned reverse on the 8-layer base
    lr: float = Field(3e-3, gt=0)
    method: Literal["lora", "dora", "prefix", "prompt", "ia3"] = "lora"
    """which PEFT adapter trains: lora | dora | prefix | prompt | ia3"""
    rank: int = Field(8, gt=0)
    """LoRA / DoRA: rank r of each update B @ A"""
    alpha: float = Field(16, gt=0)
    """LoRA / DoRA: the update is scaled by alpha / rank"""
    dropout: float = Field(0.0, ge=0, lt=1)
    """LoRA / DoRA: dropout on the adapter's input"""
    target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    """LoRA / DoRA: the linear layers that get an adapter"""
    num_virtual_tokens: int = Field(16, gt=0)  # prefix and prompt tuning
    """prefix / prompt tuning: trained virtual tokens"""
    # lora / dora: also train these tokens' embedding rows (PEFT trainable_token_indices): tokens the base
    # never saw in pretraining, like the chat template's role markers, are otherwise stuck at their init.
    trainable_tokens: list[str] = ["<|user|>", "<|assistant|>", "<|end|>"]
    """LoRA / DoRA: tokens whose embedding rows train too"""
    ia3_feedforward_modules: list[str] = ["down_proj"]  # (IA)^3 scales these modules' inputs, the rest's outputs
    """(IA)^3: modules whose inputs are scaled (the others' outputs are)"""
    # Seeds the adapter is trained with again, after the run with the project's `seed`: the spread of exact-match
    # over all of them is reported beside the single run, so a reader knows what a rerun may give.
    seeds: list[int] = [1, 2]
    """extra seeds the adapter is trained with, for exact-match's mean and spread"""


MERGEABLE = {"lora", "dora", "ia3"}  # prefix / prompt tuning add virtual tokens: nothing to fold into weights


def token_ids(tokenizer, tokens: list[str]) -> list[int]:
    vocabulary = tokenizer.get_vocab()
    for token in tokens:
        if token not in vocabulary:
            raise ConfigError(f"params.yaml: lora.trainable_tokens: {token!r} is not a token of this tokenizer")
    return [vocabulary[token] for token in tokens]


def peft_config(cfg: AdapterParams, tokenizer=None):
    if cfg.method in ("lora", "dora"):
        tokens = token_ids(tokenizer, cfg.trainable_tokens) if cfg.trainable_tokens and tokenizer else None
        return LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                          target_modules=cfg.target_modules, use_dora=cfg.method == "dora",
                          trainable_token_indices=tokens, task_type="CAUSAL_LM")
    if cfg.method == "prefix":
        return PrefixTuningConfig(num_virtual_tokens=cfg.num_virtual_tokens, task_type="CAUSAL_LM")
    if cfg.method == "prompt":
        # Start from embeddings of real vocabulary tokens: random vectors sit far from anything the model saw.
        return PromptTuningConfig(num_virtual_tokens=cfg.num_virtual_tokens, prompt_tuning_init="SAMPLE_VOCAB",
                                  task_type="CAUSAL_LM")
    return IA3Config(target_modules=cfg.target_modules, feedforward_modules=cfg.ia3_feedforward_modules,
                     task_type="CAUSAL_LM")


def train_adapter(params: Section, cfg: AdapterParams, lab: str, model, tokenizer, base: Path, total: int,
                  adapter_dtype: torch.dtype | None = None) -> tuple[SFTTrainer, dict, dict, list[str]]:
    """SFT through the adapter `cfg` names, then the held-out battery: the trainer, the metrics every PEFT row
    of the comparison reports, the run card and the held-out answers. `total` is the base's parameter count (a
    4-bit model packs two weights per stored element). `adapter_dtype`: what the trainable weights compute in,
    where TRL would pick (it casts an adapter on a 4-bit base to bf16, the QLoRA paper's choice)."""
    config = peft_config(cfg, tokenizer)
    # TRL's default chunked loss reads lm_head's weight directly: with trainable token rows on a tied head (PEFT
    # wraps it) it fails and would skip those rows' update. The same loss, unchunked:
    loss = {"loss_type": "nll"} if getattr(config, "trainable_token_indices", None) else {}
    train, val = sft_chats()
    trainer = SFTTrainer(model=model, args=chat_args(params, cfg, lab, base, **loss), train_dataset=train,
                         eval_dataset=val, processing_class=tokenizer, peft_config=config)
    if adapter_dtype is not None:
        for param in trainer.model.parameters():
            if param.requires_grad:
                param.data = param.data.to(adapter_dtype)
    card = run_card(lab, params, cfg)
    metrics = fit(trainer, card, lab)
    scores, completions = held_out_scores(trainer.model, tokenizer, params)
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    metrics |= scores | {
        "method": cfg.method,
        "parameters": total,
        "trainable_parameters": trainable,
        "trainable_pct": round(100 * trainable / total, 3),
    }
    return trainer, metrics, card, completions


def seed_spread(params: Section, cfg: AdapterParams, lab: str, first: dict, load_model: Callable,
                tokenizer, base: Path, total: int, adapter_dtype: torch.dtype | None = None) -> dict:
    """Exact-match of the adapter trained with `params.seed` (`first`, that run's metrics) and again with each of
    `cfg.seeds` on a freshly loaded base (`load_model()`): the seed sets the adapter's init and the data order.
    Mean, sample standard deviation and range of the overall score, and every run's per-family scores."""
    runs = {params.seed: first["exact_match"]}
    for seed in cfg.seeds:
        seed_everything(seed)
        rerun = params.model_copy(update={"seed": seed})
        _, metrics, _, _ = train_adapter(rerun, cfg, f"{lab}/seed-{seed}", load_model(), tokenizer, base, total,
                                         adapter_dtype)
        runs[seed] = metrics["exact_match"]
        print(f"{lab}: seed {seed}: exact-match {metrics['exact_match']['overall']}")
    overall = [em["overall"] for em in runs.values()]
    return {
        "seeds": list(runs),
        "exact_match": {str(seed): em for seed, em in runs.items()},
        "overall_mean": round(statistics.mean(overall), 2),
        "overall_sd": round(statistics.stdev(overall), 2) if len(overall) > 1 else 0.0,
        "overall_min": min(overall),
        "overall_max": max(overall),
    }
