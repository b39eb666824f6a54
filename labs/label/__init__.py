"""label — human preference labelling: the pairs people judge, and the page they judge them on.

    just lab label        # the pairs: data/labels/pairs.jsonl (this stage)
    just label            # the page on http://127.0.0.1:8010: judge pairs; judgements go to data/labels/
    dvc exp run -S dpo.pairs=human dpo         # DPO on what people preferred (reward: reward.pairs=human)

The stage answers training prompts (the preference file's, in a seeded order) with the two models in
`label.models`, sampled at `temperature`: the same model twice gives two samples of it, the pairs RLHF labellers
compare. A prompt whose two answers are the same text is skipped: there is nothing to prefer. Each pair keeps
the checker's verdict (the task world knows the right answer), which the page never shows, so the summary can
say how often people agree with it; real preference data (the GPU tiers') has no answer to check, and with
`checker: false` only people judge. metrics/label.json: pairs built, prompts tried, identical answers skipped,
and the checker's verdicts (pairs where one answer is right and the other wrong are the ones that teach).

The page (labs/label/server.py) shows each labeller the pairs in this order, sides randomized per labeller and
recorded; judgements are appended to data/labels/judgements.jsonl (labs/core/judgements.py: the format).
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

from pydantic import Field, model_validator

from labs.core.config import SEED, ConfigError, Section, Seed, Tier, view
from labs.core.data import DataError, read_jsonl, write_jsonl
from labs.core.evaluation import MeasureParams, extract_answer, generate, is_correct


class LabelParams(Section):
    """The pairs of one labelling round: which models answer, how many pairs, how they sample."""

    # two samples of the SFT model: the on-policy pairs DPO and the reward model learn most from
    models: tuple[str, str] = ("sft", "sft")
    """the two directories under models/ that answer each prompt (the same one twice: two samples of it)"""
    pairs: int = Field(200, gt=0)  # one sitting for one labeller; metrics/label.json says how many have a right answer
    """pairs to build: prompts whose two answers differ"""
    prompts: int = Field(4000, gt=0)
    """training prompts tried at most, in a seeded order"""
    temperature: float | None = Field(1.0, gt=0)
    """sampling temperature of both answers; null: greedy (two different models only)"""
    checker: bool = True
    """keep the task world's verdict on each pair; false for real preference data, which has no answer to check"""

    @model_validator(mode="after")
    def _two_answers(self):
        if self.models[0] == self.models[1] and self.temperature is None:
            raise ValueError("one model twice gives one greedy answer: set a temperature")
        return self


Measurement = view(MeasureParams, "max_new_tokens", "batch_size", "precision")


class Params(Section):
    """What label reads from params.yaml."""

    seed: Seed = SEED
    tier: Tier = "cpu"
    label: LabelParams = LabelParams()
    evaluate: Measurement = Measurement()


PREPARED, MODELS, OUT = Path("data/prepared"), Path("models"), Path("data/labels/pairs.jsonl")


def checker_verdict(a: str, b: str, gold: str) -> str:
    """What the task world's answer checker would say: the right answer, tie (both right) or both_bad."""
    right = is_correct(a, gold), is_correct(b, gold)
    return {(True, False): "a", (False, True): "b", (True, True): "tie", (False, False): "both_bad"}[right]


def run(params: Params) -> dict:
    # imported here: the page (labs/label/server.py) imports this package, and transformers' models would
    # more than double its start
    from labs.core.models import load_model, load_tokenizer, require

    cfg, ev = params.label, params.evaluate
    paths = [require(MODELS / name, "config.json", name) for name in cfg.models]
    tokenizer = load_tokenizer(paths[0])
    models = [load_model(path, ev.precision) for path in paths]
    rows = read_jsonl(PREPARED / "preference_train.jsonl", "preference")
    order = random.Random(params.seed).sample(rows, min(cfg.prompts, len(rows)))
    golds = [extract_answer(row["chosen"]) if cfg.checker else None for row in order]
    if cfg.checker and None in golds:  # before sampling: a file without answers to check fails at once
        row = order[golds.index(None)]
        raise DataError(f"{PREPARED / 'preference_train.jsonl'}: chosen {row['chosen'][:60]!r} has no 'Answer:' for "
                        "the checker (real preference data has none: -S label.checker=false)")

    # answered a few batches at a time until enough pairs differ: a good model agrees with itself often
    pairs, tried, identical, chunk = [], 0, 0, 4 * ev.batch_size
    for start in range(0, len(order), chunk):
        batch, batch_golds = order[start:start + chunk], golds[start:start + chunk]
        answers = [generate(model, tokenizer, [r["prompt"] for r in batch], ev.max_new_tokens, ev.batch_size,
                            temperature=cfg.temperature, seed=params.seed + 2 * start + side)[0]
                   for side, model in enumerate(models)]
        for row, gold, a, b in zip(batch, batch_golds, *answers, strict=True):
            tried += 1
            if a == b:
                identical += 1
                continue
            pairs.append({"pair": f"p{len(pairs):04d}", "prompt": row["prompt"], "family": row.get("family", "all"),
                          "answers": [a, b], "models": list(cfg.models),
                          "checker": checker_verdict(a, b, gold) if cfg.checker else None})
            if len(pairs) == cfg.pairs:
                break
        if len(pairs) == cfg.pairs:
            break
    if not pairs:
        raise ConfigError(f"label: the two answers were the same for all {tried} prompts tried: raise "
                          "label.temperature or compare two different models")
    write_jsonl(OUT, pairs)
    metrics = {"models": list(cfg.models), "pairs": len(pairs), "prompts_tried": tried, "identical_answers": identical}
    line = f"label: {len(pairs)} pairs from {tried} prompts ({identical} gave one answer twice)"
    if not cfg.checker:
        print(f"{line}; no checker: only people judge them")
        return metrics | {"checker": None, "checker_decisive_pct": None}
    checker = Counter(p["checker"] for p in pairs)
    metrics |= {"checker": {v: checker[v] for v in ("a", "b", "tie", "both_bad")},
                "checker_decisive_pct": round(100 * (checker["a"] + checker["b"]) / len(pairs), 2)}
    print(f"{line}; the checker can tell {metrics['checker_decisive_pct']}% of them apart")
    return metrics
