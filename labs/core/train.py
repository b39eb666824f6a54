"""The two training recipes several labs share, over TRL's SFTTrainer: causal-LM training on the packed
corpus (pretrain; a distilled student's own pretraining) and fine-tuning on the sft task's chats (sft, the
PEFT labs, prune's recovery, distill). A lab changes the model, the adapter or the trainer class; the data,
checkpointing and the metrics every such row reports stay here, so their numbers compare.
"""

from __future__ import annotations

from pathlib import Path

import torch
from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from labs.core.config import Params, TrainParams
from labs.core.data import read_jsonl
from labs.core.evaluation import exact_match, generate, percent, perplexity
from labs.core.models import DTYPES, trainer_kwargs
from labs.core.run import checkpoint_dir, finish_checkpoints, run_card, save_curves, train_resumable

PREPARED = Path("data/prepared")


def as_chat(rows: list[dict]) -> Dataset:
    """Contract rows -> TRL's conversational prompt-completion format (so the chat template applies)."""
    def turn(row):
        if "messages" in row:
            return {"prompt": row["messages"][:-1], "completion": row["messages"][-1:]}
        return {"prompt": [{"role": "user", "content": row["prompt"]}],
                "completion": [{"role": "assistant", "content": row["completion"]}]}
    return Dataset.from_list([turn(row) for row in rows])


def train_on_corpus(params: Params, cfg: TrainParams, lab: str, model, tokenizer, inputs: list[Path],
                    max_length: int, train: bool = True) -> tuple[SFTTrainer, dict, dict]:
    """Next-token training on the corpus, documents packed end to end into `max_length` blocks (TRL's
    "wrapped" packing: the default "bfd" is 2-3x slower on this kind of CPU and truncates long documents).
    `inputs` are what the run's checkpoints depend on besides the corpus; `train`
    False only measures (a hub base used as it is)."""
    train_rows = Dataset.from_list(read_jsonl(PREPARED / "corpus_train.jsonl", "text"))
    val = Dataset.from_list(read_jsonl(PREPARED / "corpus_val.jsonl", "text"))
    checkpoints = checkpoint_dir(lab, {"seed": params.seed, "tier": params.tier, lab: cfg.model_dump()},
                                 [PREPARED / "corpus_train.jsonl", PREPARED / "corpus_val.jsonl", *inputs])
    args = SFTConfig(
        **trainer_kwargs(params, cfg, checkpoints),
        max_length=max_length,
        packing=True,
        packing_strategy="wrapped",
        dataset_text_field="text",
        completion_only_loss=False,  # plain text: every token is a target
    )
    card = run_card(lab, params, cfg)  # saved with every checkpoint and with the final model
    trainer = SFTTrainer(model=model, args=args, train_dataset=train_rows, eval_dataset=val,
                         processing_class=tokenizer)
    metrics = {"val_loss_before": round(trainer.evaluate()["eval_loss"], 4)}
    if train:
        metrics |= train_resumable(trainer, checkpoints, card)
    metrics["val_loss"] = round(trainer.evaluate()["eval_loss"], 4)
    save_curves(lab, trainer.state.log_history)
    finish_checkpoints(checkpoints)
    return trainer, metrics, card


def finetune(params: Params, cfg: TrainParams, lab: str, model, tokenizer, base: Path, peft_config=None,
             trainer_class: type[SFTTrainer] = SFTTrainer, **trainer_extra) -> tuple[SFTTrainer, dict, dict]:
    """Train `model` on the sft task, loss on the answers only (through `peft_config` when given: the PEFT
    labs; with another `trainer_class` and its keywords: distill's teacher-guided loss).

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
        packing=False,  # one short chat per row; padding-free packing is 2-3x slower on CPU
        # TRL's default chunked loss reads lm_head's weight directly: with trainable token rows on a tied
        # head (PEFT wraps it) it fails, and it would skip those rows' update; and it patches the forward so
        # no logits come out, which a trainer computing its own loss needs. Same math, unchunked:
        **({"loss_type": "nll"} if getattr(peft_config, "trainable_token_indices", None)
           or trainer_class is not SFTTrainer else {}),
    )
    card = run_card(lab, params, cfg)  # saved with every checkpoint and with the final model
    trainer = trainer_class(model=model, args=args, train_dataset=train, eval_dataset=val,
                            processing_class=tokenizer, peft_config=peft_config, **trainer_extra)
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


def held_out_answers(model, tokenizer, params: Params) -> tuple[list[dict], list[str]]:
    """The held-out test rows and `model`'s greedy completions of their prompts."""
    test = read_jsonl(PREPARED / "sft_test.jsonl", "sft")
    completions, _ = generate(model, tokenizer, [r["prompt"] for r in test],
                              params.evaluate.max_new_tokens, params.evaluate.batch_size)
    return test, completions


def identical(a: list[str], b: list[str]) -> float:
    """Percent of positions where two models gave the same answer."""
    return percent([x == y for x, y in zip(a, b, strict=True)])
