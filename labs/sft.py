"""sft — supervised fine-tuning of the pretrained model with TRL's SFTTrainer, loss on completions only.

    just lab sft         # dvc repro sft  (runs data -> prepare -> tokenizer -> pretrain first if needed)
    dvc exp run -S sft.lr=3e-4

Each task-world pair becomes a one-turn chat (user: prompt, assistant: completion). The prompt's
tokens get label -100, so the model learns to answer and to end its turn with the EOS token, not to
predict questions. Full fine-tune: every weight trains (the PEFT labs train a few). The effect is
measured as validation loss before/after here and as held-out exact-match in `evaluate`.
"""

from __future__ import annotations

from pathlib import Path

from labs.core.config import Params
from labs.core.models import count_parameters, load_model, load_tokenizer, require
from labs.core.run import safetensors_mb, save_model
from labs.core.train import finetune

BASE, OUT = Path("models/pretrain"), Path("models/sft")


def run(params: Params) -> dict:
    base = require(BASE, "config.json", "pretrain")
    tokenizer = load_tokenizer(base)
    model = load_model(base, params.sft.precision, params.sft.attn_implementation, training=True)
    trainer, metrics, card = finetune(params, params.sft, "sft", model, tokenizer, base)
    metrics.pop("completions")
    save_model(trainer.model, tokenizer, OUT, card)
    # Full fine-tuning: every weight trains, and what it ships is the whole model.
    metrics |= {"parameters": count_parameters(model), "trainable_parameters": count_parameters(model),
                "weights_mb": safetensors_mb(OUT)}
    print(f"sft: val loss {metrics['val_loss_before']} -> {metrics['val_loss']}; "
          f"held-out exact-match {metrics['exact_match']}")
    return metrics
