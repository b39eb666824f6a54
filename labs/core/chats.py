"""Fine-tuning on prompt/completion rows a lab builds itself (cpt's downstream fine-tuning, cot, curriculum): the
trainer, resumable like every other. `labs/core/train.py` holds the same for the sft task's own files."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from trl import SFTConfig, SFTTrainer

from labs.core.config import Section, TrainParams
from labs.core.models import trainer_kwargs
from labs.core.run import checkpoint_dir, finish_checkpoints, train_resumable
from labs.core.train import as_chat


def chat_trainer(params: Section, cfg: TrainParams, lab: str, model, tokenizer, train: list[dict], val: list[dict],
                 base: Path, origin: dict | None = None, peft_config=None, **overrides) -> SFTTrainer:
    """SFTTrainer on `train` (prompt/completion rows), loss on the completions only, one chat per row, validated
    on `val`, through `peft_config` when given. Its checkpoints resume only a killed run of the same config and
    rows, from the same model: `base` on disk, after what `origin` describes (the training `model` already had,
    e.g. earlier stages). `overrides` go to SFTConfig (`train_sampling_strategy="sequential"` keeps the order)."""
    rows = hashlib.sha256(json.dumps([train, val], sort_keys=True).encode()).hexdigest()
    checkpoints = checkpoint_dir(lab, {"seed": params.seed, "tier": params.tier, "train": cfg.model_dump(),
                                       "rows": rows, "origin": origin, **overrides}, [base])
    args = SFTConfig(**trainer_kwargs(params, cfg, checkpoints), max_length=cfg.max_length,
                     completion_only_loss=True, packing=False, **overrides)
    return SFTTrainer(model=model, args=args, train_dataset=as_chat(train), eval_dataset=as_chat(val),
                      processing_class=tokenizer, peft_config=peft_config)


def train_chats(trainer: SFTTrainer, card: dict) -> dict:
    """Train (resuming a killed run; every checkpoint gets `card`); the training stats and the validation loss."""
    checkpoints = Path(trainer.args.output_dir)
    stats = train_resumable(trainer, checkpoints, card)
    finish_checkpoints(checkpoints)
    return stats | {"val_loss": round(trainer.evaluate()["eval_loss"], 4)}


def family_losses(trainer: SFTTrainer, val: dict[str, list[dict]]) -> dict[str, float]:
    """Validation loss on each family's rows: it moves with every step, where exact-match waits for whole answers
    to come right, so small runs and forgetting show in it first."""
    return {family: round(trainer.evaluate(eval_dataset=as_chat(rows))["eval_loss"], 4)
            for family, rows in sorted(val.items())}
