"""cpt — continued pretraining: the pretrained base on raw text of a domain it never saw, with replay.

    just lab cpt
    dvc exp run -S 'cpt.replay=[0.0,0.5]' -S cpt.lr=1e-3

The base learned the main world (add, compare, sort, reverse) from prose; the new domain (`subtract`,
data.domain) never appeared in it. Continued pretraining trains the base on the domain's prose: packed, no
chat template, every token a target, with the learning rate warmed up again to `lr` (pretraining's own
schedule ended near zero). Each variant replays a share of the base's own corpus among the domain's documents,
at the same number of steps, so it sees less of the domain and keeps more of what it knew.

Measured for the base and for every replay share: perplexity on held-out domain prose (adaptation) and on the
main world's held-out prose (forgetting); then the same short fine-tuning on the domain's chats from each
model, and exact-match on held-out domain prompts (what the adaptation is worth downstream). With `seeds`,
every variant is trained again with each seed and the table gives the mean and spread.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Annotated

from datasets import Dataset
from pydantic import Field
from trl import SFTConfig, SFTTrainer

from labs.core.chats import chat_trainer, train_chats
from labs.core.config import SEED, Section, Seed, Tier, TrainParams, view
from labs.core.data import DataError, read_jsonl
from labs.core.evaluation import MeasureParams, exact_match, generate, perplexity
from labs.core.models import load_model, load_tokenizer, require, trainer_kwargs
from labs.core.run import checkpoint_dir, finish_checkpoints, run_card, seed_everything, train_resumable, write_csv
from labs.core.spread import cells, over_seeds


class DomainSFTParams(TrainParams):
    """The fine-tuning on the domain's chats that follows, the same from every model."""

    max_length: int = Field(128, gt=0)  # a subtraction chat with its worked steps is under 60 tokens
    batch_size: int = Field(16, gt=0)
    max_steps: int = 150  # short: the base's knowledge, not this run, should decide the result
    lr: float = Field(2e-3, gt=0)  # sft's rate
    warmup_steps: int = Field(10, ge=0)


class CPTParams(TrainParams):
    """Continued pretraining on the domain's prose, once per replay share."""

    replay: list[Annotated[float, Field(ge=0, lt=1)]] = Field([0.0, 0.1, 0.3], min_length=1)
    """shares of the training documents drawn from the base's own corpus (0: the domain alone)"""
    max_length: int = Field(256, gt=0)  # pretraining's packed block
    batch_size: int = Field(8, gt=0)  # pretraining's
    max_steps: int = 100  # equal steps for every share (the same compute, a different mix): ~5 passes over the domain
    lr: float = Field(3e-3, gt=0)  # twice pretraining's peak: a new domain is learned faster from a warm restart
    seeds: list[int] = [1, 2]  # downstream exact-match swings between runs: read its mean and spread over 3
    """more seeds to train every variant with: the table then shows each metric's mean and spread"""
    sft: DomainSFTParams = DomainSFTParams()
    """the downstream fine-tuning on the domain's chats"""


Measurement = view(MeasureParams, "max_new_tokens", "batch_size")


class Params(Section):
    """What cpt reads from params.yaml."""

    seed: Seed = SEED
    tier: Tier = "cpu"
    cpt: CPTParams = CPTParams()
    evaluate: Measurement = Measurement()


BASE, PREPARED = Path("models/pretrain"), Path("data/prepared")
METRICS = ("domain_perplexity", "corpus_perplexity", "domain_sft_val_loss", "domain_exact_match")


def texts(name: str) -> list[str]:
    return [row["text"] for row in read_jsonl(PREPARED / f"{name}.jsonl", "text")]


def replay_mix(domain: list[str], corpus: list[str], share: float, seed: int) -> list[str]:
    """Every domain document, plus enough of the base's corpus that `share` of all documents are replayed."""
    count = min(round(len(domain) * share / (1 - share)), len(corpus))
    return domain + random.Random(f"{seed}:replay:{share}").sample(corpus, count)


def continue_pretraining(params: Params, share: float, model, tokenizer):
    """The method: next-token training on the domain's prose and the replayed share, packed into blocks."""
    cfg = params.cpt
    documents = replay_mix(texts("domain_corpus_train"), texts("corpus_train"), share, params.seed)
    config = {"seed": params.seed, "tier": params.tier, "cpt": cfg.model_dump(exclude={"sft", "seeds", "replay"}),
              "replay": share}
    checkpoints = checkpoint_dir(f"cpt/replay-{share}-seed-{params.seed}", config,
                                 [BASE, PREPARED / "domain_corpus_train.jsonl", PREPARED / "corpus_train.jsonl"])
    args = SFTConfig(**trainer_kwargs(params, cfg, checkpoints), max_length=cfg.max_length, packing=True,
                     packing_strategy="wrapped", dataset_text_field="text", completion_only_loss=False)
    trainer = SFTTrainer(model=model, args=args, processing_class=tokenizer,
                         train_dataset=as_dataset(documents), eval_dataset=as_dataset(texts("domain_corpus_val")))
    card = run_card("cpt", params, cfg) | {"replay": share}
    stats = train_resumable(trainer, checkpoints, card)
    finish_checkpoints(checkpoints)
    return trainer.model, stats


