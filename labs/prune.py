"""prune — magnitude pruning of the SFT model at several sparsities, each with a short recovery fine-tune.

    just lab prune
    dvc exp run -S prune.sparsities=[0.5,0.8]
    dvc exp run -S prune.kind=structured

torch.nn.utils.prune does the pruning: `unstructured` zeroes the smallest-magnitude weights across all the
decoder's linear layers at once (global L1: layers that matter less give up more), `structured` zeroes
each linear's whole output rows of smallest L2 norm (the same share in every layer). Embeddings and the
tied output head stay dense. The masks stay on during the recovery fine-tune (sft's data, a short
schedule), so the pruned weights stay zero, then become permanent before saving.

Zeros in a dense tensor do not shrink the file or speed up a dense matmul: what pruning buys here is the
quality each sparsity keeps. `quantize` measures every pruned model in the compression table.
Outputs: models/prune/<pct>pct; metrics per sparsity: measured sparsity, held-out exact-match right after
pruning and after recovery, validation loss, corpus perplexity.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import torch
from pydantic import Field
from torch.nn.utils import prune

from labs.core.config import SEED, Section, Seed, Tier, TrainParams, view
from labs.core.evaluation import MeasureParams, exact_match
from labs.core.models import load_model, load_tokenizer, require
from labs.core.run import atomic_path, save_model
from labs.core.train import finetune, held_out_answers, held_out_scores


class PruneParams(TrainParams):
    """Magnitude pruning of the SFT model's linear layers, each sparsity followed by a short recovery fine-tune."""

    kind: Literal["unstructured", "structured"] = "unstructured"
    """unstructured (single weights, global L1) | structured (whole rows, L2, per layer)"""
    # share of each pruned weight set set to zero: global over all linears (unstructured), whole rows per layer
    # (structured, L2 norm)
    sparsities: list[Annotated[float, Field(gt=0, lt=1)]] = [0.3, 0.5, 0.7]
    """shares of the weights set to zero, one pruned model each"""
    max_length: int = Field(128, gt=0)  # recovery: sft's data, a fifth of an epoch
    batch_size: int = Field(16, gt=0)
    max_steps: int = 100
    lr: float = Field(1e-4, gt=0)  # higher unsettles what pruning left intact
    warmup_steps: int = Field(10, ge=0)


# the keys of the evaluate section this lab's held-out measurements use
Measurement = view(MeasureParams, "max_new_tokens", "batch_size")


class Params(Section):
    """What prune reads from params.yaml."""

    seed: Seed = SEED
    tier: Tier = "cpu"
    prune: PruneParams = PruneParams()
    evaluate: Measurement = Measurement()


SFT, OUT = Path("models/sft"), Path("models/prune")


def decoder_linears(model) -> list[torch.nn.Linear]:
    return [m for m in model.model.layers.modules() if isinstance(m, torch.nn.Linear)]


def apply_pruning(model, kind: str, sparsity: float) -> None:
    linears = decoder_linears(model)
    if kind == "unstructured":
        prune.global_unstructured([(m, "weight") for m in linears], pruning_method=prune.L1Unstructured,
                                  amount=sparsity)
    else:
        for module in linears:
            prune.ln_structured(module, "weight", amount=sparsity, n=2, dim=0)


def sparsity_of(model) -> float:
    weights = [m.weight for m in decoder_linears(model)]
    zeros = sum(int((w == 0).sum()) for w in weights)
    return round(100 * zeros / sum(w.numel() for w in weights), 2)


def run(params: Params) -> dict:
    cfg = params.prune
    base = require(SFT, "config.json", "sft")
    tokenizer = load_tokenizer(base)
    results = {}
    with atomic_path(OUT) as tmp:
        for amount in cfg.sparsities:
            name = f"{round(100 * amount)}pct"
            model = load_model(base, cfg.precision, cfg.attn_implementation, training=True)
            apply_pruning(model, cfg.kind, amount)
            pruned_em = exact_match(*held_out_answers(model, tokenizer, params))
            trainer, metrics, card = finetune(params, cfg, f"prune/{name}", model, tokenizer, base)
            metrics |= held_out_scores(trainer.model, tokenizer, params)[0]
            for module in decoder_linears(trainer.model):
                prune.remove(module, "weight")  # weight = weight_orig * mask, for good
            save_model(trainer.model, tokenizer, tmp / name, card)
            results[name] = metrics | {"sparsity_pct": sparsity_of(trainer.model), "exact_match_before_recovery":
                                       pruned_em}
            print(f"prune: {name} ({cfg.kind}): exact-match {pruned_em['overall']} after pruning, "
                  f"{metrics['exact_match']['overall']} after recovery")
    return {"kind": cfg.kind, "sparsities": results}
