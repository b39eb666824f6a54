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

from pydantic import Field
from trl import SFTTrainer

from labs.core.config import SEED, Section, Seed, Tier, TrainParams, view
from labs.core.evaluation import MeasureParams
from labs.core.models import count_parameters, load_model, load_tokenizer, require
from labs.core.run import run_card, safetensors_mb, save_model
from labs.core.train import chat_args, fit, held_out_scores, sft_chats


class SFTParams(TrainParams):
    """Full fine-tuning on the task's chats; the schedule that took the pretrained base to its best held-out EM."""

    max_length: int = Field(128, gt=0)  # the longest chat (add, with worked steps) is 49 tokens
    batch_size: int = Field(16, gt=0)
    epochs: float = Field(4, gt=0)
    lr: float = Field(2e-3, gt=0)


# the keys of the evaluate section this lab's held-out measurements use
Measurement = view(MeasureParams, "max_new_tokens", "batch_size")


class Params(Section):
    """What sft reads from params.yaml."""

    seed: Seed = SEED
    tier: Tier = "cpu"
    sft: SFTParams = SFTParams()
    evaluate: Measurement = Measurement()


BASE, OUT = Path("models/pretrain"), Path("models/sft")


def run(params: Params) -> dict:
    cfg = params.sft
    base = require(BASE, "config.json", "pretrain")
    tokenizer = load_tokenizer(base)
    model = load_model(base, cfg.precision, cfg.attn_implementation, training=True)

    # The method: every weight trains on the chats; SFTTrainer applies the chat template, and chat_args sets
    # completion_only_loss, so only the answer's tokens (and its closing EOS) are targets.
    train, val = sft_chats()
    trainer = SFTTrainer(model=model, args=chat_args(params, cfg, "sft", base), train_dataset=train,
                         eval_dataset=val, processing_class=tokenizer)
    card = run_card("sft", params, cfg)
    metrics = fit(trainer, card, "sft")

    metrics |= held_out_scores(trainer.model, tokenizer, params)[0]
    save_model(trainer.model, tokenizer, OUT, card)
    # Full fine-tuning: every weight trains, and what it ships is the whole model.
    metrics |= {"parameters": count_parameters(model), "trainable_parameters": count_parameters(model),
                "weights_mb": safetensors_mb(OUT)}
    print(f"sft: val loss {metrics['val_loss_before']} -> {metrics['val_loss']}; "
          f"held-out exact-match {metrics['exact_match']}")
    return metrics
