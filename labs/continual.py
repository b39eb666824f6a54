"""continual — the task families learned one after another: what the model forgets, and two ways to keep it.

    just lab continual
    dvc exp run -S continual.replay=0.5 -S 'continual.order=[reverse, sort, compare, add]'

From the pretrained base, one stage per family in `order`, `steps_per_task` steps on that family's chats each
(the task world's, data/prepared/world_sft_*, whatever `data.source`: a real SFT set has no families):
  * sequential — full fine-tuning, stage after stage;
  * replay     — the same, with a `replay` share of each stage's rows drawn from the families before it;
  * adapters   — one LoRA adapter per family on the frozen base (rank, targets and rate from the `lora`
                 section); each family's prompts go through its own adapter, so no stage can overwrite another.
After every stage, held-out exact-match and validation loss on every family. The table gives, per family, its
exact-match right after its own stage and at the end (the difference is what was forgotten), and the rise of its
validation loss between the two, which shows forgetting before exact-match does; the full matrix is in the metrics.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Annotated

from pydantic import Field

from labs.core.adapters import AdapterParams, peft_config
from labs.core.chats import chat_trainer, family_losses, train_chats
from labs.core.config import SEED, ConfigError, Section, Seed, Tier, TrainParams, view
from labs.core.data import read_jsonl
from labs.core.evaluation import MeasureParams, exact_match, generate
from labs.core.models import load_model, load_tokenizer, require
from labs.core.run import run_card, seed_everything


class ContinualParams(TrainParams):
    """The families one after another, with and without replay, and with one adapter each."""

    max_length: int = Field(128, gt=0)  # sft's
    batch_size: int = Field(16, gt=0)
    lr: float = Field(2e-3, gt=0)  # sft's: full fine-tuning
    save_steps: int = Field(200, gt=0)  # validation runs at every checkpoint: few keep it cheap
    order: list[str] = Field(["add", "compare", "sort", "reverse"], min_length=2)
    """the families, in the order they are learned"""
    steps_per_task: int = Field(150, gt=0)
    """steps of each stage"""
    replay: Annotated[float, Field(gt=0, lt=1)] = 0.3
    """the replay variant's share of each stage's rows drawn from the families before it"""


Adapter = view(AdapterParams, "rank", "alpha", "dropout", "target_modules", "trainable_tokens", "lr")
Measurement = view(MeasureParams, "max_new_tokens", "batch_size")


class Params(Section):
    """What continual reads from params.yaml."""

    seed: Seed = SEED
    tier: Tier = "cpu"
    continual: ContinualParams = ContinualParams()
    lora: Adapter = Adapter()
    evaluate: Measurement = Measurement()


BASE, PREPARED = Path("models/pretrain"), Path("data/prepared")


def stage_rows(train: dict[str, list[dict]], order: list[str], stage: int, count: int, replay: float,
               seed: int) -> list[dict]:
    """`count` rows of the stage's family; with `replay`, that share drawn from the families before it."""
    rng = random.Random(f"{seed}:continual:{stage}")
    earlier = [row for family in order[:stage] for row in train[family]]
    replayed = round(count * replay) if earlier else 0
    # drawn with replacement, as a mixture is: a stage may take more rows than its family has
    rows = rng.choices(train[order[stage]], k=count - replayed) + rng.choices(earlier, k=replayed)
    rng.shuffle(rows)
    return rows


def held_out(model, tokenizer, params: Params, test: list[dict]) -> dict[str, float]:
    completions, _ = generate(model, tokenizer, [row["prompt"] for row in test], params.evaluate.max_new_tokens,
                              params.evaluate.batch_size)
    return exact_match(test, completions)


def sequential(params: Params, tokenizer, train: dict, val: dict, test: list[dict], replay: float) -> list[dict]:
    """Full fine-tuning, one family after another: exact-match on every family after each stage."""
    cfg, count = params.continual, params.continual.steps_per_task * params.continual.batch_size
    seed_everything(params.seed)
    model = load_model(BASE, cfg.precision, cfg.attn_implementation, training=True)
    stages = []
    for stage, family in enumerate(cfg.order):
        rows = stage_rows(train, cfg.order, stage, count, replay, params.seed)
        lab = f"continual/{'replay' if replay else 'sequential'}-{stage}-{family}-seed-{params.seed}"
        trainer = chat_trainer(params, cfg, lab, model, tokenizer, rows, val[family], BASE,
                               origin={"stages before": cfg.order[:stage], "replay": replay})
        train_chats(trainer, run_card("continual", params, cfg) | {"stage": stage, "replay": replay})
        model = trainer.model
        stages.append({"after": family, "exact_match": held_out(model, tokenizer, params, test),
                       "val_loss": family_losses(trainer, val)})
        print(f"continual: {'replay' if replay else 'sequential'}: after {family}: {stages[-1]['exact_match']}")
    return stages


