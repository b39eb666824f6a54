"""speculative — assisted generation: a small draft proposes tokens, the SFT model checks them in one forward.

    just lab speculative
    dvc exp run -S 'speculative.draft_tokens=[3]' -S speculative.schedule=heuristic

The draft is the distilled student (`distill`: same tokenizer, 14x fewer parameters). Measured against plain
decoding of the same prompts, one prompt at a time (assisted generation works on batch 1). Every variant
decodes a prompt back to back with the others, in an order that flips from prompt to prompt, for `rounds`
passes over the prompts; a variant's tokens/s are its tokens over its seconds in all of them. A shared
machine's speed drifts within a run, and timing the variants side by side on each prompt keeps that drift out of
their ratios (whole passes of one variant after another do not: docs/decisions.md):
  * greedy: plain vs assisted with `draft_tokens` proposals per target forward, and prompt lookup decoding
    (candidates copied from the prompt: no draft model). Greedy outputs must be identical to plain greedy:
    `identical_pct` checks it token for token,
  * sampling at `temperature`: plain vs assisted with the largest `draft_tokens` value (speculative sampling
    keeps the target's distribution, not its exact samples, so only speed is compared).
Acceptance rate = accepted / proposed draft tokens, and tokens per target forward, are counted by wrapping
the candidate generator's `update_candidate_strategy` (transformers exposes no such
statistic): it sees every verification step, with the proposals' logits and the number that matched.
Hooks around each model's forward count and time the forwards, so the metrics show where the time goes: how
many target and draft forwards a prompt took, and what one of each cost.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Annotated, Literal

import torch
from pydantic import Field
from transformers.generation import candidate_generator

from labs.core.config import SEED, Section, Seed, view
from labs.core.data import chat_prompt, read_jsonl
from labs.core.evaluation import MeasureParams
from labs.core.models import count_parameters, load_model, load_tokenizer, require


class SpeculativeParams(Section):
    """Assisted generation with a draft model, and prompt lookup decoding, against plain decoding."""

    target: str = "sft"  # directories under models/
    """directory under models/ whose answers are sped up"""
    draft: str = "distill/student"  # same tokenizer, several times smaller
    """directory under models/ that proposes tokens (same tokenizer, smaller)"""
    draft_tokens: list[Annotated[int, Field(gt=0)]] = [4, 8, 16]
    """tokens the draft proposes per target forward"""
    # constant: exactly draft_tokens each time; heuristic: transformers grows / shrinks it with acceptance
    schedule: Literal["constant", "heuristic"] = "constant"
    """constant: draft_tokens each time | heuristic: adapted to the acceptance"""
    prompt_lookup_tokens: int = Field(10, gt=0)
    """prompt lookup decoding: tokens copied from the prompt per proposal"""
    temperature: float = Field(0.7, gt=0)  # the sampled comparison
    """sampling temperature of the sampled comparison"""
    prompts: int = Field(64, gt=0)
    """held-out prompts each variant answers"""
    max_new_tokens: int = Field(48, gt=0)
    """tokens each answer may have"""
    rounds: int = Field(3, gt=0)
    """interleaved timing rounds; each variant keeps its best"""


# the keys of the evaluate section this lab's held-out measurements use
Measurement = view(MeasureParams, "precision")


class Params(Section):
    """What speculative reads from params.yaml."""

    seed: Seed = SEED
    speculative: SpeculativeParams = SpeculativeParams()
    evaluate: Measurement = Measurement()


PREPARED, MODELS = Path("data/prepared"), Path("models")


@contextlib.contextmanager
def counting_verifications():
    """Counts, for every verification step of assisted generation: the proposals and how many were accepted."""
    counts = {"steps": 0, "proposed": 0, "accepted": 0}
    classes = [candidate_generator.AssistedCandidateGenerator, candidate_generator.PromptLookupCandidateGenerator]
    originals = {cls: cls.__dict__.get("update_candidate_strategy") for cls in classes}

    def wrap(original):
        def update_candidate_strategy(self, input_ids, scores, num_matches):
            counts["steps"] += 1
            counts["proposed"] += scores.shape[1] - 1  # the target's logits cover the proposals and one more
            counts["accepted"] += int(num_matches)
            return original(self, input_ids, scores, num_matches)
        return update_candidate_strategy

    for cls in classes:
        cls.update_candidate_strategy = wrap(cls.update_candidate_strategy)
    try:
        yield counts
    finally:
        for cls, original in originals.items():
            if original is None:
                del cls.update_candidate_strategy
            else:
                cls.update_candidate_strategy = original


@contextlib.contextmanager
def timing_forwards(**models):
    """Calls and wall seconds of each model's forward passes (module hooks around the whole model): what a
    draft token costs next to a target forward, the number that bounds the speedup."""
    spent = {name: {"calls": 0, "seconds": 0.0} for name in models}
    handles = []
    for name, model in models.items():
        started: list[float] = []

        def before(module, args, started=started):
            started.append(time.perf_counter())

        def after(module, args, output, name=name, started=started):
            spent[name]["seconds"] += time.perf_counter() - started.pop()
            spent[name]["calls"] += 1

        handles += [model.register_forward_pre_hook(before), model.register_forward_hook(after)]
    try:
        yield spent
    finally:
        for handle in handles:
            handle.remove()


def configure_draft(draft, tokens: int, schedule: str) -> None:
    config = draft.generation_config
    config.num_assistant_tokens, config.num_assistant_tokens_schedule = tokens, schedule
    # constant means exactly `tokens` proposals: no early stop on the draft's own confidence (default 0.4)
    config.assistant_confidence_threshold = 0.0 if schedule == "constant" else 0.4


@torch.no_grad()
def decode_one(target, tokenizer, batch, max_new_tokens: int, seed: int, **knobs) -> tuple[list[int], float]:
    """One prompt decoded alone (batch 1, EOS stops it): the new tokens and the wall seconds."""
    torch.manual_seed(seed)
    started = time.perf_counter()
    ids = target.generate(**batch, max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_token_id,
                          pad_token_id=tokenizer.pad_token_id, **knobs)
    return ids[0, batch["input_ids"].shape[1]:].tolist(), time.perf_counter() - started


def decoding_variants(cfg: SpeculativeParams, draft) -> dict[str, tuple[dict, int | None]]:
    """name -> (generate knobs, draft tokens per call or None): plain, assisted at each draft length, prompt
    lookup, and the sampled pair."""
    greedy = {"do_sample": False}
    sampled = {"do_sample": True, "temperature": cfg.temperature, "top_k": 0, "top_p": 1.0}
    variants: dict[str, tuple[dict, int | None]] = {"greedy": (greedy, None)}
    variants |= {f"assisted_{k}": (greedy | {"assistant_model": draft}, k) for k in cfg.draft_tokens}
    variants["prompt_lookup"] = (greedy | {"prompt_lookup_num_tokens": cfg.prompt_lookup_tokens}, None)
    variants["sampling"] = (sampled, None)
    # the most proposals: each draft call has a fixed cost that few tokens repay least (4 drafted is the slowest)
    most = max(cfg.draft_tokens)
    variants[f"sampling_assisted_{most}"] = (sampled | {"assistant_model": draft}, most)
    return variants


def measure(params: Params, target, draft, tokenizer, batches: list, variants: dict) -> tuple[dict, dict]:
    """Every variant on every prompt, `rounds` times, alternating the order: each variant's summed time, tokens
    and counts, and its first round's outputs."""
    cfg = params.speculative

    def decode(name: str, i: int) -> tuple[list[int], float, dict]:
        knobs, draft_tokens = variants[name]
        if draft_tokens is not None:
            configure_draft(draft, draft_tokens, cfg.schedule)
        with counting_verifications() as counts, timing_forwards(target=target, draft=draft) as forwards:
            ids, seconds = decode_one(target, tokenizer, batches[i], cfg.max_new_tokens, params.seed + i, **knobs)
        for model, spent in forwards.items():
            counts[f"{model}_forwards"], counts[f"{model}_forward_s"] = spent["calls"], spent["seconds"]
        return ids, seconds, counts

    for name in variants:  # first calls set up what later ones reuse: untimed
        decode(name, 0)
    totals = {name: {"seconds": 0.0, "tokens": 0, "steps": 0, "proposed": 0, "accepted": 0, "target_forwards": 0,
                     "target_forward_s": 0.0, "draft_forwards": 0, "draft_forward_s": 0.0} for name in variants}
    outputs: dict[str, list[list[int]]] = {name: [] for name in variants}
    for round_ in range(cfg.rounds):
        for i in range(len(batches)):
            order = list(variants) if (round_ + i) % 2 == 0 else list(reversed(variants))
            for name in order:
                ids, seconds, counts = decode(name, i)
                total = totals[name]
                total["seconds"] += seconds
                total["tokens"] += len(ids)
                for key, count in counts.items():
                    total[key] += count
                if round_ == 0:
                    outputs[name].append(ids)
    return totals, outputs


