"""mixing — one model on a mixture of the task families against one specialist per family, at equal compute.

    just lab mixing
    dvc exp run -S 'mixing.mixtures.add_heavy={add: 4, compare: 1, sort: 1, reverse: 1}'

Every model is fine-tuned from the pretrained base on the task world's chats (data/prepared/world_sft_*,
whatever `data.source`: a real SFT set has no families). A specialist trains `steps_per_task`
steps on its own family's chats; each mixture trains `steps_per_task` x (number of families) steps on all of
them, drawn in its ratio. So a uniform mixture spends on each family what its specialist spends, and the rest of
its compute on the other families: a family's exact-match above its specialist's is transfer from the others,
below it is interference. A skewed mixture shows what a family's share is worth.
Measured: held-out exact-match per family for every model (a specialist on the other families too), and the
validation loss per family, which moves before exact-match does.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Annotated

from pydantic import Field

from labs.core.chats import chat_trainer, family_losses, train_chats
from labs.core.config import SEED, ConfigError, Section, Seed, Tier, TrainParams, view
from labs.core.data import read_jsonl
from labs.core.evaluation import MeasureParams, exact_match, generate
from labs.core.models import load_model, load_tokenizer, require
from labs.core.run import run_card, seed_everything
from labs.core.spread import cells, over_seeds


class MixingParams(TrainParams):
    """Specialists and mixtures of the sft task's families, at equal compute per family."""

    max_length: int = Field(128, gt=0)  # sft's
    batch_size: int = Field(16, gt=0)
    lr: float = Field(2e-3, gt=0)
    save_steps: int = Field(200, gt=0)  # validation runs at every checkpoint: few keep it cheap
    steps_per_task: int = Field(150, gt=0)
    """a specialist's steps; a mixture trains this times the number of families"""
    mixtures: dict[str, dict[str, Annotated[float, Field(gt=0)]]] = {
        "uniform": {"add": 1, "compare": 1, "sort": 1, "reverse": 1},
        "add_heavy": {"add": 4, "compare": 1, "sort": 1, "reverse": 1}}
    """name -> each family's weight in the mixture"""
    seeds: list[int] = []
    """more seeds to train every model with: the table then shows each metric's mean and spread"""


Measurement = view(MeasureParams, "max_new_tokens", "batch_size")


class Params(Section):
    """What mixing reads from params.yaml."""

    seed: Seed = SEED
    tier: Tier = "cpu"
    mixing: MixingParams = MixingParams()
    evaluate: Measurement = Measurement()


BASE, PREPARED = Path("models/pretrain"), Path("data/prepared")


def mixture(by_family: dict[str, list[dict]], weights: dict[str, float], count: int, seed: int) -> list[dict]:
    """`count` rows, each family's share in proportion to its weight, drawn with `seed` and shuffled."""
    rng, total, rows = random.Random(f"{seed}:mixture"), sum(weights.values()), []
    for family, weight in weights.items():
        pool = by_family[family]
        rows += [rng.choice(pool) for _ in range(round(count * weight / total))]
    rng.shuffle(rows)
    return rows


def models(params: Params, tokenizer, train: dict, val: dict, test: list[dict]) -> list[dict]:
    """Every specialist and mixture from the pretrained base with `params.seed`, measured per family."""
    cfg, rows = params.mixing, []
    rows_per_task = cfg.steps_per_task * cfg.batch_size
    plans = {f"{family} only": {family: 1.0} for family in train} | cfg.mixtures
    for name, weights in plans.items():
        seed_everything(params.seed)
        model = load_model(BASE, cfg.precision, cfg.attn_implementation, training=True)
        chats = mixture(train, weights, rows_per_task * len(weights), params.seed)
        trainer = chat_trainer(params, cfg, f"mixing/{name.replace(' ', '-')}-seed-{params.seed}", model, tokenizer,
                               chats, [row for family in weights for row in val[family]], BASE)
        training = train_chats(trainer, run_card("mixing", params, cfg) | {"model": name})
        completions, _ = generate(trainer.model, tokenizer, [row["prompt"] for row in test],
                                  params.evaluate.max_new_tokens, params.evaluate.batch_size)
        rows.append({"model": name, "steps": training["steps"], "exact_match": exact_match(test, completions),
                     "val_loss": family_losses(trainer, val)})
        print(f"mixing: {name}: {training['steps']} steps, exact-match {rows[-1]['exact_match']}")
    return rows


def transfer(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Per mixture and family: its exact-match minus the family's specialist's (positive: transfer)."""
    specialists = {row["model"].removesuffix(" only"): row for row in rows if row["model"].endswith(" only")}
    return {row["model"]: {family: round(row["exact_match"][family] - s["exact_match"][family], 2)
                           for family, s in specialists.items()}
            for row in rows if not row["model"].endswith(" only")}


def run(params: Params) -> dict:
    base = require(BASE, "config.json", "pretrain")
    tokenizer = load_tokenizer(base)
    split = {name: read_jsonl(PREPARED / f"world_sft_{name}.jsonl", "sft") for name in ("train", "val", "test")}
    families = sorted({row.get("family", "all") for row in split["train"]})
    by_family = {name: {f: [r for r in rows if r.get("family", "all") == f] for f in families}
                 for name, rows in split.items() if name != "test"}
    for mixture_name, weights in params.mixing.mixtures.items():
        if unknown := set(weights) - set(families):
            raise ConfigError(f"params.yaml: mixing.mixtures.{mixture_name}: {sorted(unknown)} are not families of "
                              f"data/prepared/world_sft_train.jsonl ({', '.join(families)})")
    rows = models(params, tokenizer, by_family["train"], by_family["val"], split["test"])
    metrics = {"steps_per_task": params.mixing.steps_per_task, "families": families, "models": rows,
               "transfer": transfer(rows)}
    if params.mixing.seeds:
        runs = [rows] + [models(params.model_copy(update={"seed": seed}), tokenizer, by_family["train"],
                                by_family["val"], split["test"]) for seed in params.mixing.seeds]
        flat = [[{"model": r["model"], **r["exact_match"]} for r in run] for run in runs]
        metrics |= {"seeds": [params.seed, *params.mixing.seeds],
                    "spread": over_seeds(flat, "model", (*families, "overall"))}
    return metrics


def table(metrics: dict) -> tuple[list[str], list[list]]:
    """metrics/mixing.json as a table: one row per model, EM per family; with seeds, mean ± sd."""
    families = [*metrics["families"], "overall"]
    header = ["model", *(f"EM {family} %" for family in families)]
    if "spread" in metrics:
        header[0] = f"model ({len(metrics['seeds'])} seeds)"
        return header, [[row["model"], *cells(row, tuple(families))] for row in metrics["spread"]]
    return header, [[row["model"], *(row["exact_match"][f] for f in families)] for row in metrics["models"]]
