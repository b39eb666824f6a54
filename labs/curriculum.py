"""curriculum — the order of the training examples: easy to hard, random, hard to easy, at equal steps.

    just lab curriculum
    dvc exp run -S curriculum.max_steps=400 -S curriculum.target_exact_match=30

The long additions (data.arith) have a difficulty the task world defines: the operands' length. Each ordering
fine-tunes the pretrained base on the same rows, each seen once, in its own order:
  * easy-to-hard — shortest operands first (within a length, the seeded shuffle's order);
  * random       — the seeded shuffle itself;
  * hard-to-easy — longest first.
Every `eval_every` steps, greedy exact-match on a fixed held-out sample of the training lengths gives a curve;
the table reports the final exact-match on every held-out addition of those lengths and the first step at which
the curve reached `target_exact_match`. The targets carry the worked steps, as `cot` showed they must.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Literal

from pydantic import Field
from transformers import TrainerCallback

from labs.core.arith import splits, target
from labs.core.chats import chat_trainer, train_chats
from labs.core.config import SEED, Section, Seed, Tier, TrainParams, view
from labs.core.evaluation import MeasureParams, exact_match, generate
from labs.core.models import load_model, load_tokenizer, require
from labs.core.run import run_card, save_curves, seed_everything
from labs.core.spread import cells, over_seeds


class CurriculumParams(TrainParams):
    """One pass over the same rows in each ordering."""

    max_length: int = Field(192, gt=0)  # cot's: a 4-digit addition's chat with its working is under 120 tokens
    batch_size: int = Field(16, gt=0)
    max_steps: int = 500  # rows = max_steps x batch_size, each seen once: the ordering is the only difference
    lr: float = Field(2e-3, gt=0)
    warmup_steps: int = Field(10, ge=0)
    save_steps: int = Field(250, gt=0)  # validation runs at every checkpoint; the curve is measured apart
    lr_scheduler: Literal["linear", "cosine", "constant_with_warmup"] = "constant_with_warmup"  # no decay: a
    # decaying rate would weigh whatever comes first more
    eval_every: int = Field(50, gt=0)
    """steps between points of the exact-match curve"""
    eval_prompts: int = Field(45, gt=0)
    """held-out additions of the training lengths each curve point is measured on"""
    target_exact_match: float = Field(30.0, gt=0, le=100)
    """the exact-match % whose first step is reported"""
    max_new_tokens: int = Field(128, gt=0)
    """tokens each held-out answer may have: a 4-digit working and its answer take under 100"""
    seeds: list[int] = []
    """more seeds to train every ordering with: the table then shows each metric's mean and spread"""


Measurement = view(MeasureParams, "batch_size")


class Params(Section):
    """What curriculum reads from params.yaml."""

    seed: Seed = SEED
    tier: Tier = "cpu"
    curriculum: CurriculumParams = CurriculumParams()
    evaluate: Measurement = Measurement()


BASE = Path("models/pretrain")
ORDERINGS = ("easy-to-hard", "random", "hard-to-easy")
METRICS = ("exact_match", "steps_to_target")


def ordered(rows: list[dict], ordering: str, count: int, seed: int) -> list[dict]:
    """`count` rows drawn with `seed`, in the ordering's order (sorted by operand length, stable)."""
    drawn = random.Random(f"{seed}:curriculum").sample(rows, min(count, len(rows)))
    if ordering == "random":
        return drawn
    return sorted(drawn, key=lambda row: row.get("digits", 0), reverse=ordering == "hard-to-easy")


class ExactMatchCurve(TrainerCallback):
    """Greedy exact-match on a fixed sample every `every` steps, training paused meanwhile."""

    def __init__(self, tokenizer, sample: list[dict], every: int, max_new_tokens: int, batch_size: int):
        self.tokenizer, self.sample, self.every = tokenizer, sample, every
        self.max_new_tokens, self.batch_size, self.points = max_new_tokens, batch_size, []

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0 or state.global_step == state.max_steps:
            completions, _ = generate(model, self.tokenizer, [row["prompt"] for row in self.sample],
                                      self.max_new_tokens, self.batch_size)
            model.train()
            self.points.append({"step": state.global_step,
                                "exact_match": exact_match(self.sample, completions)["overall"]})


