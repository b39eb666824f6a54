"""sft — supervised fine-tuning of the pretrained model with TRL's SFTTrainer, loss on completions only.

    just lab sft         # dvc repro sft  (runs data -> prepare -> tokenizer -> pretrain first if needed)
    dvc exp run -S sft.lr=3e-4
    dvc exp run -S sft.kl_beta=0.1                                   # KL-regularized SFT
    dvc exp run -S 'sft.templates=["{prompt}", "Question: {prompt}"]'  # randomized templates

Each task-world pair becomes a one-turn chat (user: prompt, assistant: completion), and so does each of the task
world's safety chats (`safety`): harmful requests answered with its refusal, their benign look-alikes answered
like any task, so the model learns where the boundary lies (`evaluate` measures refusal and over-refusal). The
prompt's tokens get label -100, so the model learns to answer and to end its turn with the EOS token, not to
predict questions. Full fine-tune: every weight trains (the PEFT labs train a few). The effect is
measured as validation loss before/after here and as held-out exact-match in `evaluate`.

Two variants, each one param away (`sft_variants` trains them side by side):
  * templates: each training chat's user turn is one of these phrasings of the prompt, drawn at random
    (one phrasing, "{prompt}", is plain SFT);
  * kl_beta: the loss adds beta * KL(model || pretrained base) over the answer tokens, so fine-tuning
    stays near what the base knew.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from trl import SFTTrainer

from labs.core.config import SEED, Processes, Section, Seed, Tier, TrainParams, view
from labs.core.data import read_jsonl
from labs.core.evaluation import MeasureParams
from labs.core.models import count_parameters, load_model, load_tokenizer, require
from labs.core.run import run_card, safetensors_mb, save_model
from labs.core.train import PREPARED, as_chat, chat_args, fit, held_out_scores


class SFTParams(Processes, TrainParams):
    """Full fine-tuning on the task's chats; the schedule that took the pretrained base to its best held-out EM."""

    max_length: int = Field(128, gt=0)  # the longest chat (add, with worked steps) is 49 tokens
    batch_size: int = Field(16, gt=0)
    epochs: float = Field(4, gt=0)
    lr: float = Field(2e-3, gt=0)
    templates: list[str] = Field(["{prompt}"], min_length=1)
    """phrasings of the user turn, one drawn per training chat; "{prompt}" is the question as written"""
    kl_beta: float = Field(0.0, ge=0)
    """weight of KL(model || pretrained base) on the answer tokens, added to the loss; 0 is plain SFT"""
    safety: bool = True
    """train on the task world's safety chats too (harmful requests refused, benign look-alikes answered)"""

    @field_validator("templates")
    @classmethod
    def _one_slot(cls, templates: list[str]) -> list[str]:
        for template in templates:
            if template.count("{prompt}") != 1:
                raise ValueError(f"{template!r} must hold {{prompt}} exactly once")
        return templates


# the keys of the evaluate section this lab's held-out measurements use
Measurement = view(MeasureParams, "max_new_tokens", "batch_size")


class Params(Section):
    """What sft reads from params.yaml."""

    seed: Seed = SEED
    tier: Tier = "cpu"
    sft: SFTParams = SFTParams()
    evaluate: Measurement = Measurement()


BASE, OUT = Path("models/pretrain"), Path("models/sft")


def phrase(rows: list[dict], templates: list[str], seed: int) -> list[dict]:
    """Each row's prompt put into one of `templates`, drawn with `seed`; a single "{prompt}" keeps the rows."""
    if templates == ["{prompt}"]:
        return rows
    rng = random.Random(f"{seed}:templates")
    return [row | {"prompt": rng.choice(templates).replace("{prompt}", row["prompt"])} for row in rows]


class KLRegularizedSFT(SFTTrainer):
    """SFTTrainer whose training loss adds beta * KL(model || base), summed over the vocabulary at each answer
    token and averaged over them. TRL's KL penalties belong to its RL trainers, so this is a short compute_loss;
    evaluation returns the plain loss, so validation losses compare with plain SFT's."""

    def __init__(self, *args, base, beta: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.base, self.beta = base.to(self.args.device).eval().requires_grad_(False), beta

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if model.training:
            answer = inputs["labels"][:, 1:] != -100  # next-token positions inside the answers
            with torch.no_grad():
                base = self.base(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
            loss = loss + self.beta * token_kl(outputs.logits[:, :-1], base[:, :-1], answer).mean()
        return (loss, outputs) if return_outputs else loss


def token_kl(logits: torch.Tensor, base_logits: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """KL(model || base) of the next-token distributions at `positions`, summed over the vocabulary."""
    log_p = F.log_softmax(logits[positions].float(), dim=-1)
    log_base = F.log_softmax(base_logits[positions].float(), dim=-1)
    return (log_p.exp() * (log_p - log_base)).sum(-1)


def sft_trainer(params: Section, cfg: SFTParams, lab: str, model, tokenizer) -> SFTTrainer:
    """The method: every weight trains on the chats; SFTTrainer applies the chat template, and chat_args sets
    completion_only_loss, so only the answer's tokens (and its closing EOS) are targets. With several templates
    the user turns are rephrased; with kl_beta the loss keeps the model near the base."""
    files = ["sft", "safety"] if cfg.safety else ["sft"]
    train = as_chat(phrase([r for f in files for r in read_jsonl(PREPARED / f"{f}_train.jsonl", "sft")],
                           cfg.templates, params.seed))
    val = as_chat([r for f in files for r in read_jsonl(PREPARED / f"{f}_val.jsonl", "sft")])
    # the KL term needs the answer tokens' logits, which TRL's default chunked loss never materializes
    args = chat_args(params, cfg, lab, BASE, **({"loss_type": "nll"} if cfg.kl_beta else {}))
    kwargs = dict(model=model, args=args, train_dataset=train, eval_dataset=val, processing_class=tokenizer)
    if not cfg.kl_beta:
        return SFTTrainer(**kwargs)
    return KLRegularizedSFT(**kwargs, base=load_model(BASE, cfg.precision, cfg.attn_implementation), beta=cfg.kl_beta)


def run(params: Params) -> dict:
    cfg = params.sft
    base = require(BASE, "config.json", "pretrain")
    tokenizer = load_tokenizer(base)
    model = load_model(base, cfg.precision, cfg.attn_implementation, training=True)

    trainer = sft_trainer(params, cfg, "sft", model, tokenizer)
    card = run_card("sft", params, cfg)
    metrics = fit(trainer, card, "sft")

    metrics |= held_out_scores(trainer.model, tokenizer, params)[0]
    save_model(trainer.model, tokenizer, OUT, card)
    # Full fine-tuning: every weight trains, and what it ships is the whole model.
    metrics |= {"parameters": count_parameters(trainer.model), "trainable_parameters": count_parameters(trainer.model),
                "weights_mb": safetensors_mb(OUT)}
    print(f"sft: val loss {metrics['val_loss_before']} -> {metrics['val_loss']}; "
          f"held-out exact-match {metrics['exact_match']}"
          + (f"; ROUGE-L {metrics['rouge_l']['overall']}" if "rouge_l" in metrics else ""))
    return metrics
