"""attention — attention implementations and the KV cache: what each costs in tokens/s and memory.

    just lab attention
    dvc exp run -S 'attention.prompt_lengths=[512]' -S 'attention.new_tokens=[256]'

Every combination of `implementations` (eager: attention written out in PyTorch; sdpa: PyTorch's fused
scaled_dot_product_attention; flash_attention_2 on the a100 tier) and `caches` (none: every step re-reads
the whole sequence; dynamic: the default KV cache, grown a step at a time; static: preallocated to the
final length, the layout torch.compile and CUDA graphs need) greedily decodes exactly `new_tokens` after
prompts of each `prompt_lengths` (cut from held-out corpus text), in interleaved rounds, best round kept.
Per row: tokens/s, the KV cache's size (its tensors, counted after generation; none: 0), peak GPU memory on
GPU tiers, and whether the tokens equal the reference row's (eager, no cache): a cache or kernel that changed
the answer would show here. `shape` swaps the SFT model for a randomly initialised Llama of that size:
speed does not depend on the weights, and the cache's advantage grows with the model.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Annotated, Literal

import torch
from pydantic import Field

from labs.core.config import SEED, ConfigError, ModelShape, Section, Seed, Tier, view
from labs.core.data import read_jsonl
from labs.core.evaluation import MeasureParams
from labs.core.models import build_llama, count_parameters, load_model, load_tokenizer, require, use_gpu
from labs.core.run import peak_gpu_mb, reset_peak_memory, write_csv

AttentionName = Literal["eager", "sdpa", "flash_attention_2", "flex_attention"]


class AttentionParams(Section):
    """Attention implementations and KV-cache variants, timed side by side."""

    model: str = "sft"  # a directory under models/ ...
    """directory under models/ that is timed"""
    shape: ModelShape | None = None  # ... or a randomly initialised Llama of this shape (speed ignores weights)
    """time a randomly initialised Llama of this shape instead (speed ignores weights)"""
    implementations: list[AttentionName] = ["eager", "sdpa"]
    """attention kernels compared"""
    caches: list[Literal["none", "dynamic", "static"]] = ["none", "dynamic", "static"]
    """KV cache variants compared: none, dynamic (grows) or static (preallocated)"""
    prompt_lengths: list[Annotated[int, Field(gt=0)]] = [32, 256]
    """prompt tokens of each timed generation"""
    new_tokens: list[Annotated[int, Field(gt=0)]] = [128]
    """tokens generated in each timed generation"""
    batch_size: int = Field(1, gt=0)
    """prompts generated together"""
    rounds: int = Field(3, gt=0)
    """interleaved timing rounds; each combination keeps its best"""


# the keys of the evaluate section this lab's held-out measurements use
Measurement = view(MeasureParams, "precision")


class Params(Section):
    """What attention reads from params.yaml."""

    seed: Seed = SEED
    tier: Tier = "cpu"
    attention: AttentionParams = AttentionParams()
    evaluate: Measurement = Measurement()


PREPARED, MODELS = Path("data/prepared"), Path("models")


def prompts_of_length(tokenizer, length: int, batch_size: int) -> torch.Tensor:
    """`batch_size` rows of exactly `length` tokens of held-out corpus text (rows start at different texts)."""
    texts = [r["text"] for r in read_jsonl(PREPARED / "corpus_val.jsonl", "text")]
    rows = []
    for start in range(batch_size):
        ids: list[int] = []
        for text in itertools.islice(itertools.cycle(texts), start, None):
            ids += tokenizer(text + "\n", add_special_tokens=False)["input_ids"]
            if len(ids) >= length:
                break
        rows.append(ids[:length])
    return torch.tensor(rows)


def cache_mb(cache) -> float:
    """Bytes of the key and value tensors a generate() call left in its cache."""
    if cache is None:
        return 0.0
    total = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values)
                if isinstance(t, torch.Tensor))
    return round(total / 2**20, 3)


@torch.no_grad()
def decode(model, ids: torch.Tensor, new_tokens: int, cache: str, pad_token_id: int):
    knobs = {"use_cache": cache != "none"}
    if cache == "static":
        knobs["cache_implementation"] = "static"
    started = time.perf_counter()
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                         min_new_tokens=new_tokens, do_sample=False, pad_token_id=pad_token_id,
                         return_dict_in_generate=True, **knobs)
    if ids.is_cuda:
        torch.cuda.synchronize()
    return out, time.perf_counter() - started


def run(params: Params) -> dict:
    cfg = params.attention
    path = require(MODELS / cfg.model, "config.json", cfg.model)
    tokenizer = load_tokenizer(path)
    device = "cuda" if use_gpu(params) else "cpu"
    models = {}
    for impl in cfg.implementations:
        if cfg.shape is not None:
            torch.manual_seed(params.seed)  # the same random weights under every implementation
            models[impl] = build_llama(cfg.shape, tokenizer, attn_implementation=impl).to(device).eval()
        else:
            models[impl] = load_model(path, params.evaluate.precision, attn_implementation=impl).to(device).eval()
    first = next(iter(models.values()))
    limit = first.config.max_position_embeddings
    if max(cfg.prompt_lengths) + max(cfg.new_tokens) > limit:
        raise ConfigError(f"params.yaml: attention: prompt_lengths + new_tokens reach "
                        f"{max(cfg.prompt_lengths) + max(cfg.new_tokens)} tokens; the model holds {limit}")

    cases = list(itertools.product(cfg.prompt_lengths, cfg.new_tokens, cfg.implementations, cfg.caches))
    prompts = {length: prompts_of_length(tokenizer, length, cfg.batch_size).to(device) for length in cfg.prompt_lengths}
    best: dict[tuple, dict] = {}
    for _ in range(cfg.rounds):
        for length, new, impl, cache in cases:
            reset_peak_memory()
            out, seconds = decode(models[impl], prompts[length], new, cache, tokenizer.pad_token_id)
            key = (length, new, impl, cache)
            if key not in best or seconds < best[key]["seconds"]:
                best[key] = {"seconds": seconds, "tokens": out.sequences[:, length:].tolist(),
                             "kv_cache_mb": cache_mb(out.past_key_values), "peak_gpu_mb": peak_gpu_mb()}

    rows = []
    for length, new, impl, cache in cases:
        result = best[(length, new, impl, cache)]
        reference = best[(length, new, cfg.implementations[0], cfg.caches[0])]
        no_cache = best.get((length, new, impl, "none"))
        rows.append({
            "implementation": impl, "cache": cache, "prompt_tokens": length, "new_tokens": new,
            "tokens_per_s": round(cfg.batch_size * new / result["seconds"], 1),
            "speedup_vs_no_cache": round(no_cache["seconds"] / result["seconds"], 2) if no_cache else None,
            "kv_cache_mb": result["kv_cache_mb"],
            "peak_gpu_mb": result["peak_gpu_mb"],
            "same_tokens_as_reference": result["tokens"] == reference["tokens"],
        })
        print(f"attention: {impl:>8} cache={cache:<7} prompt {length:>4} +{new}: {rows[-1]['tokens_per_s']:>8} tok/s "
              f"({rows[-1]['speedup_vs_no_cache']}x no cache), KV cache {result['kv_cache_mb']} MB")
    write_csv("plots/attention/table.csv", ["case", "tokens_per_s", "kv_cache_mb"],
              [[f"{r['implementation']}/{r['cache']}/{r['prompt_tokens']}+{r['new_tokens']}", r["tokens_per_s"],
                r["kv_cache_mb"]] for r in rows])
    return {"model": cfg.model if cfg.shape is None else "random " + cfg.shape.model_dump_json(),
            "parameters": count_parameters(first), "batch_size": cfg.batch_size,
            "reference": f"{cfg.implementations[0]}, cache {cfg.caches[0]}", "rows": rows}
