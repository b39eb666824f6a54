"""lora — the sft task through a PEFT adapter on the frozen pretrained model; LoRA by default.

    just lab lora
    dvc exp run -S lora.method=dora        # or prefix | prompt | ia3 (`peft_methods` runs them all)
    dvc exp run -S lora.rank=4 -S lora.alpha=8

Full SFT updates every weight; an adapter trains a few percent of them and leaves the base untouched:
  * lora   — a low-rank update B·A (rank `rank`, scaled by alpha/rank) beside each `target_modules` linear,
  * dora   — LoRA on the direction of each weight plus a trained magnitude per output (use_dora),
  * prefix — trained key/value vectors prepended at every layer (`num_virtual_tokens` of them),
  * prompt — trained input embeddings prepended to the prompt (`num_virtual_tokens`),
  * ia3    — trained per-channel scales on the targets' activations ((IA)^3).
The same TRL SFTTrainer, data and schedule as `sft`, with PEFT's config handed to it.

Outputs: models/lora/adapter (the adapter alone: a few hundred KB) and, for the methods that can fold
into the weights, models/lora/merged (`merge_and_unload`: a plain model that loads without PEFT).
metrics/lora.json reports trainable parameters, adapter size, exact-match, validation loss, corpus
perplexity (how much prose ability fine-tuning cost) and `merged_matches_adapter`: the percent of
held-out prompts where the merged model's greedy answer equals base+adapter's.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch
from peft import get_peft_model
from transformers import AutoConfig, AutoModelForCausalLM

from labs.core.adapters import MERGEABLE, AdapterParams, peft_config, seed_spread, train_adapter
from labs.core.config import SEED, Section, Seed, Tier, view
from labs.core.evaluation import MeasureParams
from labs.core.models import count_parameters, load_model, load_tokenizer, require
from labs.core.run import atomic_path, safetensors_mb, save_model
from labs.core.train import held_out_answers, identical

# the keys of the evaluate section this lab's held-out measurements use
Measurement = view(MeasureParams, "max_new_tokens", "batch_size", "precision")


class Params(Section):
    """What lora reads from params.yaml."""

    seed: Seed = SEED
    tier: Tier = "cpu"
    lora: AdapterParams = AdapterParams()
    evaluate: Measurement = Measurement()


BASE, OUT = Path("models/pretrain"), Path("models/lora")

# The GPU tiers' base models, from their published config.json (no download needed): the share of
# parameters the same LoRA config trains there is counted on the real architecture, built on the meta device.
GPU_TIER_MODELS = {
    "HuggingFaceTB/SmolLM2-135M": dict(
        model_type="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
        num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True),
    "Qwen/Qwen2.5-0.5B": dict(
        model_type="qwen2", vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
        num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True),
}


def trainable_share(cfg: AdapterParams, config) -> dict:
    """Parameters and the share `cfg`'s adapter trains on a model of `config`, built without weights."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    total = count_parameters(model)
    trainable = sum(p.numel() for p in get_peft_model(model, peft_config(cfg)).parameters() if p.requires_grad)
    return {"parameters": total, "trainable_parameters": trainable, "trainable_pct": round(100 * trainable / total, 3)}


def run(params: Params) -> dict:
    cfg = params.lora
    base = require(BASE, "config.json", "pretrain")
    tokenizer = load_tokenizer(base)
    model = load_model(base, cfg.precision, cfg.attn_implementation, training=True)
    # base + adapter, greedy, on the held-out prompts: `completions`
    trainer, metrics, card, completions = train_adapter(params, cfg, "lora", model, tokenizer, base,
                                                        count_parameters(model))
    if cfg.seeds:
        reload = partial(load_model, base, cfg.precision, cfg.attn_implementation, training=True)
        metrics["seed_spread"] = seed_spread(params, cfg, "lora", metrics, reload, tokenizer, base,
                                             metrics["parameters"])

    with atomic_path(OUT) as tmp:
        save_model(trainer.model, tokenizer, tmp / "adapter", card)  # PEFT saves the adapter weights only
        metrics["adapter_mb"] = safetensors_mb(tmp / "adapter")
        if cfg.method in MERGEABLE:
            save_model(trainer.model.merge_and_unload(), tokenizer, tmp / "merged", card)
    if cfg.method in MERGEABLE:
        merged = load_model(OUT / "merged", params.evaluate.precision)  # from disk: what a user would load
        metrics["merged_matches_adapter"] = identical(held_out_answers(merged, tokenizer, params)[1], completions)

    base_config = AutoConfig.from_pretrained(base)
    metrics["trainable_share_by_model"] = {"this base": trainable_share(cfg, base_config)} | {
        name: trainable_share(cfg, AutoConfig.for_model(**shape)) for name, shape in GPU_TIER_MODELS.items()
    }
    print(f"lora ({cfg.method}): {metrics['trainable_pct']}% of weights trained; val loss "
          f"{metrics['val_loss_before']} -> {metrics['val_loss']}; held-out exact-match {metrics['exact_match']}")
    return metrics