def variant_row(name: str, totals: dict, outputs: dict, decoded: int) -> dict:
    """One variant's line of the table: speed against its plain counterpart, acceptance, forwards."""
    total = totals[name]
    baseline = totals["sampling" if name.startswith("sampling") else "greedy"]
    row = {
        "name": name,
        "tokens": total["tokens"],
        "tokens_per_s": round(total["tokens"] / total["seconds"], 1),
        "speedup": round(baseline["seconds"] / total["seconds"] * total["tokens"] / baseline["tokens"], 3),
        "acceptance_pct": round(100 * total["accepted"] / total["proposed"], 2) if total["proposed"] else None,
        # every verification step is one target forward (the first one also reads the prompt)
        "tokens_per_target_forward": round(total["tokens"] / total["steps"], 3) if total["steps"] else None,
    }
    # where the time goes: forwards per prompt and milliseconds per forward (a first one reads the prompt)
    for model in ("target", "draft"):
        calls = total[f"{model}_forwards"]
        row[f"{model}_forwards_per_prompt"] = round(calls / decoded, 2)
        row[f"{model}_ms_per_forward"] = round(1000 * total[f"{model}_forward_s"] / calls, 3) if calls else None
    if not name.startswith("sampling"):
        same = sum(a == b for a, b in zip(outputs[name], outputs["greedy"], strict=True))
        row["identical_pct"] = round(100 * same / len(outputs["greedy"]), 2)
    return row


