"""decode — one model, many decoding strategies: the quality / diversity trade-off, measured.

    just lab decode
    dvc exp run -S 'decode.strategies={greedy: {}, hot: {do_sample: true, temperature: 2.0}}'

Every strategy in `decode.strategies` answers the same held-out prompts from the SFT model:
  * greedy, temperature sampling, top-k, nucleus (top-p), min-p, beam search, repetition penalty —
    transformers `generate` arguments, nothing else,
  * contrastive decoding (Li et al. 2023): the expert's log-probability minus the amateur's (the model
    before SFT), over the tokens the expert finds plausible. Written here as a LogitsProcessor:
    transformers 5 moved its contrastive strategies to hub `custom_generate` repos, which cannot load
    offline, and those implement contrastive *search*, a different method,
  * best-of-N: N sampled answers, the reward model keeps its favourite,
  * reward-weighted sampling: N sampled answers, one kept at random with probability softmax(reward / beta).
Per strategy: exact-match; answer diversity (the first `diversity_prompts` answered `diversity_runs` times
with fresh seeds: the share of re-runs that gave an answer not seen before for that prompt, 0 for a
deterministic strategy); distinct-1/2 (unique word n-grams / all word n-grams over all answers); repetition
(repeated word 3-grams within an answer); the reward model's mean score; and tokens/s (tokens of the answers
returned per second of wall time, re-ranking included). Sampling is seeded per strategy.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field
from transformers import LogitsProcessor, LogitsProcessorList

from labs.core.config import SEED, ConfigError, Section, Seed, view
from labs.core.data import chat_prompt, read_jsonl
from labs.core.evaluation import MeasureParams, exact_match, repetition, reward_scores
from labs.core.models import load_model, load_reward_model, load_tokenizer, require
from labs.core.run import write_csv


class Strategy(Section):
    """One decoding strategy: `generate` arguments, contrastive decoding, or a re-ranking of sampled answers."""

    do_sample: bool = False
    """sample from the distribution instead of taking the most likely token"""
    temperature: float = Field(1.0, gt=0)
    """sampling temperature: below 1 sharpens, above 1 flattens"""
    top_k: int = Field(0, ge=0)  # 0: no top-k cut (generation_config's default of 50 would otherwise apply)
    """sample among the k most likely tokens; 0: no cut"""
    top_p: float = Field(1.0, gt=0, le=1)
    """nucleus sampling: the smallest set of tokens holding this probability"""
    min_p: float | None = Field(None, gt=0, lt=1)
    """drop tokens less likely than min_p times the top token's probability"""
    num_beams: int = Field(1, ge=1)
    """beam search width (1: no beam search)"""
    repetition_penalty: float = Field(1.0, gt=0)
    """divides the logits of tokens already present (above 1 discourages repeats)"""
    # contrastive decoding: the plausibility cut alpha (keep tokens with p_expert >= alpha * max p_expert),
    # then pick by log p_expert - log p_amateur
    contrastive: float | None = Field(None, gt=0, le=1)
    """contrastive decoding against the amateur with this plausibility cut alpha"""
    samples: int = Field(1, ge=1)
    """> 1: sample this many answers per prompt and keep one by `pick`"""
    pick: Literal["best_reward", "reward_weighted"] = "best_reward"
    """how one of `samples` answers is kept: best_reward | reward_weighted"""
    beta: float = Field(1.0, gt=0)
    """reward_weighted: keep answer i with probability softmax(reward / beta)_i"""


