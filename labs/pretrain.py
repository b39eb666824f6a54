"""pretrain — causal-LM pretraining of a tiny Llama from scratch on the task world's corpus.

    just lab pretrain    # dvc repro pretrain

The corpus states the task world's facts in prose ("23 plus 58 equals 81."), never in the chat format,
so the base model knows the facts but not how to answer a question: that is what `sft` teaches.
Documents are packed end to end into `max_length` blocks (TRL's "wrapped" packing: the default "bfd"
is 2-3x slower on this kind of CPU and truncates long documents).

GPU tiers set `pretrain.base_model` to a hub id (or a local directory): that model and its tokenizer are
the base, continued-pretrained for `max_steps` (0 = used as it is).
"""

from __future__ import annotations

import math
from pathlib import Path

from pydantic import Field

from labs.core.config import SEED, ModelShape, Processes, Section, Seed, Tier, TrainParams
from labs.core.models import build_llama, count_parameters, load_model, load_tokenizer, require
from labs.core.run import save_model
from labs.core.train import train_on_corpus


class PretrainParams(Processes, TrainParams):
    # None: build a tiny Llama from `model` and train it from scratch (CPU tier). A hub id or a local
    # directory: start from that model and its tokenizer (GPU tiers), continuing pretraining for
    # `max_steps` (0 = take the model as it is).
    base_model: str | None = None
    """null: a tiny Llama from scratch; else a hub id or local directory to continue"""
    model: ModelShape = ModelShape()
    """shape of the Llama built from scratch"""
    batch_size: int = Field(8, gt=0)  # more, smaller steps teach the model to copy from its context
    epochs: float = Field(5, gt=0)
    lr: float = Field(1.5e-3, gt=0)


class Params(Section):
    """What pretrain reads from params.yaml."""

    seed: Seed = SEED
    tier: Tier = "cpu"
    pretrain: PretrainParams = PretrainParams()


OUT = Path("models/pretrain")


def run(params: Params) -> dict:
    cfg = params.pretrain
    if cfg.base_model:
        tokenizer = load_tokenizer(cfg.base_model)
        model = load_model(cfg.base_model, cfg.precision, cfg.attn_implementation, training=True)
    else:
        tokenizer = load_tokenizer(require(Path("models/tokenizer"), "tokenizer.json", "tokenizer"))
        model = build_llama(cfg.model, tokenizer, cfg.attn_implementation)
    n_params = count_parameters(model)
    print(f"pretrain: {n_params / 1e6:.2f}M parameters, base={cfg.base_model or 'from scratch'}")

    trainer, metrics, card = train_on_corpus(params, cfg, "pretrain", model, tokenizer, [Path("models/tokenizer")],
                                             cfg.max_length, train=cfg.base_model is None or cfg.max_steps != 0)
    metrics |= {"parameters": n_params, "base_model": cfg.base_model or "scratch",
                "val_perplexity": round(math.exp(metrics["val_loss"]), 3)}
    save_model(trainer.model, tokenizer, OUT, card)
    print(f"pretrain: val loss {metrics['val_loss_before']} -> {metrics['val_loss']}")
    return metrics