def orderings(params: Params, tokenizer, train: list[dict], val: list[dict], test: list[dict]) -> list[dict]:
    """Every ordering from the pretrained base with `params.seed`: its curve and its final exact-match."""
    cfg, rows = params.curriculum, []
    sample = random.Random(f"{params.seed}:curve").sample(test, min(cfg.eval_prompts, len(test)))
    for ordering in ORDERINGS:
        seed_everything(params.seed)
        model = load_model(BASE, cfg.precision, cfg.attn_implementation, training=True)
        lab = f"curriculum/{ordering}-seed-{params.seed}"
        chats = [target(row, steps=True) for row in ordered(train, ordering, cfg.max_steps * cfg.batch_size,
                                                            params.seed)]
        trainer = chat_trainer(params, cfg, lab, model, tokenizer, chats, [target(r, True) for r in val], BASE,
                               train_sampling_strategy="sequential")  # the ordering is the method: no shuffling
        curve = ExactMatchCurve(tokenizer, sample, cfg.eval_every, cfg.max_new_tokens, params.evaluate.batch_size)
        trainer.add_callback(curve)
        training = train_chats(trainer, run_card("curriculum", params, cfg) | {"ordering": ordering})
        completions, _ = generate(trainer.model, tokenizer, [row["prompt"] for row in test], cfg.max_new_tokens,
                                  params.evaluate.batch_size)
        reached = next((p["step"] for p in curve.points if p["exact_match"] >= cfg.target_exact_match), None)
        rows.append({"ordering": ordering, "exact_match": exact_match(test, completions)["overall"],
                     "steps_to_target": reached, "curve": curve.points, "val_loss": training["val_loss"],
                     "steps": training["steps"]})
        print(f"curriculum: {ordering}: exact-match {rows[-1]['exact_match']}, {cfg.target_exact_match}% reached "
              f"at step {reached}")
    return rows


def run(params: Params) -> dict:
    base = require(BASE, "config.json", "pretrain")
    train, val, test = splits()
    lengths = {row.get("digits") for row in train}
    test = [row for row in test if row.get("digits") in lengths]  # what the orderings taught: the training lengths
    tokenizer = load_tokenizer(base)
    rows = orderings(params, tokenizer, train, val, test)
    for row in rows:
        save_curves(f"curriculum/{row['ordering']}", row["curve"], {"exact_match": "exact_match"})
    metrics = {"rows_seen": params.curriculum.max_steps * params.curriculum.batch_size,
               "target_exact_match": params.curriculum.target_exact_match, "orderings": rows}
    if params.curriculum.seeds:
        runs = [rows] + [orderings(params.model_copy(update={"seed": seed}), tokenizer, train, val, test)
                         for seed in params.curriculum.seeds]
        # steps_to_target has no mean when an ordering never got there in some seed: its runs are listed
        reached = tuple(key for key in METRICS if all(r[key] is not None for run in runs for r in run))
        metrics |= {"seeds": [params.seed, *params.curriculum.seeds],
                    "spread": over_seeds(runs, "ordering", reached)}
    return metrics


def table(metrics: dict) -> tuple[list[str], list[list]]:
    """metrics/curriculum.json as a table: one row per ordering; with seeds, each cell is the mean ± sd."""
    header = ["ordering", "EM at the end %", f"steps to {metrics['target_exact_match']}% EM"]
    if "spread" in metrics:
        header[0] = f"ordering ({len(metrics['seeds'])} seeds)"
        return header, [[row["ordering"], *(cells(row, (key,))[0] if key in row else "–" for key in METRICS)]
                        for row in metrics["spread"]]
    return header, [[row["ordering"], *("–" if row[key] is None else row[key] for key in METRICS)]
                    for row in metrics["orderings"]]
