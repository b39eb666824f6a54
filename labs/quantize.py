"""quantize — post-training quantization of the SFT model (and QAT), and the compression table.

    just lab quantize
    dvc exp run -S quantize.method=nf4      # one method: int8 | nf4 | dynamic_int8 | torchao_int8 |
                                            #   torchao_int4 | qat_int4 | gptq | awq | gguf_f16 |
                                            #   gguf_q8_0 | gguf_q4_0   (all: every one this device runs)

Methods, each a maintained library's own path:
  * int8         — bitsandbytes LLM.int8(): int8 weights, outlier columns kept in 16 bits,
  * nf4          — bitsandbytes 4-bit NormalFloat with double quantization (QLoRA's storage format),
  * dynamic_int8 — torch.ao dynamic quantization: int8 weights, activations quantized per batch on the fly
                   (deprecated upstream in favour of torchao; kept because it is the fastest on CPU),
  * torchao_int8 — torchao int8 weight-only,
  * torchao_int4 — torchao int4 weight-only, one scale per `group_size` weights,
  * qat_int4     — quantization-aware training: torchao fake-quantizes the weights to int4 during a short
                   fine-tune on the sft task (`qat`), then the same int4 conversion as torchao_int4,
  * gptq, awq    — GPU tiers only (their kernels need CUDA): a clear error on a CPU,
  * gguf_f16, gguf_q8_0, gguf_q4_0 — GGUF export for llama.cpp: llama.cpp's own HF->GGUF converter writes
                   f16 / q8_0, llama.cpp's quantizer makes q4_0 from the f16 file, and the rows are measured
                   in llama.cpp's runtime (llama-cpp-python). `just llama-cpp` builds both from one pinned
                   source release (part of `just setup`).
bitsandbytes 0.50.2 and torchao 0.18 run all the others on a CPU.

Every row of the table is measured in this process, the same way: parameters, size on disk (the saved
safetensors), memory footprint (bytes of every tensor the model holds: `get_memory_footprint()` is wrong
for torchao and torch.ao), greedy tokens/s (side by side, interleaved: `decoding_speeds`), perplexity of
the held-out answers, held-out exact-match, and quality as % of the fp32 SFT model's exact-match. The rows
also cover the pruned models (`prune`) and the distilled student (`distill`), fp32 and quantized
(`student_methods`), so the whole compression comparison is one table from one run.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field

from labs.core.config import SEED, ConfigError, Section, Seed, Tier, TrainParams, view
from labs.core.data import chat_prompt, read_jsonl
from labs.core.evaluation import (
    SINGLE_PROMPTS,
    MeasureParams,
    chat_batch,
    decoding_speeds,
    exact_match,
    perplexity,
    share_pct,
    tensor_bytes,
)
from labs.core.gguf import export_gguf
from labs.core.models import DTYPES, count_parameters, load_model, load_tokenizer, require, use_gpu
from labs.core.run import atomic_path, safetensors_mb, save_model, write_csv
from labs.core.train import PREPARED, finetune, held_out_answers

QuantMethod = Literal["int8", "nf4", "dynamic_int8", "torchao_int8", "torchao_int4", "qat_int4", "gptq", "awq",
                      "gguf_f16", "gguf_q8_0", "gguf_q4_0"]


class QATParams(TrainParams):
    """QAT's fine-tune with int4 fake-quantized weights: sft's data, a fifth of an epoch."""

    max_length: int = Field(128, gt=0)
    batch_size: int = Field(16, gt=0)
    max_steps: int = 100
    """steps of the QAT fine-tune"""
    lr: float = Field(1e-4, gt=0)
    warmup_steps: int = Field(10, ge=0)


class QuantizeParams(Section):
    """Post-training quantization (and QAT) of the SFT model and the distilled student."""

    method: Literal["all"] | QuantMethod = "all"  # all: every method this device can run, one row each
    """one method, or all: every method this device can run, one row each"""
    models: list[Literal["sft", "distill"]] = ["sft", "distill"]
    """directories under models/ that are quantized"""
    student_methods: list[QuantMethod] = ["int8", "nf4"]
    """the distilled student's quantized rows"""
    group_size: int = Field(32, gt=0)
    """torchao int4 / QAT: weights per quantization scale"""
    qat: QATParams = QATParams()
    """quantization-aware training's fine-tune with int4 fake-quantized weights"""


