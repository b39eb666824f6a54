"""speculative — assisted generation: a small draft proposes tokens, the SFT model checks them in one forward.

    just lab speculative
    dvc exp run -S 'speculative.draft_tokens=[3]' -S speculative.schedule=heuristic

The draft is the distilled student (`distill`: same tokenizer, 7x fewer parameters). Measured against plain
decoding of the same prompts, one prompt at a time (assisted generation works on batch 1), in interleaved
rounds so machine load hits every variant alike:
  * greedy: plain vs assisted with `draft_tokens` proposals per target forward, and prompt lookup decoding
    (candidates copied from the prompt: no draft model). Greedy outputs must be identical to plain greedy:
    `identical_pct` checks it token for token,
  * sampling at `temperature`: plain vs assisted with the largest `draft_tokens` value (speculative sampling
    keeps the target's distribution, not its exact samples, so only speed is compared).
Acceptance rate = accepted / proposed draft tokens, and tokens per target forward, are counted by wrapping
the candidate generator's `update_candidate_strategy` (transformers exposes no such statistic;
shared/facts.md): it sees every verification step, with the proposals' logits and the number that matched.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import torch
from transformers.generation import candidate_generator

from labs.core.config import Params
from labs.core.data import read_jsonl
from labs.core.models import count_parameters, load_model, load_tokenizer, require

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


def configure_draft(draft, tokens: int, schedule: str) -> None:
    config = draft.generation_config
    config.num_assistant_tokens, config.num_assistant_tokens_schedule = tokens, schedule
    # constant means exactly `tokens` proposals: no early stop on the draft's own confidence (default 0.4)
    config.assistant_confidence_threshold = 0.0 if schedule == "constant" else 0.4


@torch.no_grad()
def decode_all(target, tokenizer, prompts: list[str], params: Params, seed: int,
               **knobs) -> tuple[list[list[int]], float]:
    """Each prompt decoded alone (batch 1, EOS stops it); the new tokens and the wall seconds of all of them."""
    cfg = params.speculative
    outputs, seconds = [], 0.0
    for i, prompt in enumerate(prompts):
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
        batch = tokenizer(text, return_tensors="pt", add_special_tokens=False).to(target.device)
        torch.manual_seed(seed + i)
        started = time.perf_counter()
        ids = target.generate(**batch, max_new_tokens=cfg.max_new_tokens, eos_token_id=tokenizer.eos_token_id,
                              pad_token_id=tokenizer.pad_token_id, **knobs)
        seconds += time.perf_counter() - started
        outputs.append(ids[0, batch["input_ids"].shape[1]:].tolist())
    return outputs, seconds


def run(params: Params) -> dict:
    cfg = params.speculative
    target_path = require(MODELS / cfg.target, "config.json", cfg.target)
    draft_path = require(MODELS / cfg.draft, "config.json", "distill")
    tokenizer = load_tokenizer(target_path)
    target = load_model(target_path, params.evaluate.precision).eval()
    draft = load_model(draft_path, params.evaluate.precision).eval()
    prompts = [r["prompt"] for r in read_jsonl(PREPARED / "sft_test.jsonl", "sft")][:cfg.prompts]

    greedy = {"do_sample": False}
    sampled = {"do_sample": True, "temperature": cfg.temperature, "top_k": 0, "top_p": 1.0}
    variants: dict[str, tuple[dict, int | None]] = {"greedy": (greedy, None)}
    variants |= {f"assisted_{k}": (greedy | {"assistant_model": draft}, k) for k in cfg.draft_tokens}
    variants["prompt_lookup"] = (greedy | {"prompt_lookup_num_tokens": cfg.prompt_lookup_tokens}, None)
    variants["sampling"] = (sampled, None)
    # the most proposals: each draft call has a fixed cost that few tokens do not repay (greedy: 2 1.05x, 8 1.75x)
    most = max(cfg.draft_tokens)
    variants[f"sampling_assisted_{most}"] = (sampled | {"assistant_model": draft}, most)

    best: dict[str, dict] = {}
    for _ in range(cfg.rounds):  # interleaved: every variant once per round; each keeps its fastest round
        for name, (knobs, draft_tokens) in variants.items():
            if draft_tokens is not None:
                configure_draft(draft, draft_tokens, cfg.schedule)
            with counting_verifications() as counts:
                outputs, seconds = decode_all(target, tokenizer, prompts, params, params.seed, **knobs)
            tokens = sum(map(len, outputs))
            if name not in best or seconds < best[name]["seconds"]:
                best[name] = {"outputs": outputs, "seconds": seconds, "tokens": tokens, **counts}

    rows = []
    for name, run_ in best.items():
        baseline = best["sampling" if name.startswith("sampling") else "greedy"]
        row = {
            "name": name,
            "tokens": run_["tokens"],
            "tokens_per_s": round(run_["tokens"] / run_["seconds"], 1),
            "speedup": round(baseline["seconds"] / run_["seconds"] * run_["tokens"] / baseline["tokens"], 3),
            "acceptance_pct": round(100 * run_["accepted"] / run_["proposed"], 2) if run_["proposed"] else None,
            # every verification step is one target forward (the first one also reads the prompt)
            "tokens_per_target_forward": round(run_["tokens"] / run_["steps"], 3) if run_["steps"] else None,
        }
        if not name.startswith("sampling"):
            row["identical_pct"] = round(100 * sum(a == b for a, b in zip(run_["outputs"], best["greedy"]["outputs"],
                                                                          strict=True)) / len(prompts), 2)
        rows.append(row)
        print(f"speculative: {name}: {row['tokens_per_s']} tok/s, speedup {row['speedup']}x, acceptance "
              f"{row['acceptance_pct']}%, identical {row.get('identical_pct')}%")
    assisted = [r for r in rows if r["name"].startswith("assisted_")]
    fastest = max(assisted, key=lambda r: r["speedup"])
    return {
        "target": cfg.target, "draft": cfg.draft, "schedule": cfg.schedule, "prompts": len(prompts),
        "target_parameters": count_parameters(target), "draft_parameters": count_parameters(draft),
        "variants": rows,  # a list: metrics files sort keys, and the table reads in this order
        "best_assisted": {"name": fastest["name"], "speedup": fastest["speedup"],
                          "acceptance_pct": fastest["acceptance_pct"], "identical_pct": fastest["identical_pct"]},
    }
