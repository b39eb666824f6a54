"""qlora — LoRA on a base whose linear layers bitsandbytes stores in 4 bits (NF4, double quantization).

    just lab qlora
    dvc exp run -S qlora.method=dora       # QDoRA
    dvc exp run -S qlora.quant_type=fp4

QLoRA (Dettmers et al., 2023): the frozen base is quantized to 4-bit NormalFloat while loading, its
per-block scales quantized again (double quantization); each matmul dequantizes to the compute dtype
(`precision`: fp32 on the CPU tier, fp16 on t4, bf16 on a100) and only the LoRA adapter trains, in full
precision. bitsandbytes 0.50.2 quantizes, trains through and generates with 4-bit layers on a CPU, so the
CPU tier runs this same path, not a stand-in (its CPU matmul dequantizes then multiplies; the optional
fused kernel from the `kernels` package is not installed, hence the warning at import).

Outputs: models/qlora/adapter, and models/qlora/merged: the adapter merged into the full-precision base,
the usual way to ship a QLoRA result (merging into the 4-bit weights would round the update away).
Metrics: those of `lora`, plus the base's memory in 4 bits vs full precision and the merged model's
exact-match.
"""

from __future__ import annotations

from functools import partial
from importlib import metadata
from pathlib import Path
from typing import Literal

import torch
from peft import PeftModel, prepare_model_for_kbit_training
from transformers import BitsAndBytesConfig

from labs.core.adapters import AdapterParams, seed_spread, train_adapter
from labs.core.config import SEED, Section, Seed, Tier, view
from labs.core.evaluation import MeasureParams, exact_match
from labs.core.models import DTYPES, count_parameters, load_model, load_tokenizer, require
from labs.core.run import atomic_path, safetensors_mb, save_model
from labs.core.train import held_out_answers, identical


class QLoraParams(AdapterParams):
    """LoRA (or DoRA) on a base quantized to 4 bits by bitsandbytes; compute dtype = `precision`."""

    method: Literal["lora", "dora"] = "lora"
    """the adapter on the 4-bit base: lora | dora (QDoRA)"""
    quant_type: Literal["nf4", "fp4"] = "nf4"
    """bitsandbytes 4-bit format: nf4 | fp4"""
    double_quant: bool = True
    """quantize the quantization constants too (QLoRA paper, ~0.4 bit/param saved)"""


# the keys of the evaluate section this lab's held-out measurements use
Measurement = view(MeasureParams, "max_new_tokens", "batch_size", "precision")


class Params(Section):
    """What qlora reads from params.yaml."""

    seed: Seed = SEED
    tier: Tier = "cpu"
    qlora: QLoraParams = QLoraParams()
    evaluate: Measurement = Measurement()


BASE, OUT = Path("models/pretrain"), Path("models/qlora")


def quantization_config(cfg: QLoraParams) -> BitsAndBytesConfig:
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=cfg.quant_type,
        bnb_4bit_use_double_quant=cfg.double_quant,
        bnb_4bit_compute_dtype=DTYPES[cfg.precision],
    )


def load_quantized(base: Path, cfg: QLoraParams):
    """The base with its linear layers in 4 bits, ready for an adapter to train on it."""
    model = load_model(base, cfg.precision, cfg.attn_implementation, training=True,
                       quantization_config=quantization_config(cfg))
    # load_model keeps bitsandbytes off its CPU repacking, which would stop gradients (models.plain_4bit_matmul)
    # Norms and embeddings to fp32 for stable training; input gradients when checkpointing needs them.
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)


def run(params: Params) -> dict:
    cfg = params.qlora
    base = require(BASE, "config.json", "pretrain")
    tokenizer = load_tokenizer(base)
    full = load_model(base, cfg.precision, cfg.attn_implementation, training=True)
    parameters, full_mb = count_parameters(full), full.get_memory_footprint() / 2**20
    del full

    model = load_quantized(base, cfg)
    quantized_mb = model.get_memory_footprint() / 2**20  # right for bitsandbytes (not for torchao)
    # TRL would train the adapter in bf16 (the QLoRA paper's choice): ~19x slower on CPU and absent on T4s, so
    # it computes in the tier's precision (fp32 under fp16's mixed precision)
    adapter_dtype = torch.float32 if cfg.precision == "fp16" else DTYPES[cfg.precision]
    # `completions`: the 4-bit base + adapter's held-out answers, as trained
    trainer, metrics, card, completions = train_adapter(params, cfg, "qlora", model, tokenizer, base, parameters,
                                                        adapter_dtype)
    if cfg.seeds:
        metrics["seed_spread"] = seed_spread(params, cfg, "qlora", metrics, partial(load_quantized, base, cfg),
                                             tokenizer, base, parameters, adapter_dtype)

    with atomic_path(OUT) as tmp:
        save_model(trainer.model, tokenizer, tmp / "adapter", card)
        metrics["adapter_mb"] = safetensors_mb(tmp / "adapter")
        full = load_model(base, params.evaluate.precision)
        merged = PeftModel.from_pretrained(full, tmp / "adapter").merge_and_unload()
        save_model(merged, tokenizer, tmp / "merged", card)

    test, merged_completions = held_out_answers(merged, tokenizer, params)
    metrics |= {
        "quantization": {"bitsandbytes": metadata.version("bitsandbytes"), "quant_type": cfg.quant_type,
                         "double_quant": cfg.double_quant, "compute_dtype": cfg.precision,
                         "device": str(next(p.device for p in trainer.model.parameters()))},
        "base_memory_mb": {"full_precision": round(full_mb, 3), "4bit": round(quantized_mb, 3),
                           "ratio": round(quantized_mb / full_mb, 3)},
        # The adapter learned against the 4-bit weights; on the exact weights its answers may differ.
        "merged_exact_match": exact_match(test, merged_completions),
        "merged_matches_adapter": identical(merged_completions, completions),
    }
    print(f"qlora: base {metrics['base_memory_mb']['4bit']:.2f} MB in 4 bits vs {full_mb:.2f} MB; held-out "
          f"exact-match {metrics['exact_match']['overall']} (merged into the full base: "
          f"{metrics['merged_exact_match']['overall']})")
    return metrics
