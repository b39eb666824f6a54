"""selfinstruct — a vanilla LM learns to follow instructions from a small seed set, then from tasks it writes and
answers itself: each round it writes new tasks, drops near-duplicates, keeps the answers a filter passes, and is
fine-tuned again on the seeds and everything kept (Self-Instruct, Wang et al. 2022).

    just lab selfinstruct
    dvc exp run -S selfinstruct.rouge_threshold=0.7

1. The seeds. `seeds_per_family` chats per family of world_sft_train (the task world's chats,
   whatever data.source): the only human-written data in the loop.
2. The seed-only model (round 0). The vanilla LM, `distill`'s pretrained student (fine-tunes 5x faster than the SFT
   model's base, so a round takes seconds), is fine-tuned on the seeds and on writing chats: "Write a new task like
   these:" and `demonstrations` pool tasks, answered with another pool task. The paper's GPT-3 writes tasks from
   an in-context prompt alone; a 157k-parameter LM does not, so the writing is taught with the answering.
3. A round. The last model writes `instructions` tasks (sampled at `temperature` from random pool demonstrations);
   exact repeats, held-out test prompts and near-duplicates (ROUGE-L F1 with any pool task above
   `rouge_threshold`, the paper's filter; its 0.7 would cap this world's pool near 300 tasks, so 0.85 drops tasks
   one word of seven apart) are dropped; the model answers the rest greedily, and a filter keeps the answers it
   passes:
   - `checker`: the task world's own answer to the written task (`reference`): malformed tasks and wrong answers
     go;
   - `self_consistency`: no checker, only the model: at least `agree` of `samples` answers sampled at
     `sample_temperature` give the greedy answer's final answer.
   The next model is fine-tuned from the vanilla LM on the seeds, everything kept so far and writing chats from
   that pool, for the same `max_steps`: every model has the same compute, so the data is the only difference.
4. Rounds 1..`rounds` per filter, all of it again per seed in `seeds` (new seeds drawn, new tasks written).

metrics/selfinstruct.json: per seed, filter and round, how many tasks were written, dropped (and why), answered and
kept, the share of kept answers the checker calls right, the pool size and held-out exact-match; per filter and
round the mean and sd over seeds and the gain over the seed-only model.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field
from rouge_score.tokenizers import DefaultTokenizer

from labs.core.chats import chat_trainer, train_chats
from labs.core.config import SEED, Section, Seed, Tier, TrainParams, view
from labs.core.data import DataError, read_jsonl, write_jsonl
from labs.core.evaluation import MeasureParams, exact_match, extract_answer, generate, is_correct, percent
from labs.core.models import load_model, load_tokenizer, require
from labs.core.run import atomic_path, run_card, save_curves, save_model, seed_everything
from labs.core.spread import over_seeds
from labs.core.train import held_out_answers

FAMILIES = ("add", "compare", "sort", "reverse")


class SelfInstructParams(TrainParams):
    """The seed set, the rounds of writing and filtering, and the fine-tune every model gets."""

    seeds_per_family: int = Field(250, gt=0)
    """seed chats per family, drawn from world_sft_train (the loop's only human-written data)"""
    writing_chats: int = Field(400, ge=0)
    """chats per fine-tune that teach writing a task from `demonstrations` pool tasks"""
    demonstrations: int = Field(3, gt=0)
    """pool tasks shown in a writing prompt (the paper shows 8; these prompts stay under max_length)"""
    instructions: int = Field(1500, gt=0)
    """tasks the model writes per round"""
    temperature: float = Field(1.0, gt=0)  # the model's own distribution: varied tasks
    """sampling temperature of the written tasks"""
    rouge_threshold: float = Field(0.85, gt=0, le=1)
    """a written task whose ROUGE-L F1 with any pool task is above this is a near-duplicate (the paper: 0.7)"""
    filters: list[Literal["checker", "self_consistency"]] = Field(["checker", "self_consistency"], min_length=1)
    """what keeps an answer: the task world's reference, or the model's agreement with its own samples"""
    samples: int = Field(4, gt=0)
    """answers sampled per written task for self_consistency"""
    agree: int = Field(3, gt=0)
    """samples that must give the greedy answer's final answer for self_consistency to keep it"""
    sample_temperature: float = Field(0.7, gt=0)
    """sampling temperature of those answers"""
    rounds: int = Field(2, gt=0)
    """rounds of writing, filtering and fine-tuning per filter"""
    seeds: list[int] = Field([1337, 1, 2], min_length=1)
    """one run of the whole loop per seed: the spread of the gains"""
    max_steps: int = 1000  # the same for every model: a round adds data, not compute
    max_length: int = Field(128, gt=0)  # a writing prompt with three tasks is under 60 tokens
    batch_size: int = Field(16, gt=0)
    lr: float = Field(2e-3, gt=0)  # sft's
    warmup_steps: int = Field(10, ge=0)
    save_steps: int = Field(250, gt=0)  # a fine-tune takes seconds: fewer checkpoints than sft's
    logging_steps: int = Field(50, gt=0)


Measurement = view(MeasureParams, "max_new_tokens", "batch_size")


class Params(Section):
    """What selfinstruct reads from params.yaml."""

    seed: Seed = SEED
    tier: Tier = "cpu"
    selfinstruct: SelfInstructParams = SelfInstructParams()
    evaluate: Measurement = Measurement()


PREPARED, BASE, OUT = Path("data/prepared"), Path("models/distill/pretrained"), Path("models/selfinstruct")
WRITE = "Write a new task like these:\n{}"
WRITTEN_TOKENS = 24  # the longest task prompt (a reversal) is 12 tokens


def reference(task: str) -> str | None:
    """The task world's answer to a task prompt of one of its families (labs/data.py writes them), or None for a
    prompt no family writes: the checker of tasks nobody labelled."""
    if m := re.fullmatch(r"What is (\d+) \+ (\d+)\?", task):
        return str(int(m[1]) + int(m[2]))
    if (m := re.fullmatch(r"Which is larger: (\d+) or (\d+)\?", task)) and m[1] != m[2]:
        return str(max(int(m[1]), int(m[2])))
    if m := re.fullmatch(r"Sort ascending: (\d(?: \d)*)", task):
        return " ".join(sorted(m[1].split()))
    if m := re.fullmatch(r"Reverse the letters: ([a-z](?: [a-z])*)", task):
        return " ".join(m[1].split()[::-1])
    return None


TOKENIZE = DefaultTokenizer().tokenize  # rouge-score's own: lowercased words, punctuation dropped


def _rouge_l_to_all(task: list[int], ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """ROUGE-L F1 of one text (word ids) against every row of `ids` (word ids, 0-padded), the LCS table filled for
    all rows at once: rouge-score compares one pair per call, and the pool grows to thousands of tasks a round."""
    previous = np.zeros((len(ids), ids.shape[1] + 1), dtype=np.int32)
    for word in task:
        row = np.zeros_like(previous)
        match = ids == word
        for j in range(ids.shape[1]):
            row[:, j + 1] = np.where(match[:, j], previous[:, j] + 1, np.maximum(previous[:, j + 1], row[:, j]))
        previous = row
    total = lengths + len(task)
    return np.where(total > 0, 2 * previous[:, -1] / np.maximum(total, 1), 0.0)


def new_tasks(written: list[str], pool: list[str], held_out: set[str], threshold: float) -> tuple[list[str], dict]:
    """The written tasks that are new: not a repeat, not a held-out test prompt, not a near-duplicate of a pool task
    or of one kept before it (ROUGE-L F1 above `threshold`); with how many each rule dropped."""
    written = [task.strip() for task in written]
    words = {task: TOKENIZE(task) for task in [*pool, *written]}
    vocab = {word: i + 1 for i, word in enumerate(sorted({w for ws in words.values() for w in ws}))}
    ids = np.zeros((len(pool) + len(written), max(map(len, words.values()), default=0) or 1), dtype=np.int32)
    lengths = np.zeros(len(ids), dtype=np.int32)
    seen, kept, size = set(), [], 0

    def add(task: str) -> None:
        nonlocal size
        ids[size, :len(words[task])] = [vocab[w] for w in words[task]]
        lengths[size] = len(words[task])
        seen.add(task)
        size += 1

    for task in pool:
        add(task)
    dropped = {"repeat": 0, "held_out": 0, "near_duplicate": 0}
    for task in written:
        if task in held_out:
            dropped["held_out"] += 1
        elif task in seen or not words[task]:
            dropped["repeat"] += 1
        elif (_rouge_l_to_all([vocab[w] for w in words[task]], ids[:size], lengths[:size]) > threshold).any():
            dropped["near_duplicate"] += 1
        else:
            add(task)
            kept.append(task)
    return kept, dropped


def writing_chats(pool: list[str], count: int, demonstrations: int, rng: random.Random) -> list[dict]:
    """Chats that teach writing a task: `demonstrations` pool tasks in the prompt, another as the answer."""
    rows = []
    for _ in range(count):
        *shown, target = rng.sample(pool, demonstrations + 1)
        rows.append({"prompt": WRITE.format("\n".join(shown)), "completion": target})
    return rows


def seed_tasks(params: Params, seed: int) -> list[dict]:
    rows = read_jsonl(PREPARED / "world_sft_train.jsonl", "sft")
    rng, cfg = random.Random(f"{seed}:selfinstruct:seeds"), params.selfinstruct
    chosen, families = [], [f for f in FAMILIES if any(r.get("family") == f for r in rows)]
    if not families:
        raise DataError(f"{PREPARED / 'world_sft_train.jsonl'}: no rows of the families {', '.join(FAMILIES)}")
    for family in families:
        mine = [r for r in rows if r.get("family") == family]
        if len(mine) < cfg.seeds_per_family:
            raise DataError(f"{PREPARED / 'world_sft_train.jsonl'}: {len(mine)} {family} rows, fewer than "
                            f"selfinstruct.seeds_per_family = {cfg.seeds_per_family}")
        chosen += [{"prompt": r["prompt"], "completion": r["completion"]}
                   for r in rng.sample(mine, cfg.seeds_per_family)]
    return chosen


def fine_tune(params: Params, seed: int, name: str, rows: list[dict], tokenizer, val: list[dict]):
    """The vanilla LM fine-tuned on `rows` plus writing chats from their tasks: the model, its run card and its
    training stats."""
    cfg = params.selfinstruct
    run_params = params.model_copy(update={"seed": seed})
    pool = [r["prompt"] for r in rows]
    train = rows + writing_chats(pool, cfg.writing_chats, cfg.demonstrations,
                                 random.Random(f"{seed}:selfinstruct:{name}:writing"))
    seed_everything(seed)
    model = load_model(BASE, cfg.precision, cfg.attn_implementation, training=True)
    trainer = chat_trainer(run_params, cfg, f"selfinstruct/{name}-{seed}", model, tokenizer, train, val, BASE)
    card = run_card("selfinstruct", run_params, cfg) | {"model": name}
    stats = train_chats(trainer, card)
    if seed == cfg.seeds[0]:
        save_curves(f"selfinstruct/{name}", trainer.state.log_history)
    return trainer.model.eval(), card, stats


def keep(model, tokenizer, params: Params, tasks: list[str], answers: list[str], how: str, seed: int) -> list[bool]:
    """Which answers `how` keeps: the checker's verdict, or the model's agreement with its own samples."""
    cfg, ev = params.selfinstruct, params.evaluate
    if how == "checker":
        return [(ref := reference(t)) is not None and is_correct(a, ref) for t, a in zip(tasks, answers, strict=True)]
    repeated = [t for t in tasks for _ in range(cfg.samples)]
    sampled, _ = generate(model, tokenizer, repeated, ev.max_new_tokens, ev.batch_size,
                          temperature=cfg.sample_temperature, seed=seed)
    finals = [extract_answer(s) for s in sampled]
    return [(mine := extract_answer(a)) is not None and finals[i * cfg.samples:(i + 1) * cfg.samples].count(mine)
            >= cfg.agree for i, a in enumerate(answers)]


def held_out_em(model, tokenizer, params: Params) -> float:
    return exact_match(*held_out_answers(model, tokenizer, params, "world_sft_test"))["overall"]


def loop(params: Params, seed: int, tokenizer, val: list[dict], held_out: set[str], out: Path | None) -> list[dict]:
    """One seed's seed-only model and its rounds per filter: a row per model (saved to `out` on the first seed)."""
    cfg, ev = params.selfinstruct, params.evaluate
    seeds = seed_tasks(params, seed)
    first, card, stats = fine_tune(params, seed, "seed_only", seeds, tokenizer, val)
    rows = [{"model": "seed_only", "filter": "none", "round": 0, "kept": 0, "pool": len(seeds),
             "exact_match": held_out_em(first, tokenizer, params), "val_loss": stats["val_loss"]}]
    if out:
        save_model(first, tokenizer, out / "seed_only", card)
        write_jsonl(out / "seed_only" / "tasks.jsonl", seeds)
    for how in cfg.filters:
        model, kept = first, []
        for step in range(1, cfg.rounds + 1):
            pool = [r["prompt"] for r in seeds + kept]
            rng = random.Random(f"{seed}:selfinstruct:{how}:{step}")
            asks = [WRITE.format("\n".join(rng.sample(pool, cfg.demonstrations))) for _ in range(cfg.instructions)]
            written, _ = generate(model, tokenizer, asks, WRITTEN_TOKENS, ev.batch_size, temperature=cfg.temperature,
                                  seed=seed + step)
            tasks, dropped = new_tasks(written, pool, held_out, cfg.rouge_threshold)
            answers, _ = generate(model, tokenizer, tasks, ev.max_new_tokens, ev.batch_size)
            passed = keep(model, tokenizer, params, tasks, answers, how, seed + step)
            new = [{"prompt": t, "completion": a} for t, a, ok in zip(tasks, answers, passed, strict=True) if ok]
            kept += new
            # how clean the kept answers are, by the checker that only measures here (None: nothing kept)
            right = percent([(ref := reference(r["prompt"])) is not None and is_correct(r["completion"], ref)
                             for r in new]) if new else None
            name = f"{how}-{step}"
            model, card, stats = fine_tune(params, seed, name, seeds + kept, tokenizer, val)
            rows.append({"model": name, "filter": how, "round": step, "written": len(written), "dropped": dropped,
                         "answered": len(tasks), "kept": len(new), "kept_right": right,
                         "well_formed": percent([reference(t) is not None for t in tasks]),
                         "pool": len(seeds) + len(kept), "exact_match": held_out_em(model, tokenizer, params),
                         "val_loss": stats["val_loss"]})
            print(f"selfinstruct: seed {seed}, {name}: wrote {len(written)}, dropped {dropped}, kept {len(new)} of "
                  f"{len(tasks)} (right: {rows[-1]['kept_right']}%); exact-match {rows[-1]['exact_match']}")
        if out:
            save_model(model, tokenizer, out / how, card)
            write_jsonl(out / how / "tasks.jsonl", seeds + kept)
    return rows


def run(params: Params) -> dict:
    cfg = params.selfinstruct
    require(BASE, "config.json", "distill")
    if cfg.agree > cfg.samples:
        raise DataError(f"params.yaml: selfinstruct.agree = {cfg.agree} is more than selfinstruct.samples = "
                        f"{cfg.samples}: self_consistency would keep nothing")
    tokenizer = load_tokenizer(BASE)
    val = [{"prompt": r["prompt"], "completion": r["completion"]}
           for r in read_jsonl(PREPARED / "world_sft_val.jsonl", "sft") if r.get("family") in FAMILIES]
    held_out = {r["prompt"] for r in read_jsonl(PREPARED / "world_sft_test.jsonl", "sft")}
    runs = []
    with atomic_path(OUT) as tmp:
        for seed in cfg.seeds:
            runs.append(loop(params, seed, tokenizer, val, held_out, tmp if seed == cfg.seeds[0] else None))
    spread = over_seeds(runs, "model", ("exact_match", "kept", "pool"))
    baseline = spread[0]["exact_match"]["mean"]
    for i, row in enumerate(spread):
        by_seed = [rows[i] for rows in runs]
        row |= {"filter": by_seed[0]["filter"], "round": by_seed[0]["round"],
                "gain": round(row["exact_match"]["mean"] - baseline, 2)}
        measured = [r["kept_right"] for r in by_seed if r.get("kept_right") is not None]
        if measured:  # over the seeds that kept something
            row["kept_right"] = round(sum(measured) / len(measured), 2)
    return {"base_model": str(BASE), "seeds_per_family": cfg.seeds_per_family, "steps": cfg.max_steps,
            "rouge_threshold": cfg.rouge_threshold, "seeds": cfg.seeds, "runs": runs, "rows": spread}


def table(metrics: dict) -> tuple[list[str], list[list]]:
    """metrics/selfinstruct.json as a table: per filter and round, the tasks written, left after the repeat and
    near-duplicate filters, kept by the filter (means over seeds), and held-out exact-match with its gain over the
    seed-only model."""
    n = len(metrics["seeds"])
    names = {"none": "seeds only", "checker": "checker", "self_consistency": "self-consistency"}

    def mean(i: int, key: str):
        values = [run[i][key] for run in metrics["runs"] if key in run[i]]
        if not values:
            return "–"
        average = round(sum(values) / len(values), 1)
        return int(average) if average == int(average) else average

    return (["filter", "round", "written", "new", "kept", "kept answers right %", "pool", f"EM % ({n} seeds)",
             "gain (points)"],
            [[names[r["filter"]], r["round"], mean(i, "written"), mean(i, "answered"), mean(i, "kept"),
              r.get("kept_right", "–"), mean(i, "pool"),
              f"{r['exact_match']['mean']:.2f} ± {r['exact_match']['sd']:.2f}", r["gain"]]
             for i, r in enumerate(metrics["rows"])])