# the keys of the evaluate section this lab's held-out measurements use
Measurement = view(MeasureParams, "max_new_tokens", "batch_size", "precision", "speed_prompts", "speed_rounds")


class Params(Section):
    """What quantize reads from params.yaml."""

    seed: Seed = SEED
    tier: Tier = "cpu"
    quantize: QuantizeParams = QuantizeParams()
    evaluate: Measurement = Measurement()


SFT, STUDENT, PRUNED, OUT = Path("models/sft"), Path("models/distill/student"), Path("models/prune"), Path(
    "models/quantize")
CPU_METHODS = ["int8", "nf4", "dynamic_int8", "torchao_int8", "torchao_int4", "qat_int4"]
GPU_METHODS = ["gptq", "awq"]
GGUF_METHODS = ["gguf_f16", "gguf_q8_0", "gguf_q4_0"]


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
        # load_model keeps bitsandbytes on its plain 4-bit path: its AVX512-BF16 repacking fails for the 96-wide
        # student ("shape '[96, 1]' is invalid") and would compute otherwise than CPUs without AVX512-BF16
        return load_model(path, precision, quantization_config=BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=DTYPES[precision]))
    if method == "dynamic_int8":
        model = load_model(path, "fp32")
        return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    if method in ("torchao_int8", "torchao_int4"):
        config = TorchAoConfig(torchao_config(method, params.quantize.group_size))
        return load_model(path, precision, quantization_config=config)
    if method in GPU_METHODS:
        if not use_gpu(params):
            raise ConfigError(f"params.yaml: quantize.method: {method} needs a CUDA GPU (GPU tiers' images); "
                            f"on a CPU use one of {', '.join(CPU_METHODS)}")
        from transformers import AwqConfig, GPTQConfig

        tokenizer = load_tokenizer(path)
        calibration = [r["text"] for r in read_jsonl(PREPARED / "corpus_train.jsonl", "text")[:256]]
        config = (GPTQConfig(bits=4, dataset=calibration, tokenizer=tokenizer) if method == "gptq"
                  else AwqConfig(bits=4))
        return load_model(path, precision, quantization_config=config)
    raise ConfigError(f"params.yaml: quantize.method: unknown method {method!r}")


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
    fake_quantized = exact_match(*held_out_answers(trainer.model, tokenizer, params))
    for name, module in list(trainer.model.named_modules()):
        if isinstance(module, FakeQuantizedLinear):  # back to plain linears with the trained weights
            parent, _, child = name.rpartition(".")
            setattr(trainer.model.get_submodule(parent), child, module.to_linear())
    with tempfile.TemporaryDirectory() as scratch:
        save_model(trainer.model, tokenizer, Path(scratch) / "model", card)
        model = load_quantized(Path(scratch) / "model", "torchao_int4", params)
    return model, {"val_loss": result["val_loss"], "train_time_s": result["train_time_s"],
                   "exact_match_fake_quantized": fake_quantized["overall"]}


