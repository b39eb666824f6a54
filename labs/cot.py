"""cot — chain-of-thought supervision: the same long additions fine-tuned with and without worked steps.

    just lab cot
    dvc exp run -S cot.max_steps=1200
    dvc exp run -S 'data.arith.train_digits=[2,3]'     # then `just data`: a shorter training range

Two fine-tunings of the pretrained base on the same problems and the same number of steps:
  * steps        — the target is the column-by-column working with its carries, then "Answer: N";
  * answer only  — the target is "Answer: N".
Measured on held-out additions of every length in data.arith.test_digits, inside the training range and beyond
it: exact-match per length, the mean answer length in tokens and the milliseconds per answer (greedy, batched):
what the steps buy and what they cost at inference.

Real word problems fit the same files: `lab convert gsm8k` rows (prompt, answer, solution) in
data/raw/arith.jsonl and arith_test.jsonl; GSM8K's calculator notes ("<<48/2=24>>") are dropped from the steps.
"""

from __future__ import annotations

import time
from pathlib import Path

from pydantic import Field

from labs.core.arith import splits, target
from labs.core.chats import chat_trainer, train_chats
from labs.core.config import SEED, Section, Seed, Tier, TrainParams, view
from labs.core.evaluation import MeasureParams, exact_match, generate, percent
from labs.core.models import load_model, load_tokenizer, require
from labs.core.run import run_card, seed_everything
from labs.core.spread import cells, over_seeds


class CoTParams(TrainParams):
    """Fine-tuning on the long additions, once with the worked steps in the target and once without."""

    max_length: int = Field(192, gt=0)  # a 4-digit addition's chat with its working is under 120 tokens
    batch_size: int = Field(16, gt=0)
    max_steps: int = 600  # equal for both targets: the same compute, a different target
    lr: float = Field(2e-3, gt=0)  # sft's rate
    save_steps: int = Field(200, gt=0)  # validation runs at every checkpoint: three keep it cheap
    max_new_tokens: int = Field(160, gt=0)
    """tokens each held-out answer may have: a 6-digit working and its answer take about 130"""
    seeds: list[int] = []
    """more seeds to train both variants with: the table then shows each metric's mean and spread"""


Measurement = view(MeasureParams, "batch_size")


class Params(Section):
    """What cot reads from params.yaml."""

    seed: Seed = SEED
    tier: Tier = "cpu"
    cot: CoTParams = CoTParams()
    evaluate: Measurement = Measurement()


BASE = Path("models/pretrain")
METRICS = ("exact_match_in_range", "exact_match_beyond", "answer_tokens", "ms_per_answer")


def measure(params: Params, model, tokenizer, test: list[dict], lengths: set) -> dict:
    """Held-out exact-match per length, inside and beyond the training lengths; answer tokens and time."""
    started = time.perf_counter()
    completions, ended = generate(model, tokenizer, [row["prompt"] for row in test], params.cot.max_new_tokens,
                                  params.evaluate.batch_size)
    seconds = time.perf_counter() - started
    inside = [i for i, row in enumerate(test) if row.get("digits") in lengths or "digits" not in row]
    beyond = [i for i in range(len(test)) if i not in set(inside)]
    em = lambda rows: exact_match([test[i] for i in rows], [completions[i] for i in rows])["overall"]  # noqa: E731
    return {"exact_match": exact_match(test, completions),
            "exact_match_in_range": em(inside), "exact_match_beyond": em(beyond) if beyond else None,
            "answer_tokens": round(sum(len(tokenizer(c)["input_ids"]) for c in completions) / len(completions), 1),
            "ms_per_answer": round(1000 * seconds / len(test), 2), "eos_rate": percent(ended)}


def variants(params: Params, tokenizer, train: list[dict], val: list[dict], test: list[dict]) -> list[dict]:
    """Both targets from the pretrained base with `params.seed`, measured."""
    cfg, rows = params.cot, []
    lengths = {row.get("digits") for row in train}
    for name, steps in (("steps", True), ("answer only", False)):
        seed_everything(params.seed)
        model = load_model(BASE, cfg.precision, cfg.attn_implementation, training=True)
        lab = f"cot/{name.replace(' ', '-')}-seed-{params.seed}"
        trainer = chat_trainer(params, cfg, lab, model, tokenizer, [target(r, steps) for r in train],
                               [target(r, steps) for r in val], BASE)
        training = train_chats(trainer, run_card("cot", params, cfg) | {"target": name})
        row = {"target": name, "steps": training["steps"], "val_loss": training["val_loss"]}
        row |= measure(params, trainer.model, tokenizer, test, lengths)
        print(f"cot: {name}: exact-match {row['exact_match_in_range']} in the training range, "
              f"{row['exact_match_beyond']} beyond it; {row['answer_tokens']} tokens, {row['ms_per_answer']} ms "
              "per answer")
        rows.append(row)
    return rows


def run(params: Params) -> dict:
    base = require(BASE, "config.json", "pretrain")
    train, val, test = splits()
    tokenizer = load_tokenizer(base)
    rows = variants(params, tokenizer, train, val, test)
    metrics = {"train_lengths": sorted({r["digits"] for r in train if "digits" in r}), "variants": rows}
    if params.cot.seeds:
        runs = [rows] + [variants(params.model_copy(update={"seed": seed}), tokenizer, train, val, test)
                         for seed in params.cot.seeds]
        measured = tuple(key for key in METRICS if rows[0][key] is not None)  # no "beyond" without longer tests
        metrics |= {"seeds": [params.seed, *params.cot.seeds], "spread": over_seeds(runs, "target", measured)}
    return metrics


def table(metrics: dict) -> tuple[list[str], list[list]]:
    """metrics/cot.json as a table: one row per target; with seeds, each cell is the mean ± sd."""
    header = ["target", "EM in the training range %", "EM beyond it %", "answer tokens", "ms per answer"]
    if "spread" in metrics:
        header[0] = f"target ({len(metrics['seeds'])} seeds)"
        return header, [[row["target"], *(cells(row, (key,))[0] if key in row else "–" for key in METRICS)]
                        for row in metrics["spread"]]
    return header, [[row["target"], *("–" if row[key] is None else row[key] for key in METRICS)]
                    for row in metrics["variants"]]
