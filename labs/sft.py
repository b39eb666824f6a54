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

import torch
from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from labs.core.config import Params, SFTParams
from labs.core.data import read_jsonl
from labs.core.evaluation import exact_match, generate, percent, perplexity
from labs.core.models import DTYPES, count_parameters, load_model, load_tokenizer, require, trainer_kwargs
from labs.core.run import (
    checkpoint_dir,
    finish_checkpoints,
    run_card,
    safetensors_mb,
    save_curves,
    save_model,
    train_resumable,
)

PREPARED, BASE, OUT = Path("data/prepared"), Path("models/pretrain"), Path("models/sft")


def as_chat(rows: list[dict]) -> Dataset:
    """Contract rows -> TRL's conversational prompt-completion format (so the chat template applies)."""
    def turn(row):
        if "messages" in row:
            return {"prompt": row["messages"][:-1], "completion": row["messages"][-1:]}
        return {"prompt": [{"role": "user", "content": row["prompt"]}],
                "completion": [{"role": "assistant", "content": row["completion"]}]}
    return Dataset.from_list([turn(row) for row in rows])


def finetune(params: Params, cfg: SFTParams, lab: str, model, tokenizer, base: Path,
             peft_config=None) -> tuple[SFTTrainer, dict, dict]:
    """Train `model` on the sft task with SFTTrainer (through `peft_config` when given: the PEFT labs).

    Returns the trainer, the metrics every fine-tuning lab reports (validation loss before/after,
    training stats, held-out exact-match and EOS rate with the completions) and the run card.
    """
    train = as_chat(read_jsonl(PREPARED / "sft_train.jsonl", "sft"))
    val = as_chat(read_jsonl(PREPARED / "sft_val.jsonl", "sft"))
    checkpoints = checkpoint_dir(lab, {"seed": params.seed, "tier": params.tier, lab: cfg.model_dump()},
                                 [PREPARED / "sft_train.jsonl", PREPARED / "sft_val.jsonl", base])
    args = SFTConfig(
        **trainer_kwargs(params, cfg, checkpoints),
        max_length=cfg.max_length,
        completion_only_loss=True,  # prompt tokens -> -100
        packing=False,  # one short chat per row; padding-free packing is 2-3x slower on CPU (shared/facts.md)
        # TRL's default chunked loss reads lm_head's weight directly: with trainable token rows on a tied
        # head (PEFT wraps it) it fails, and it would skip those rows' update. Same math, unchunked:
        **({"loss_type": "nll"} if getattr(peft_config, "trainable_token_indices", None) else {}),
    )
    card = run_card(lab, params, cfg)  # saved with every checkpoint and with the final model
    trainer = SFTTrainer(model=model, args=args, train_dataset=train, eval_dataset=val,
                         processing_class=tokenizer, peft_config=peft_config)
    if getattr(trainer.model, "is_loaded_in_4bit", False):
        # TRL casts a quantized model's adapter to bf16 (the QLoRA paper's choice). Here the compute dtype
        # comes from the tier instead: bf16 is ~19x slower on this CPU, and T4s have no bf16.
        for param in trainer.model.parameters():
            if param.requires_grad:
                param.data = param.data.to(torch.float32 if cfg.precision == "fp16" else DTYPES[cfg.precision])

    metrics = {"val_loss_before": round(trainer.evaluate()["eval_loss"], 4)}
    metrics |= train_resumable(trainer, checkpoints, card)
    metrics["val_loss"] = round(trainer.evaluate()["eval_loss"], 4)

    test = read_jsonl(PREPARED / "sft_test.jsonl", "sft")
    completions, ended = generate(trainer.model, tokenizer, [r["prompt"] for r in test],
                                  params.evaluate.max_new_tokens, params.evaluate.batch_size)
    metrics["exact_match"] = exact_match(test, completions)
    metrics["eos_rate"] = percent(ended)
    # What fine-tuning cost the model's prose: perplexity on held-out pretraining text.
    corpus = [r["text"] for r in read_jsonl(PREPARED / "corpus_val.jsonl", "text")]
    metrics["corpus_perplexity"] = perplexity(trainer.model, tokenizer, corpus)
    save_curves(lab, trainer.state.log_history)
    finish_checkpoints(checkpoints)
    return trainer, metrics | {"completions": completions}, card


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