class GGUFModel:
    """A GGUF file in llama.cpp's runtime, measured like the torch rows: prompts are our tokenizer's ids (chat
    template applied), so every row sees identical inputs, and greedy decoding is llama.cpp's sampler at
    temperature 0."""

    def __init__(self, path: Path, tokenizer):
        from llama_cpp import Llama

        self.path, self.tokenizer = path, tokenizer
        self.llm = Llama(model_path=str(path), n_ctx=512, n_batch=512, n_threads=torch.get_num_threads(),
                         logits_all=True, seed=0, verbose=False)

    def prompt_text(self, prompt: str) -> str:
        return chat_prompt(self.tokenizer, prompt)

    def prompt_ids(self, prompt: str) -> list[int]:
        return self.tokenizer(self.prompt_text(prompt), add_special_tokens=False)["input_ids"]

    def complete(self, prompt: str, max_new_tokens: int, stop: bool = True) -> list[int]:
        new = []
        for token in self.llm.generate(self.prompt_ids(prompt), temp=0.0, top_k=1, reset=True):
            if stop and token == self.tokenizer.eos_token_id:
                break
            new.append(token)
            if len(new) == max_new_tokens:
                break
        return new

    def answers(self, prompts: list[str], max_new_tokens: int) -> list[str]:
        return [self.tokenizer.decode(self.complete(p, max_new_tokens), skip_special_tokens=True) for p in prompts]

    def perplexity(self, prompts: list[str], answers: list[str]) -> float:
        """Same tokens and labels as labs/core/evaluation.py `perplexity`, scored from llama.cpp's logits."""
        total, count = 0.0, 0
        for prompt, answer in zip(prompts, answers, strict=True):
            ids, attention, labels = chat_batch(self.tokenizer, [prompt], [answer])
            length = int(attention.sum())
            self.llm.reset()
            self.llm.eval(ids[0, :length].tolist())
            logits = torch.from_numpy(self.llm.scores[:length - 1].copy()).float()
            total += torch.nn.functional.cross_entropy(logits, labels[0, 1:length], ignore_index=-100,
                                                       reduction="sum").item()
            count += int((labels[0, 1:length] != -100).sum())
        return round(float(torch.tensor(total / count).exp()), 4)

    def tokenizer_agreement(self, prompts: list[str]) -> float:
        """% of chat prompts that llama.cpp's own tokenizer splits exactly as ours (its pre-tokenizer check)."""
        same = 0
        for prompt in prompts:
            same += self.llm.tokenize(self.prompt_text(prompt).encode(), add_bos=False, special=True) == \
                self.prompt_ids(prompt)
        return round(100 * same / len(prompts), 2)

    def tokens_per_s(self, prompts: list[str], new_tokens: int, rounds: int) -> float:
        """Greedy tokens/s one prompt at a time, exactly `new_tokens` each (EOS ignored), best of `rounds`."""
        best = 0.0
        for _ in range(rounds):
            started = time.perf_counter()
            for prompt in prompts:
                self.complete(prompt, new_tokens, stop=False)
            best = max(best, len(prompts) * new_tokens / (time.perf_counter() - started))
        return round(best, 1)


