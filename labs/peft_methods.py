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

import json
import time
from functools import partial
from pathlib import Path

from labs.core.adapters import seed_spread, train_adapter
from labs.core.config import LoraParams, Params
from labs.core.evaluation import peft_table
from labs.core.models import count_parameters, load_model, load_tokenizer, require
from labs.core.run import atomic_path, peak_gpu_mb, peak_rss_mb, reset_peak_memory, safetensors_mb, save_model

BASE, OUT, METRICS = Path("models/pretrain"), Path("models/peft_methods"), Path("metrics")


def train_methods(params: Params) -> dict[str, dict]:
    base = require(BASE, "config.json", "pretrain")
    tokenizer = load_tokenizer(base)
    results = {}
    with atomic_path(OUT) as tmp:
        for method, overrides in params.peft_methods.methods.items():
            cfg = LoraParams.model_validate(
                # lora's seeds are lora's: a method here is retrained over seeds only when its own entry asks
                params.lora.model_dump() | {"method": method, "seeds": []} | overrides.model_dump(exclude_none=True))
            reset_peak_memory()
            started = time.perf_counter()
            model = load_model(base, cfg.precision, cfg.attn_implementation, training=True)
            trainer, metrics, card = train_adapter(params, cfg, f"peft_methods/{method}", model, tokenizer, base,
                                                   count_parameters(model))
            metrics.pop("completions")
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


def row(name: str, m: dict) -> dict:
    """One row of the comparison from a lab's metrics (full SFT ships the whole model as its 'adapter')."""
    return {
        "method": name,
        "trainable_parameters": m["trainable_parameters"],
        "trainable_pct": round(100 * m["trainable_parameters"] / m["parameters"], 3),
        "peak_rss_mb": m["run"]["peak_rss_mb"],
        "peak_gpu_mb": m["run"].get("peak_gpu_mb"),
        "train_time_s": m["train_time_s"],
        "wall_time_s": m["run"]["wall_time_s"],
        "adapter_mb": m.get("adapter_mb", m.get("weights_mb")),
        "exact_match": m["exact_match"]["overall"],
        # over every seed the method was trained with (the single run's included); absent: one seed only
        "exact_match_seeds": {key: m["seed_spread"][key] for key in ("seeds", "overall_mean", "overall_sd",
                                                                       "overall_min", "overall_max")}
        if "seed_spread" in m else None,
        "val_loss": m["val_loss"],
        "corpus_perplexity": m.get("corpus_perplexity"),
    }


def comparison(results: dict[str, dict], metrics_dir: Path = METRICS) -> list[dict]:
    rows = []
    for lab in ("sft", "lora", "qlora"):
        path = metrics_dir / f"{lab}.json"
        if path.exists():  # the DVC stage depends on all three; run alone, the table shows what exists
            m = json.loads(path.read_text())
            rows.append(row({"sft": "full SFT", "lora": m.get("method"), "qlora": f"q{m.get('method')}"}[lab], m))
    return rows + [row(method, m) for method, m in results.items()]


def run(params: Params) -> dict:
    results = train_methods(params)
    table = comparison(results)
    print(peft_table(table))
    return {"methods": results, "table": table}