def as_dataset(documents: list[str]) -> Dataset:
    return Dataset.from_list([{"text": text} for text in documents])


def fine_tune_on_domain(params: Params, name: str, model, tokenizer) -> dict:
    """The same short SFT on the domain's chats from `model`: its validation loss, and held-out domain
    exact-match afterwards."""
    cfg = params.cpt.sft
    train, val, test = (read_jsonl(PREPARED / f"domain_sft_{split}.jsonl", "sft") for split in ("train", "val", "test"))
    # it starts from the base after this variant's continued pretraining
    origin = {"variant": name, "cpt": params.cpt.model_dump(exclude={"seeds", "replay", "sft"})}
    trainer = chat_trainer(params, cfg, f"cpt/sft-{name}-seed-{params.seed}", model, tokenizer, train, val, BASE,
                           origin)
    stats = train_chats(trainer, run_card("cpt", params, cfg) | {"from": name})
    completions, _ = generate(trainer.model, tokenizer, [row["prompt"] for row in test],
                              params.evaluate.max_new_tokens, params.evaluate.batch_size)
    return {"domain_sft_val_loss": stats["val_loss"], "domain_exact_match": exact_match(test, completions)["overall"]}


def variants(params: Params, tokenizer, domain_val: list[str], corpus_val: list[str]) -> list[dict]:
    """The base and every replay share, measured before and after the domain fine-tuning, with one seed."""
    cfg, rows = params.cpt, []
    for share in [None, *cfg.replay]:
        seed_everything(params.seed)
        model = load_model(BASE, cfg.precision, cfg.attn_implementation, training=True)
        name = "base" if share is None else f"replay-{share:g}"
        row = {"model": name, "replay": share}
        if share is not None:
            model, row["cpt"] = continue_pretraining(params, share, model, tokenizer)
        row |= {"domain_perplexity": perplexity(model, tokenizer, domain_val),
                "corpus_perplexity": perplexity(model, tokenizer, corpus_val)}
        row |= fine_tune_on_domain(params, name, model, tokenizer)
        print(f"cpt: {name}: domain perplexity {row['domain_perplexity']}, corpus perplexity "
              f"{row['corpus_perplexity']}, domain exact-match after fine-tuning {row['domain_exact_match']}")
        rows.append(row)
    return rows


def run(params: Params) -> dict:
    base = require(BASE, "config.json", "pretrain")
    if not (PREPARED / "domain_corpus_train.jsonl").exists():
        raise DataError(f"{PREPARED}: no domain_corpus_train.jsonl: the new domain's files come from `just data`, "
                        "then `just lab prepare`")
    tokenizer = load_tokenizer(base)
    domain_val, corpus_val = texts("domain_corpus_val"), texts("corpus_val")
    rows = variants(params, tokenizer, domain_val, corpus_val)
    metrics = {"cpt_steps": params.cpt.max_steps, "fine_tuning_steps": params.cpt.sft.max_steps, "variants": rows}
    if params.cpt.seeds:
        runs = [rows] + [variants(params.model_copy(update={"seed": seed}), tokenizer, domain_val, corpus_val)
                         for seed in params.cpt.seeds]
        metrics["seeds"] = [params.seed, *params.cpt.seeds]
        metrics["spread"] = over_seeds(runs, "model", METRICS)
    write_csv("plots/cpt/replay.csv", ["model", *METRICS],
              [[row["model"], *(row[key] for key in METRICS)] for row in rows])
    return metrics


def table(metrics: dict) -> tuple[list[str], list[list]]:
    """metrics/cpt.json as a table: one row per model; with seeds, each cell is the mean ± sd over them."""
    header = ["model", "domain perplexity", "main-world perplexity", "fine-tuning validation loss",
              "domain EM after fine-tuning %"]
    if "spread" in metrics:
        header[0] = f"model ({len(metrics['seeds'])} seeds)"
        return header, [[row["model"], *cells(row, METRICS)] for row in metrics["spread"]]
    return header, [[row["model"], *(row[key] for key in METRICS)] for row in metrics["variants"]]