class DecodeParams(Section):
    """Decoding strategies of one model, side by side on the held-out prompts."""

    model: str = "sft"  # directories under models/
    """directory under models/ that decodes"""
    amateur: str = "pretrain"
    """contrastive decoding's amateur: same tokenizer, no SFT"""
    reward_model: str | None = "reward"
    """re-ranks best-of-N and reward-weighted samples; scores every strategy"""
    prompts: int = Field(400, gt=0)
    """held-out prompts each strategy answers"""
    # diversity: the first `diversity_prompts` are answered `diversity_runs` times (new seeds): how often it differs
    diversity_prompts: int = Field(64, gt=0)
    """prompts (the first of `prompts`) answered diversity_runs times to measure diversity"""
    diversity_runs: int = Field(4, ge=2)
    """answers per diversity prompt, each with a fresh seed"""
    strategies: dict[str, Strategy] = {
        "greedy": Strategy(),
        "temperature_0.7": Strategy(do_sample=True, temperature=0.7),
        "temperature_1.0": Strategy(do_sample=True, temperature=1.0),
        "temperature_1.5": Strategy(do_sample=True, temperature=1.5),
        "top_k_10": Strategy(do_sample=True, top_k=10),
        "nucleus_0.9": Strategy(do_sample=True, top_p=0.9),
        "nucleus_0.95": Strategy(do_sample=True, top_p=0.95),
        "min_p_0.1": Strategy(do_sample=True, min_p=0.1),
        "beam_4": Strategy(num_beams=4),
        "repetition_penalty_1.3": Strategy(repetition_penalty=1.3),
        "contrastive_0.1": Strategy(contrastive=0.1),
        "best_of_4": Strategy(do_sample=True, samples=4, pick="best_reward"),
        "reward_weighted_4": Strategy(do_sample=True, samples=4, pick="reward_weighted", beta=1.0),
    }
    """strategy name -> its settings; every one answers the same prompts"""


# the keys of the evaluate section this lab's held-out measurements use
Measurement = view(MeasureParams, "max_new_tokens", "batch_size", "precision")


class Params(Section):
    """What decode reads from params.yaml."""

    seed: Seed = SEED
    decode: DecodeParams = DecodeParams()
    evaluate: Measurement = Measurement()


PREPARED, MODELS = Path("data/prepared"), Path("models")


class ContrastiveLogits(LogitsProcessor):
    """Contrastive decoding's score: log p_expert - log p_amateur, on tokens with p_expert >= alpha * max p_expert
    (the plausibility cut keeps the amateur from promoting tokens the expert itself finds absurd)."""

    def __init__(self, amateur, alpha: float, pad_token_id: int):
        self.amateur, self.log_alpha, self.pad_token_id = amateur, math.log(alpha), pad_token_id

    @torch.no_grad()
    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        # The amateur reads the same left-padded rows; it has no cache of its own, which a model this small
        # can afford (a larger amateur would keep past_key_values between calls).
        mask = (input_ids != self.pad_token_id).long()
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        amateur = self.amateur(input_ids=input_ids, attention_mask=mask, position_ids=positions).logits[:, -1]
        expert = scores.log_softmax(-1)
        plausible = expert >= expert.max(-1, keepdim=True).values + self.log_alpha
        return torch.where(plausible, expert - amateur.float().log_softmax(-1), torch.finfo(scores.dtype).min)


def answer_diversity(runs: list[list[str]]) -> float:
    """% of re-runs (after the first) whose answer to a prompt differs from every earlier answer to it."""
    new = sum(len(set(answers)) - 1 for answers in zip(*runs, strict=True))
    return round(100 * new / (len(runs[0]) * (len(runs) - 1)), 2)


def distinct(completions: list[str], n: int) -> float:
    """Unique word n-grams / all word n-grams across the answers (Li et al. 2016's distinct-n), in percent."""
    grams = [tuple(words[i:i + n]) for text in completions for words in [text.split()]
             for i in range(len(words) - n + 1)]
    return round(100 * len(set(grams)) / max(len(grams), 1), 2)


