"""sft_variants — sft's two variants beside plain SFT, each trained from the pretrained base on one schedule.

    just lab sft_variants
    dvc exp run -S sft_variants.kl_beta=0.5 -S sft_variants.max_steps=1000

Each variant is a param of `sft` (`sft.templates`, `sft.kl_beta`): this lab trains them side by side.
  * plain       — the user turn as written, plain SFT loss;
  * templates   — each training chat's user turn is one of `templates`, drawn at random;
  * kl          — plain chats, the loss plus `kl_beta` * KL(model || pretrained base) on the answer tokens.
Measured for each: held-out exact-match with the prompts as written (the plain variant's only template), and
with the same prompts in `unseen_templates`, phrasings no variant trained on; EOS rate; perplexity on the
corpus's held-out prose (what fine-tuning made the model forget); and its KL to the base per answer token on
the held-out chats.
With `seeds`, every variant is trained again with each seed and the table gives the mean and spread.
"""

from __future__ import annotations

import torch
from pydantic import Field

from labs.core.config import SEED, Section, Seed, Tier, view
from labs.core.data import read_jsonl
from labs.core.evaluation import MeasureParams, chat_batch, exact_match, generate
from labs.core.models import load_model, load_tokenizer, require
from labs.core.run import run_card, seed_everything
from labs.core.spread import cells, over_seeds
from labs.core.train import PREPARED, fit, held_out_scores
from labs.sft import BASE, SFTParams, sft_trainer, token_kl


class SFTVariantsParams(Section):
    """The variants of sft trained side by side, and what they are measured on."""

    max_steps: int = Field(400, gt=0)
    """optimizer steps of every variant (sft's other settings as they are)"""
    templates: list[str] = Field(["{prompt}", "Question: {prompt}", "{prompt} Give the answer.", "Solve: {prompt}"],
                                 min_length=2)
    """the templates variant's phrasings of the user turn"""
    unseen_templates: list[str] = Field(["Here is a task. {prompt}", "{prompt} Reply with the result.",
                                         "Q: {prompt}"], min_length=1)
    """phrasings no variant trains on: exact-match on these tells what a variant learned beyond its template"""
    kl_beta: float = Field(0.1, gt=0)
    """the kl variant's weight of KL(model || base)"""
    seeds: list[int] = [1, 2]
    """more seeds to train every variant with: the table then shows each metric's mean and spread"""


Measurement = view(MeasureParams, "max_new_tokens", "batch_size")


class Params(Section):
    """What sft_variants reads from params.yaml."""

    seed: Seed = SEED
    tier: Tier = "cpu"
    sft: SFTParams = SFTParams()
    sft_variants: SFTVariantsParams = SFTVariantsParams()
    evaluate: Measurement = Measurement()


METRICS = ("exact_match", "unseen_exact_match", "corpus_perplexity", "kl_to_base")


def variant_configs(params: Params) -> dict[str, SFTParams]:
    """sft's section with each variant's one change, on this lab's schedule."""
    steps = params.sft_variants.max_steps
    # two checkpoints: validation runs at every one, and sft's interval would double the lab's time
    cfg = params.sft.model_copy(update={"max_steps": steps, "save_steps": max(steps // 2, 1)})
    return {"plain": cfg, "templates": cfg.model_copy(update={"templates": params.sft_variants.templates}),
            "kl": cfg.model_copy(update={"kl_beta": params.sft_variants.kl_beta})}


def unseen_exact_match(params: Params, model, tokenizer) -> float:
    """Held-out exact-match with each prompt put into one of the unseen phrasings, in turn."""
    test = read_jsonl(PREPARED / "sft_test.jsonl", "sft")
    unseen = params.sft_variants.unseen_templates
    prompts = [unseen[i % len(unseen)].replace("{prompt}", row["prompt"]) for i, row in enumerate(test)]
    completions, _ = generate(model, tokenizer, prompts, params.evaluate.max_new_tokens, params.evaluate.batch_size)
    return exact_match(test, completions)["overall"]


@torch.no_grad()
def kl_to_base(model, base, tokenizer, rows: list[dict], batch_size: int) -> float:
    """Mean KL(model || base) per answer token on held-out chats, their gold answers teacher-forced: what the kl
    variant's loss term weighs, measured where neither model trained."""
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        ids, attention, labels = chat_batch(tokenizer, [r["prompt"] for r in chunk], [r["completion"] for r in chunk])
        answer = labels[:, 1:] != -100
        kl = token_kl(model(input_ids=ids, attention_mask=attention).logits[:, :-1],
                      base(input_ids=ids, attention_mask=attention).logits[:, :-1], answer)
        total, count = total + kl.sum().item(), count + kl.numel()
    return round(total / count, 4)


def train_variants(params: Params, tokenizer, base_model) -> list[dict]:
    """Every variant from the pretrained base with `params.seed`, measured."""
    rows = []
    test = read_jsonl(PREPARED / "sft_test.jsonl", "sft")
    for name, cfg in variant_configs(params).items():
        seed_everything(params.seed)
        model = load_model(BASE, cfg.precision, cfg.attn_implementation, training=True)
        lab = f"sft_variants/{name}-seed-{params.seed}"
        trainer = sft_trainer(params, cfg, lab, model, tokenizer)
        training = fit(trainer, run_card("sft_variants", params, cfg) | {"variant": name}, lab)
        scores, _ = held_out_scores(trainer.model, tokenizer, params)
        row = {"variant": name, "exact_match": scores["exact_match"]["overall"],
               "unseen_exact_match": unseen_exact_match(params, trainer.model, tokenizer),
               "eos_rate": scores["eos_rate"], "corpus_perplexity": scores["corpus_perplexity"],
               "kl_to_base": kl_to_base(trainer.model, base_model, tokenizer, test, params.evaluate.batch_size),
               "val_loss": training["val_loss"], "steps": training["steps"]}
        print(f"sft_variants: {name}: exact-match {row['exact_match']} (unseen phrasings {row['unseen_exact_match']}),"
              f" corpus perplexity {row['corpus_perplexity']}, KL to base {row['kl_to_base']}")
        rows.append(row)
    return rows


def run(params: Params) -> dict:
    base = require(BASE, "config.json", "pretrain")
    tokenizer = load_tokenizer(base)
    base_model = load_model(base, params.sft.precision, params.sft.attn_implementation)
    rows = train_variants(params, tokenizer, base_model)
    metrics = {"steps": params.sft_variants.max_steps, "variants": rows}
    if params.sft_variants.seeds:
        runs = [rows] + [train_variants(params.model_copy(update={"seed": seed}), tokenizer, base_model)
                         for seed in params.sft_variants.seeds]
        metrics |= {"seeds": [params.seed, *params.sft_variants.seeds], "spread": over_seeds(runs, "variant", METRICS)}
    return metrics


def table(metrics: dict) -> tuple[list[str], list[list]]:
    """metrics/sft_variants.json as a table: one row per variant; with seeds, each cell is the mean ± sd."""
    header = ["variant", "EM as written %", "EM unseen phrasings %", "corpus perplexity", "KL to base"]
    if "spread" in metrics:
        header[0] = f"variant ({len(metrics['seeds'])} seeds)"
        return header, [[row["variant"], *cells(row, METRICS)] for row in metrics["spread"]]
    return header, [[row["variant"], *(row[key] for key in METRICS)] for row in metrics["variants"]]
