"""peft_methods — every PEFT method beside full SFT: one table of what each trains, costs and reaches.

    just lab peft_methods
    dvc exp run -S peft_methods.methods.prompt.lr=1e-1

Each method in `peft_methods.methods` trains with the `lora` section's settings plus its own overrides
(prefix and prompt tuning need a far higher learning rate than LoRA), one after another in this
process, each measured on its own: peak RSS and peak GPU memory are reset before each method. The
table's other rows come from the stages that trained them: full SFT (metrics/sft.json), `lora` and
`qlora`. Adapters land in models/peft_methods/<method>; the table in metrics/peft_methods.json.
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path
from typing import Literal

from pydantic import Field

from labs.core.adapters import AdapterParams, seed_spread, train_adapter
from labs.core.config import SEED, Section, Seed, Tier, view
from labs.core.evaluation import MeasureParams, peft_row, peft_table
from labs.core.models import count_parameters, load_model, load_tokenizer, require
from labs.core.run import (
    atomic_path,
    peak_gpu_mb,
    peak_rss_mb,
    reset_peak_memory,
    safetensors_mb,
    save_model,
)


class MethodOverrides(Section):
    """What a method in `peft_methods` may set differently from the `lora` section."""

    lr: float | None = Field(None, gt=0)
    """the method's learning rate (null: lora's)"""
    epochs: float | None = Field(None, gt=0)
    """the method's epochs (null: lora's)"""
    max_steps: int | None = None
    """the method's max_steps (null: lora's)"""
    rank: int | None = Field(None, gt=0)
    """the method's rank (null: lora's)"""
    alpha: float | None = Field(None, gt=0)
    """the method's alpha (null: lora's)"""
    num_virtual_tokens: int | None = Field(None, gt=0)
    """the method's virtual tokens (null: lora's)"""
    target_modules: list[str] | None = None
    """the method's target modules (null: lora's)"""
    seeds: list[int] | None = None
    """extra seeds for this method's spread (null: none)"""


class PeftMethodsParams(Section):
    # method -> its overrides of the `lora` section. lora itself and qlora have their own stages; the
    # comparison table takes their rows (and full SFT's) from metrics/.
    # prefix, prompt and (IA)^3 train far fewer weights and need higher rates; 4 epochs keep the curriculum short.
    # Each trains again with two more seeds: on `reverse` one run's EM is a draw, not the method's score.
    methods: dict[Literal["lora", "dora", "prefix", "prompt", "ia3"], MethodOverrides] = {
        "dora": MethodOverrides(seeds=[1, 2]),
        "prefix": MethodOverrides(lr=1e-2, epochs=4, seeds=[1, 2]),
        "prompt": MethodOverrides(lr=3e-2, epochs=4, seeds=[1, 2]),
        "ia3": MethodOverrides(lr=1e-2, epochs=4, seeds=[1, 2]),
    }
    """method -> its overrides of the `lora` section; each gets a row, with its spread over `seeds`"""


# the keys of the evaluate section this lab's held-out measurements use
Measurement = view(MeasureParams, "max_new_tokens", "batch_size")


class Params(Section):
    """What peft_methods reads from params.yaml."""

    seed: Seed = SEED
    tier: Tier = "cpu"
    peft_methods: PeftMethodsParams = PeftMethodsParams()
    lora: AdapterParams = AdapterParams()
    evaluate: Measurement = Measurement()


BASE, OUT = Path("models/pretrain"), Path("models/peft_methods")


def train_methods(params: Params) -> dict[str, dict]:
    base = require(BASE, "config.json", "pretrain")
    tokenizer = load_tokenizer(base)
    results = {}
    with atomic_path(OUT) as tmp:
        for method, overrides in params.peft_methods.methods.items():
            cfg = AdapterParams.model_validate(
                # lora's seeds are lora's: a method here is retrained over seeds only when its own entry asks
                params.lora.model_dump() | {"method": method, "seeds": []} | overrides.model_dump(exclude_none=True))
            reset_peak_memory()
            started = time.perf_counter()
            model = load_model(base, cfg.precision, cfg.attn_implementation, training=True)
            trainer, metrics, card, _ = train_adapter(params, cfg, f"peft_methods/{method}", model, tokenizer, base,
                                                      count_parameters(model))
            save_model(trainer.model, tokenizer, tmp / method, card)
            if cfg.seeds:
                reload = partial(load_model, base, cfg.precision, cfg.attn_implementation, training=True)
                metrics["seed_spread"] = seed_spread(params, cfg, f"peft_methods/{method}", metrics, reload,
                                                     tokenizer, base, metrics["parameters"])
            metrics |= {"config": cfg.model_dump(mode="json"), "adapter_mb": safetensors_mb(tmp / method),
                        "run": {"wall_time_s": round(time.perf_counter() - started, 1), "peak_rss_mb": peak_rss_mb()}}
            if (gpu := peak_gpu_mb()) is not None:
                metrics["run"]["peak_gpu_mb"] = gpu
            results[method] = metrics
            print(f"peft_methods: {method}: exact-match {metrics['exact_match']['overall']}, "
                  f"{metrics['trainable_pct']}% trained")
    return results


def run(params: Params) -> dict:
    results = train_methods(params)
    # the comparison with full SFT, lora and qlora is built from every lab's metrics where it is read
    # (`peft_comparison`), so this stage does not re-run when their timings change
    print(peft_table([peft_row(method, m) for method, m in results.items()]))
    return {"methods": results}