def adapters(params: Params, tokenizer, train: dict, val: dict, test: list[dict]) -> dict[str, float]:
    """One LoRA adapter per family on the frozen base; each family's exact-match through its own adapter."""
    cfg, count = params.continual, params.continual.steps_per_task * params.continual.batch_size
    lora = AdapterParams(**params.lora.model_dump())
    adapter_cfg = cfg.model_copy(update={"lr": lora.lr})
    scores = {}
    for stage, family in enumerate(cfg.order):
        seed_everything(params.seed)
        model = load_model(BASE, cfg.precision, cfg.attn_implementation, training=True)
        rows = stage_rows(train, cfg.order, stage, count, 0.0, params.seed)
        # with trainable token rows on a tied head, TRL's chunked loss would skip their update (labs/core/adapters)
        trainer = chat_trainer(params, adapter_cfg, f"continual/adapter-{family}-seed-{params.seed}", model,
                               tokenizer, rows, val[family], BASE, peft_config=peft_config(lora, tokenizer),
                               loss_type="nll")
        train_chats(trainer, run_card("continual", params, adapter_cfg) | {"adapter": family})
        mine = [r for r in test if r.get("family", "all") == family]
        scores[family] = held_out(trainer.model, tokenizer, params, mine)[family]
        print(f"continual: adapter for {family}: exact-match {scores[family]}")
    return scores


def summary(stages: list[dict], order: list[str]) -> dict[str, dict]:
    """Per family: exact-match right after its own stage, at the end, and the forgetting between them; the same
    for its validation loss (forgetting raises it)."""
    summary = {}
    for i, family in enumerate(order):
        learned, final = stages[i], stages[-1]
        summary[family] = {
            "learned": learned["exact_match"][family], "final": final["exact_match"][family],
            "forgotten": round(learned["exact_match"][family] - final["exact_match"][family], 2),
            "val_loss_learned": learned["val_loss"][family], "val_loss_final": final["val_loss"][family],
            "val_loss_rise": round(final["val_loss"][family] - learned["val_loss"][family], 4)}
    return summary


def run(params: Params) -> dict:
    base = require(BASE, "config.json", "pretrain")
    tokenizer = load_tokenizer(base)
    split = {name: read_jsonl(PREPARED / f"world_sft_{name}.jsonl", "sft") for name in ("train", "val", "test")}
    families = {row.get("family", "all") for row in split["train"]}
    if unknown := set(params.continual.order) - families:
        raise ConfigError(f"params.yaml: continual.order: {sorted(unknown)} are not families of "
                          f"data/prepared/world_sft_train.jsonl ({', '.join(sorted(families))})")
    test = [row for row in split["test"] if row.get("family", "all") in params.continual.order]
    train, val = ({f: [r for r in split[name] if r.get("family", "all") == f] for f in families}
                  for name in ("train", "val"))
    order = params.continual.order
    plain = sequential(params, tokenizer, train, val, test, 0.0)
    replayed = sequential(params, tokenizer, train, val, test, params.continual.replay)
    return {"order": order, "steps_per_task": params.continual.steps_per_task, "replay": params.continual.replay,
            "sequential": {"stages": plain, "families": summary(plain, order)},
            "replay_variant": {"stages": replayed, "families": summary(replayed, order)},
            "adapters": adapters(params, tokenizer, train, val, test)}


def table(metrics: dict) -> tuple[list[str], list[list]]:
    """metrics/continual.json as a table: per family, EM after its stage -> at the end, for each variant."""
    header = ["family", "sequential: EM learned → final %", "loss rise", f"replay {metrics['replay']:g}: EM "
              "learned → final %", "loss rise", "adapter per family: EM %"]
    rows = []
    for family in metrics["order"]:
        plain, replayed = metrics["sequential"]["families"][family], metrics["replay_variant"]["families"][family]
        rows.append([family, f"{plain['learned']} → {plain['final']}", plain["val_loss_rise"],
                     f"{replayed['learned']} → {replayed['final']}", replayed["val_loss_rise"],
                     metrics["adapters"][family]])
    return header, rows