def run(params: Params) -> dict:
    cfg = params.speculative
    target_path = require(MODELS / cfg.target, "config.json", cfg.target)
    draft_path = require(MODELS / cfg.draft, "config.json", "distill")
    tokenizer = load_tokenizer(target_path)
    target = load_model(target_path, params.evaluate.precision).eval()
    draft = load_model(draft_path, params.evaluate.precision).eval()
    prompts = [r["prompt"] for r in read_jsonl(PREPARED / "sft_test.jsonl", "sft")][:cfg.prompts]
    batches = [tokenizer(chat_prompt(tokenizer, prompt), return_tensors="pt", add_special_tokens=False)
               .to(target.device) for prompt in prompts]

    totals, outputs = measure(params, target, draft, tokenizer, batches, decoding_variants(cfg, draft))
    rows = [variant_row(name, totals, outputs, cfg.rounds * len(prompts)) for name in totals]
    for row in rows:
        print(f"speculative: {row['name']}: {row['tokens_per_s']} tok/s, speedup {row['speedup']}x, acceptance "
              f"{row['acceptance_pct']}%, identical {row.get('identical_pct')}%")
    assisted = [r for r in rows if r["name"].startswith("assisted_")]
    fastest = max(assisted, key=lambda r: r["speedup"])
    plain = next(r for r in rows if r["name"] == "greedy")
    # a draft forward as a share of a plain-greedy target forward: the smaller it is, the more drafting can pay.
    # At this size each layer's per-operation overhead sets both forwards, so the share follows the layer counts
    draft_cost = round(fastest["draft_ms_per_forward"] / plain["target_ms_per_forward"], 3)
    print(f"speculative: a draft forward costs {draft_cost} of a target forward "
          f"({fastest['draft_ms_per_forward']} vs {plain['target_ms_per_forward']} ms)")
    return {
        "target": cfg.target, "draft": cfg.draft, "schedule": cfg.schedule, "prompts": len(prompts),
        "rounds": cfg.rounds,
        "target_parameters": count_parameters(target), "draft_parameters": count_parameters(draft),
        "variants": rows,  # a list: metrics files sort keys, and the table reads in this order
        "best_assisted": {"name": fastest["name"], "speedup": fastest["speedup"],
                          "acceptance_pct": fastest["acceptance_pct"], "identical_pct": fastest["identical_pct"],
                          "draft_forward_cost_vs_target": draft_cost},
    }