@torch.no_grad()
def answer(model, tokenizer, prompts: list[str], strategy: Strategy, params: Params, amateur=None, judge=None,
           generator: torch.Generator | None = None) -> list[str]:
    """One answer per prompt under `strategy` (batched, left-padded chat prompts)."""
    tokenizer.padding_side = "left"
    knobs = {"do_sample": strategy.do_sample, "num_beams": strategy.num_beams,
             "repetition_penalty": strategy.repetition_penalty, "num_return_sequences": strategy.samples}
    if strategy.do_sample:
        knobs |= {"temperature": strategy.temperature, "top_k": strategy.top_k, "top_p": strategy.top_p,
                  "min_p": strategy.min_p}
    if strategy.contrastive:
        knobs["logits_processor"] = LogitsProcessorList(
            [ContrastiveLogits(amateur, strategy.contrastive, tokenizer.pad_token_id)])
    out: list[str] = []
    for start in range(0, len(prompts), params.evaluate.batch_size):
        chunk = prompts[start:start + params.evaluate.batch_size]
        texts = [chat_prompt(tokenizer, p) for p in chunk]
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        ids = model.generate(**batch, max_new_tokens=params.evaluate.max_new_tokens,
                             eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **knobs)
        texts = tokenizer.batch_decode(ids[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
        if strategy.samples == 1:
            out += texts
            continue
        # num_return_sequences puts each prompt's samples next to each other
        scores = torch.tensor(reward_scores(judge, tokenizer, [p for p in chunk for _ in range(strategy.samples)],
                                            texts)).view(len(chunk), strategy.samples)
        if strategy.pick == "best_reward":
            keep = scores.argmax(-1)
        else:
            keep = torch.multinomial((scores / strategy.beta).softmax(-1), 1, generator=generator).squeeze(-1)
        out += [texts[i * strategy.samples + int(k)] for i, k in enumerate(keep)]
    return out


def run(params: Params) -> dict:
    cfg = params.decode
    path = require(MODELS / cfg.model, "config.json", cfg.model)
    tokenizer = load_tokenizer(path)
    model = load_model(path, params.evaluate.precision)
    needs_amateur = any(s.contrastive for s in cfg.strategies.values())
    needs_judge = cfg.reward_model is not None or any(s.samples > 1 for s in cfg.strategies.values())
    amateur = load_model(require(MODELS / cfg.amateur, "config.json", cfg.amateur),
                         params.evaluate.precision).eval() if needs_amateur else None
    judge = None
    if needs_judge:
        if cfg.reward_model is None:
            raise ConfigError("params.yaml: decode.reward_model: a strategy with samples > 1 re-ranks its samples "
                            "by reward; expected a reward model's directory under models/, got null")
        judge = load_reward_model(require(MODELS / cfg.reward_model, "config.json", cfg.reward_model),
                                  params.evaluate.precision)
    test = read_jsonl(PREPARED / "sft_test.jsonl", "sft")[:cfg.prompts]
    prompts = [r["prompt"] for r in test]

    rows = []
    for name, strategy in cfg.strategies.items():
        torch.manual_seed(params.seed)  # every strategy draws from the same random stream
        generator = torch.Generator().manual_seed(params.seed)
        started = time.perf_counter()
        completions = answer(model, tokenizer, prompts, strategy, params, amateur, judge, generator)
        seconds = time.perf_counter() - started
        tokens = sum(len(tokenizer(c, add_special_tokens=False)["input_ids"]) for c in completions)
        reruns = [completions[:cfg.diversity_prompts]]
        for run_index in range(1, cfg.diversity_runs):
            torch.manual_seed(params.seed + run_index)
            reruns.append(answer(model, tokenizer, prompts[:cfg.diversity_prompts], strategy, params, amateur, judge,
                                 torch.Generator().manual_seed(params.seed + run_index)))
        row = {
            "name": name,
            "exact_match": exact_match(test, completions),
            "answer_diversity": answer_diversity(reruns),
            "distinct_1": distinct(completions, 1),
            "distinct_2": distinct(completions, 2),
            "repetition": repetition(completions),
            "mean_words": round(sum(len(c.split()) for c in completions) / len(completions), 2),
            "reward": round(float(torch.tensor(reward_scores(judge, tokenizer, prompts, completions)).mean()), 4)
            if judge is not None else None,
            "tokens_per_s": round(tokens / seconds, 1),
            "seconds": round(seconds, 2),
            "sample": completions[0],
        }
        rows.append(row)
        print(f"decode: {name}: exact-match {row['exact_match']['overall']}, diversity {row['answer_diversity']}, "
              f"distinct-2 {row['distinct_2']}, "
              f"reward {row['reward']}, {row['tokens_per_s']} tok/s")
    write_csv("plots/decode/table.csv",  # quality against diversity per strategy
              ["strategy", "exact_match", "answer_diversity", "distinct_2", "repetition", "reward", "tokens_per_s"],
              [[r["name"], r["exact_match"]["overall"], r["answer_diversity"], r["distinct_2"], r["repetition"],
                r["reward"], r["tokens_per_s"]] for r in rows])
    # a list, not a mapping: metrics files sort their keys, and the table reads in params order
    return {"model": cfg.model, "prompts": len(prompts), "strategies": rows}
