"""quantize — post-training quantization of the SFT model (and QAT), and the compression table.

    just lab quantize
    dvc exp run -S quantize.method=nf4      # one method: int8 | nf4 | dynamic_int8 | torchao_int8 |
                                            #   torchao_int4 | qat_int4 | gptq | awq   (all: every one)

Methods, each a maintained library's own path:
  * int8         — bitsandbytes LLM.int8(): int8 weights, outlier columns kept in 16 bits,
  * nf4          — bitsandbytes 4-bit NormalFloat with double quantization (QLoRA's storage format),
  * dynamic_int8 — torch.ao dynamic quantization: int8 weights, activations quantized per batch on the fly
                   (deprecated upstream in favour of torchao; kept because it is the fastest on CPU),
  * torchao_int8 — torchao int8 weight-only,
  * torchao_int4 — torchao int4 weight-only, one scale per `group_size` weights,
  * qat_int4     — quantization-aware training: torchao fake-quantizes the weights to int4 during a short
                   fine-tune on the sft task (`qat`), then the same int4 conversion as torchao_int4,
  * gptq, awq    — GPU tiers only (their kernels need CUDA): a clear error on a CPU.
bitsandbytes 0.50.2 and torchao 0.18 run all the others on a CPU (shared/facts.md).

Every row of the table is measured in this process, the same way: parameters, size on disk (the saved
safetensors), memory footprint (bytes of every tensor the model holds: `get_memory_footprint()` is wrong
for torchao and torch.ao), greedy tokens/s (side by side, interleaved: `decoding_speeds`), perplexity of
the held-out answers, held-out exact-match, and quality as % of the fp32 SFT model's exact-match. The rows
also cover the pruned models (`prune`) and the distilled student (`distill`), fp32 and quantized
(`student_methods`), so the whole compression comparison is one table from one run.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from labs.core.config import Params
from labs.core.data import DataError, read_jsonl
from labs.core.evaluation import decoding_speeds, exact_match, perplexity, tensor_bytes
from labs.core.models import DTYPES, count_parameters, load_model, load_tokenizer, require, use_gpu
from labs.core.run import atomic_path, safetensors_mb, save_model
from labs.core.train import PREPARED, finetune, held_out_answers

SFT, STUDENT, PRUNED, OUT = Path("models/sft"), Path("models/distill/student"), Path("models/prune"), Path(
    "models/quantize")
CPU_METHODS = ["int8", "nf4", "dynamic_int8", "torchao_int8", "torchao_int4", "qat_int4"]
GPU_METHODS = ["gptq", "awq"]


def torchao_config(method: str, group_size: int):
    from torchao.quantization import Int8WeightOnlyConfig, IntxWeightOnlyConfig
    from torchao.quantization.granularity import PerGroup

    if method == "torchao_int8":
        return Int8WeightOnlyConfig()
    return IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(group_size))


def load_quantized(path: Path, method: str, params: Params):
    """The model at `path` quantized by `method` (loaded in its quantized form, ready to save and run)."""
    from transformers import BitsAndBytesConfig, TorchAoConfig

    precision = params.evaluate.precision
    if method == "int8":
        return load_model(path, precision, quantization_config=BitsAndBytesConfig(load_in_8bit=True))
    if method == "nf4":
        model = load_model(path, precision, quantization_config=BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=DTYPES[precision]))
        # bitsandbytes 0.50.2 repacks 4-bit weights for an AVX512-BF16 kernel on the first no-grad forward;
        # the repacking fails for widths that are not a multiple of its block (the 96-wide student: "shape
        # '[96, 1]' is invalid"). Its plain dequantize-then-matmul path serves every shape.
        for module in model.modules():
            if hasattr(module, "support_avx512bf16_for_cpu"):
                module.support_avx512bf16_for_cpu = False
        return model
    if method == "dynamic_int8":
        model = load_model(path, "fp32")
        return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    if method in ("torchao_int8", "torchao_int4"):
        config = TorchAoConfig(torchao_config(method, params.quantize.group_size))
        return load_model(path, precision, quantization_config=config)
    if method in GPU_METHODS:
        if not use_gpu(params):
            raise DataError(f"params.yaml: quantize.method: {method} needs a CUDA GPU (GPU tiers' images); "
                            f"on a CPU use one of {', '.join(CPU_METHODS)}")
        from transformers import AwqConfig, GPTQConfig

        tokenizer = load_tokenizer(path)
        calibration = [r["text"] for r in read_jsonl(PREPARED / "corpus_train.jsonl", "text")[:256]]
        config = (GPTQConfig(bits=4, dataset=calibration, tokenizer=tokenizer) if method == "gptq"
                  else AwqConfig(bits=4))
        return load_model(path, precision, quantization_config=config)
    raise DataError(f"params.yaml: quantize.method: unknown method {method!r}")


def quantization_aware(params: Params, base: Path, tokenizer):
    """QAT: int4 fake quantization of the weights during a short fine-tune, then real int4 weights.

    The fine-tuned weights are saved in full precision and loaded through the same TorchAoConfig as
    torchao_int4, so QAT and post-training int4 differ only in the training that saw the rounding.
    """
    from torchao.quantization import quantize_
    from torchao.quantization.qat import FakeQuantizedLinear, QATConfig

    cfg = params.quantize
    model = load_model(base, cfg.qat.precision, training=True)
    quantize_(model, QATConfig(torchao_config("torchao_int4", cfg.group_size), step="prepare"))
    trainer, result, card = finetune(params, cfg.qat, "quantize/qat", model, tokenizer, base)
    for name, module in list(trainer.model.named_modules()):
        if isinstance(module, FakeQuantizedLinear):  # back to plain linears with the trained weights
            parent, _, child = name.rpartition(".")
            setattr(trainer.model.get_submodule(parent), child, module.to_linear())
    with tempfile.TemporaryDirectory() as scratch:
        save_model(trainer.model, tokenizer, Path(scratch) / "model", card)
        model = load_quantized(Path(scratch) / "model", "torchao_int4", params)
    return model, {"val_loss": result["val_loss"], "train_time_s": result["train_time_s"],
                   "exact_match_fake_quantized": result["exact_match"]["overall"]}


def plan(params: Params) -> list[tuple[str, Path, str | None]]:
    """(row name, weights, quantization method or None) for every row of the table."""
    cfg = params.quantize
    methods = (CPU_METHODS + (GPU_METHODS if use_gpu(params) else [])) if cfg.method == "all" else [cfg.method]
    rows = []
    if "sft" in cfg.models:
        rows += [("fp32", SFT, None)] + [(method, SFT, method) for method in methods]
        if PRUNED.exists():  # the prune stage's models, one per sparsity
            rows += [(f"pruned {d.name}", d, None) for d in sorted(PRUNED.iterdir()) if (d / "config.json").exists()]
    if "distill" in cfg.models:
        require(STUDENT, "config.json", "distill")
        rows += [("distilled", STUDENT, None)] + [(f"distilled + {m}", STUDENT, m) for m in cfg.student_methods]
    return rows


def run(params: Params) -> dict:
    require(SFT, "config.json", "sft")
    tokenizer = load_tokenizer(SFT)
    models, rows, extra = {}, {}, {}
    with atomic_path(OUT) as tmp:
        for name, path, method in plan(params):
            folder = tmp / name.replace(" + ", "_").replace(" ", "_")
            if method == "qat_int4":
                model, extra["qat"] = quantization_aware(params, path, tokenizer)
            else:
                model = load_quantized(path, method, params) if method else load_model(path, params.evaluate.precision)
            saved = method != "dynamic_int8"  # torch.ao's packed modules serialize through pickle only
            if saved and method:
                save_model(model, tokenizer, folder, {"lab": "quantize", "method": method, "source": str(path)})
            test, completions = held_out_answers(model, tokenizer, params)
            full = load_model(path, "fp32")
            rows[name] = {
                "source": str(path),
                "method": method or "fp32",
                "parameters": count_parameters(full),
                "nonzero_parameters": int(sum(int(p.count_nonzero()) for p in full.parameters())),
                "disk_mb": safetensors_mb(folder if method else path) if saved else None,
                "memory_mb": round(tensor_bytes(model) / 2**20, 3),
                # on the held-out answers given their prompts: what the model is for (after SFT, prose
                # perplexity measures how much of pretraining it forgot, not how well it answers)
                "perplexity": perplexity(model, tokenizer, [r["completion"] for r in test],
                                         prompts=[r["prompt"] for r in test]),
                "exact_match": exact_match(test, completions),
            }
            models[name] = model
            print(f"quantize: {name}: {rows[name]['memory_mb']} MB, exact-match "
                  f"{rows[name]['exact_match']['overall']}, perplexity {rows[name]['perplexity']}")

    prompts = [r["prompt"] for r in read_jsonl(PREPARED / "sft_test.jsonl", "sft")][:params.quantize.speed_prompts]
    speeds = decoding_speeds(models, tokenizer, prompts, params.evaluate.max_new_tokens,
                             (1, params.evaluate.batch_size), params.quantize.speed_rounds)
    reference = rows["fp32"] if "fp32" in rows else next(iter(rows.values()))
    for name, row in rows.items():
        row["tokens_per_s"] = speeds[name]
        row["memory_ratio"] = round(row["memory_mb"] / reference["memory_mb"], 3)
        row["perplexity_change_pct"] = round(100 * (row["perplexity"] / reference["perplexity"] - 1), 2)
        row["quality_pct"] = round(100 * row["exact_match"]["overall"] / reference["exact_match"]["overall"], 1)
        row["speedup"] = {k: round(v / reference["tokens_per_s"][k], 2) for k, v in speeds[name].items()}
    write_table_plot(rows)
    # a list, not a mapping: metrics files sort their keys, and the table reads in this order
    return {"rows": [{"name": name, **row} for name, row in rows.items()], **extra, "method": params.quantize.method}


def write_table_plot(rows: dict[str, dict]) -> None:
    """plots/quantize/table.csv: the table's numeric columns, for `dvc plots` and the report's charts."""
    out = Path("plots/quantize")
    out.mkdir(parents=True, exist_ok=True)
    lines = ["model,memory_mb,disk_mb,exact_match,perplexity,tokens_per_s_batch_1"]
    for name, r in rows.items():
        lines.append(f"{name},{r['memory_mb']},{r['disk_mb'] if r['disk_mb'] is not None else ''},"
                     f"{r['exact_match']['overall']},{r['perplexity']},{r['tokens_per_s']['batch_1']}")
    with atomic_path(out / "table.csv") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