def plan(params: Params) -> list[tuple[str, Path, str | None]]:
    """(row name, weights, quantization method or None) for every row of the table."""
    cfg = params.quantize
    methods = (CPU_METHODS + (GPU_METHODS if use_gpu(params) else []) + GGUF_METHODS if cfg.method == "all"
               else [cfg.method])
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
    models, gguf, rows, extra = {}, {}, {}, {}
    test = read_jsonl(PREPARED / "sft_test.jsonl", "sft")
    with atomic_path(OUT) as tmp:
        for name, path, method in plan(params):
            folder = tmp / name.replace(" + ", "_").replace(" ", "_")
            if method in GGUF_METHODS:
                gguf[name] = GGUFModel(export_gguf(path, method, folder), tokenizer)
                rows[name] = gguf_row(gguf[name], path, method, test, params)
                continue
            if method == "qat_int4":
                model, extra["qat"] = quantization_aware(params, path, tokenizer)
            else:
                model = load_quantized(path, method, params) if method else load_model(path, params.evaluate.precision)
            saved = method != "dynamic_int8"  # torch.ao's packed modules serialize through pickle only
            if saved and method:
                save_model(model, tokenizer, folder, {"lab": "quantize", "method": method, "source": str(path)})
            rows[name] = torch_row(model, tokenizer, path, method, folder if method else path, saved, params)
            models[name] = model
            print(f"quantize: {name}: {rows[name]['memory_mb']} MB, exact-match "
                  f"{rows[name]['exact_match']['overall']}, perplexity {rows[name]['perplexity']}")

    prompts = [r["prompt"] for r in test][:params.evaluate.speed_prompts]
    speeds = decoding_speeds(models, tokenizer, prompts, params.evaluate.max_new_tokens,
                             (1, params.evaluate.batch_size), params.evaluate.speed_rounds)
    for name, model in gguf.items():  # llama.cpp's Python API decodes one sequence at a time: no batch column
        speeds[name] = {"batch_1": model.tokens_per_s(prompts[:SINGLE_PROMPTS], params.evaluate.max_new_tokens,
                                                       params.evaluate.speed_rounds), "batch_64": None}
        model.llm.close()  # now, not in a destructor at interpreter exit (llama.cpp's is already unloaded then)
    reference = rows["fp32"] if "fp32" in rows else next(iter(rows.values()))
    for name, row in rows.items():
        row["tokens_per_s"] = speeds[name]
        row["memory_ratio"] = round(row["memory_mb"] / reference["memory_mb"], 3)
        row["perplexity_change_pct"] = round(100 * (row["perplexity"] / reference["perplexity"] - 1), 2)
        row["quality_pct"] = share_pct(row["exact_match"]["overall"], reference["exact_match"]["overall"])
        row["speedup"] = {k: round(v / reference["tokens_per_s"][k], 2) if v else None
                          for k, v in speeds[name].items()}
    write_csv("plots/quantize/table.csv",  # the table's numeric columns
              ["model", "memory_mb", "disk_mb", "exact_match", "perplexity", "tokens_per_s_batch_1"],
              [[name, r["memory_mb"], r["disk_mb"], r["exact_match"]["overall"], r["perplexity"],
                r["tokens_per_s"]["batch_1"]] for name, r in rows.items()])
    # a list, not a mapping: metrics files sort their keys, and the table reads in this order
    return {"rows": [{"name": name, **row} for name, row in rows.items()], **extra, "method": params.quantize.method}


def compression_row(source: Path, method: str | None, disk_mb: float | None, memory_mb: float,
                    perplexity: float, exact_match: dict, **extra) -> dict:
    """One row of the compression table: the weights it came from (parameters counted before quantization)
    and what its format costs and keeps."""
    full = load_model(source, "fp32")
    return {
        "source": str(source),
        "method": method or "fp32",
        "parameters": count_parameters(full),
        "nonzero_parameters": int(sum(int(p.count_nonzero()) for p in full.parameters())),
        "disk_mb": disk_mb,
        "memory_mb": memory_mb,
        "perplexity": perplexity,
        "exact_match": exact_match,
    } | extra


def torch_row(model, tokenizer, source: Path, method: str | None, saved_at: Path, saved: bool, params: Params) -> dict:
    test, completions = held_out_answers(model, tokenizer, params)
    # on the held-out answers given their prompts: what the model is for (after SFT, prose perplexity measures
    # how much of pretraining it forgot, not how well it answers)
    prompts, answers = [r["prompt"] for r in test], [r["completion"] for r in test]
    answer_perplexity = perplexity(model, tokenizer, answers, prompts=prompts)
    return compression_row(source, method, safetensors_mb(saved_at) if saved else None,
                           round(tensor_bytes(model) / 2**20, 3), answer_perplexity, exact_match(test, completions))


def gguf_row(model: GGUFModel, source: Path, method: str, test: list[dict], params: Params) -> dict:
    prompts = [r["prompt"] for r in test]
    size_mb = round(model.path.stat().st_size / 2**20, 3)
    # llama.cpp maps the file's tensors into memory as they are stored: the footprint is the file
    row = compression_row(source, method, size_mb, size_mb, model.perplexity(prompts, [r["completion"] for r in test]),
                          exact_match(test, model.answers(prompts, params.evaluate.max_new_tokens)),
                          tokenizer_agreement_pct=model.tokenizer_agreement(prompts))
    print(f"quantize: {method}: {size_mb} MB, exact-match {row['exact_match']['overall']}, perplexity "
          f"{row['perplexity']}, llama.cpp tokenizes {row['tokenizer_agreement_pct']}% of prompts as ours")
    return row
