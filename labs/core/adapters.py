"""PEFT adapters for the sft task: the config each method needs and the shared training entry point
(lora, qlora and peft_methods train through it, so their rows compare)."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path

from peft import IA3Config, LoraConfig, PrefixTuningConfig, PromptTuningConfig

from labs.core.config import LoraParams, Params
from labs.core.data import DataError
from labs.core.run import seed_everything
from labs.core.train import finetune

MERGEABLE = {"lora", "dora", "ia3"}  # prefix / prompt tuning add virtual tokens: nothing to fold into weights


def token_ids(tokenizer, tokens: list[str]) -> list[int]:
    vocabulary = tokenizer.get_vocab()
    for token in tokens:
        if token not in vocabulary:
            raise DataError(f"params.yaml: lora.trainable_tokens: {token!r} is not a token of this tokenizer")
    return [vocabulary[token] for token in tokens]


def peft_config(cfg: LoraParams, tokenizer=None):
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


def train_adapter(params: Params, cfg: LoraParams, lab: str, model, tokenizer, base: Path, total: int):
    """`finetune` through the adapter `cfg` names; adds what every PEFT row of the comparison reports.
    `total` is the base's parameter count (a 4-bit model packs two weights per stored element)."""
    trainer, metrics, card = finetune(params, cfg, lab, model, tokenizer, base, peft_config(cfg, tokenizer))
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    metrics |= {
        "method": cfg.method,
        "parameters": total,
        "trainable_parameters": trainable,
        "trainable_pct": round(100 * trainable / total, 3),
    }
    return trainer, metrics, card


def seed_spread(params: Params, cfg: LoraParams, lab: str, first: dict, load_model: Callable,
                tokenizer, base: Path, total: int) -> dict:
    """Exact-match of the adapter trained with `params.seed` (`first`, that run's metrics) and again with each of
    `cfg.seeds` on a freshly loaded base (`load_model()`): the seed sets the adapter's init and the data order.
    Mean, sample standard deviation and range of the overall score, and every run's per-family scores."""
    runs = {params.seed: first["exact_match"]}
    for seed in cfg.seeds:
        seed_everything(seed)
        rerun = params.model_copy(update={"seed": seed})
        _, metrics, _ = train_adapter(rerun, cfg, f"{lab}/seed-{seed}", load_model(), tokenizer, base, total)
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
