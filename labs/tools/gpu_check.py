"""The GPU check: what only a GPU shows, in one run on one H100/H200 (sized for the 8 minutes it may take; not yet
timed on one), written to one JSON.

    just gpu-wheels        # on a machine with PyPI: .whl/ gets what a bare GPU image lacks (trl, datasets, bnb)
    just gpu-check         # on the GPU machine: metrics/gpu_check.json, then `just results` adds its column

It stands alone on torch, transformers, peft, trl and bitsandbytes: a GPU image that has the first three and no
network gets the others as wheels (`just gpu-wheels`, 45 MB), and needs none of the project's own dependencies
(pydantic, DVC). So it builds what it trains from scratch: a character tokenizer, two small Llama models (a
target and a 2-layer draft) and rows of additions; nothing comes from a hub. Each check runs on its own and
records either its numbers or the error it met, so one failure costs one row:

- train: a few steps of sft, lora, qlora (bitsandbytes 4-bit) and dpo with TRL's trainers, in fp16 and in bf16
  (fp16 keeps fp32 master weights under autocast, bf16 trains in bf16, as the labs do): loss, speed, peak memory
- attention: one forward and backward through sdpa with the flash backend against the math backend
- kv_cache: greedy generation with and without the KV cache
- speculative: greedy generation with the draft model as assistant against without; the outputs must agree
- continuous_batching: transformers' continuous batching (`generate_batch`) against one request at a time

On a machine without CUDA it refuses (exit 2) unless `--allow-cpu`, which runs the same code with tiny sizes
so that the tests can: those numbers are labelled with their device, and `just results` shows only a CUDA run.
"""

from __future__ import annotations

import argparse
import inspect
import json
import platform
import random
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

from labs.core.run import peak_gpu_mb, reset_peak_memory, write_json  # stdlib only: no pydantic, no DVC

OUT = Path("metrics/gpu_check.json")
METHODS = ("sft", "lora", "qlora", "dpo")
PRECISIONS = ("fp16", "bf16")
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}

# Sizes on a GPU: a 25.8M-parameter target, meant to keep each check to seconds while its kernels rather than
# Python set the pace (not yet timed on a GPU). On CPU (`--allow-cpu`) everything shrinks.
GPU_SIZES = dict(hidden=512, layers=8, heads=8, draft_layers=2, rows=4096, steps=30, warm_steps=300, batch=64,
                 seq=2048, attn_batch=8, new_tokens=128, prompts=64, rounds=3)
CPU_SIZES = dict(hidden=64, layers=2, heads=2, draft_layers=1, rows=256, steps=3, warm_steps=20, batch=8,
                 seq=128, attn_batch=2, new_tokens=8, prompts=4, rounds=1)


def additions(rows: int, seed: int) -> list[dict]:
    """Prompt/completion rows of two- and three-digit additions, with a wrong answer for DPO's rejected side."""
    rng = random.Random(seed)
    out = []
    for _ in range(rows):
        a, b = rng.randint(10, 999), rng.randint(10, 999)
        wrong = a + b + rng.choice([-10, -1, 1, 10])
        out.append({"prompt": f"{a}+{b}=", "completion": str(a + b), "wrong": str(wrong)})
    return out


def tokenizer():
    """One token per character: nothing to train and nothing to download, and every row tokenizes the same."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    vocab = {token: i for i, token in enumerate(specials + [chr(c) for c in range(32, 127)])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")


def llama(tok, size: dict, layers: int, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=size["hidden"], num_hidden_layers=layers,
                         num_attention_heads=size["heads"], num_key_value_heads=size["heads"],
                         intermediate_size=size["hidden"] * 11 // 4, max_position_embeddings=max(size["seq"], 512),
                         pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    return LlamaForCausalLM(config)


def timed(fn, device: str) -> tuple[float, object]:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, result


def train(method: str, precision: str, base: Path, tok, rows: list[dict], size: dict, device: str,
          work: Path) -> dict:
    """`size["steps"]` optimizer steps of one method in one precision, from the saved base model."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM

    if precision == "fp16" and device != "cuda":
        return {"skipped": "fp16 mixed precision needs CUDA (the Trainer refuses it on CPU)"}
    reset_peak_memory()
    dtype = torch.float32 if precision == "fp16" else DTYPES[precision]  # fp16: fp32 master weights, autocast
    load = {"dtype": dtype}
    if method == "qlora":
        from transformers import BitsAndBytesConfig

        load = {"quantization_config": BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=DTYPES[precision])}
    model = AutoModelForCausalLM.from_pretrained(base, **load).to(device) if method != "qlora" else \
        AutoModelForCausalLM.from_pretrained(base, device_map={"": device}, **load)
    adapter = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM") \
        if method in ("lora", "qlora") else None
    common = dict(output_dir=str(work / f"{method}-{precision}"), max_steps=size["steps"],
                  per_device_train_batch_size=size["batch"], learning_rate=1e-3 if adapter else 3e-4,
                  logging_steps=1, save_strategy="no", report_to="none", seed=0, bf16=precision == "bf16",
                  fp16=precision == "fp16", use_cpu=device != "cuda", disable_tqdm=True, dataloader_num_workers=0,
                  gradient_checkpointing=False)  # TRL turns it on by default: it would cost speed, not memory, here
    if method == "dpo":
        from trl import DPOConfig, DPOTrainer

        data = Dataset.from_list([{"prompt": r["prompt"], "chosen": r["completion"], "rejected": r["wrong"]}
                                  for r in rows])
        trainer = DPOTrainer(model=model, args=DPOConfig(**common, beta=0.1), train_dataset=data,
                             processing_class=tok)
    else:
        from trl import SFTConfig, SFTTrainer

        data = Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in rows])
        trainer = SFTTrainer(model=model, args=SFTConfig(**common, max_length=32), train_dataset=data,
                             processing_class=tok, peft_config=adapter)
    seconds, result = timed(trainer.train, device)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return {"steps": result.global_step, "first_loss": round(losses[0], 4), "last_loss": round(losses[-1], 4),
            "seconds": round(seconds, 2), "samples_per_s": round(result.global_step * size["batch"] / seconds, 1),
            "peak_mb": peak_gpu_mb(),
            "trainable_parameters": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)}


def warm(model, tok, rows: list[dict], size: dict, device: str) -> float:
    """Enough plain training (bf16 autocast on CUDA) that target and draft answer alike, which speculative
    decoding needs: random models would agree by accident or not at all. Returns the last loss."""
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    texts = [r["prompt"] + r["completion"] + tok.eos_token for r in rows]
    generator = random.Random(0)
    loss = torch.tensor(float("nan"))
    for _ in range(size["warm_steps"]):
        batch = tok(generator.sample(texts, size["batch"]), return_tensors="pt", padding=True).to(device)
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return round(float(loss), 4)


def attention(model, size: dict, device: str) -> dict:
    """sdpa's flash kernel against its math fallback on one forward and backward of a long batch."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if device != "cuda":
        return {"skipped": "sdpa's flash backend runs on CUDA only"}
    model = model.to(device, torch.bfloat16).train()
    ids = torch.randint(4, model.config.vocab_size, (size["attn_batch"], size["seq"]), device=device)
    seconds = {}
    for name, backend in (("flash", SDPBackend.FLASH_ATTENTION), ("math", SDPBackend.MATH)):
        with sdpa_kernel(backend):
            model(input_ids=ids, labels=ids).loss.backward()  # warm-up
            reset_peak_memory()
            spent, _ = timed(lambda: [model(input_ids=ids, labels=ids).loss.backward()
                                      for _ in range(size["rounds"])], device)
            seconds[name] = (spent / size["rounds"], peak_gpu_mb())
        model.zero_grad(set_to_none=True)
    return {"tokens": size["attn_batch"] * size["seq"], "flash_s": round(seconds["flash"][0], 4),
            "math_s": round(seconds["math"][0], 4), "flash_speedup": round(seconds["math"][0] / seconds["flash"][0], 2),
            "flash_peak_mb": seconds["flash"][1], "math_peak_mb": seconds["math"][1]}


def prompts(tok, rows: list[dict], count: int, device: str) -> list[torch.Tensor]:
    return [tok(r["prompt"], return_tensors="pt").input_ids.to(device) for r in rows[-count:]]


def generate(model, inputs: list[torch.Tensor], size: dict, device: str, **options) -> tuple[float, list]:
    """Greedy, each prompt alone, exactly `new_tokens` tokens (eos ignored, so every variant does the same work)."""
    kwargs = dict(max_new_tokens=size["new_tokens"], min_new_tokens=size["new_tokens"], do_sample=False,
                  pad_token_id=model.config.pad_token_id) | options
    model.generate(inputs[0], **kwargs)  # warm-up
    return timed(lambda: [model.generate(ids, **kwargs)[0].tolist() for ids in inputs], device)


def kv_cache(model, inputs: list, size: dict, device: str) -> dict:
    cached, with_cache = generate(model, inputs, size, device, use_cache=True)
    uncached, without = generate(model, inputs, size, device, use_cache=False)
    tokens = len(inputs) * size["new_tokens"]
    return {"new_tokens": tokens, "cached_tokens_per_s": round(tokens / cached, 1),
            "uncached_tokens_per_s": round(tokens / uncached, 1), "speedup": round(uncached / cached, 2),
            "same_tokens": with_cache == without}


def speculative(model, draft, inputs: list, size: dict, device: str) -> dict:
    plain, alone = generate(model, inputs, size, device)
    assisted, helped = generate(model, inputs, size, device, assistant_model=draft)
    tokens = len(inputs) * size["new_tokens"]
    return {"new_tokens": tokens, "target_tokens_per_s": round(tokens / plain, 1),
            "assisted_tokens_per_s": round(tokens / assisted, 1), "speedup": round(plain / assisted, 2),
            "same_tokens": alone == helped, "draft_layers": draft.config.num_hidden_layers,
            "target_layers": model.config.num_hidden_layers}


def continuous_batching(model, tok, rows: list[dict], size: dict, device: str) -> dict:
    """All prompts handed to transformers' continuous-batching scheduler at once, against one at a time."""
    from transformers import GenerationConfig

    inputs = [tok(r["prompt"]).input_ids for r in rows[-size["prompts"]:]]
    config = GenerationConfig(max_new_tokens=size["new_tokens"], do_sample=False, eos_token_id=-1,
                              pad_token_id=tok.pad_token_id)
    one_by_one, _ = generate(model, [torch.tensor([ids], device=device) for ids in inputs], size, device)
    # the first call sets up the scheduler and captures its CUDA graphs; the timed second call reuses them
    # (transformers releases without `persistent_manager` set up again, and the timing says so)
    accepts = inspect.signature(model.generate_batch).parameters
    keep = "persistent_manager" in accepts
    options = {"persistent_manager": True} if keep else {}
    if "continuous_batching_config" in accepts:
        from transformers import ContinuousBatchingConfig

        # a page of 256 tokens holds a request: left to size itself, the paged cache takes 90% of free memory
        # (14 GB of a CPU's RAM for 4 requests here); sdpa, since flash-attn may not be installed
        options["continuous_batching_config"] = ContinuousBatchingConfig(num_blocks=2 * len(inputs),
                                                                         auto_switch_to_flash=False)
    model.generate_batch(inputs=inputs, generation_config=config, **options)
    batched, outputs = timed(lambda: model.generate_batch(inputs=inputs, generation_config=config, **options),
                             device)
    if keep:
        model.destroy_cached_continuous_batching_manager()
    produced = sum(len(out.generated_tokens) for out in outputs.values())
    sequential = len(inputs) * size["new_tokens"] / one_by_one
    return {"requests": len(inputs), "new_tokens_per_request": size["new_tokens"],
            "sequential_tokens_per_s": round(sequential, 1), "batched_tokens_per_s": round(produced / batched, 1),
            "speedup": round(produced / batched / sequential, 2), "batched_tokens": produced,
            "setup_timed": not keep}


def guarded(results: dict, name: str, fn) -> None:
    """One check's numbers, or its error's last line (the traceback goes to stderr): a failure costs one row."""
    start = time.perf_counter()
    try:
        results[name] = fn()
    except Exception as exc:  # noqa: BLE001 - every check's failure is a result to record, not a crash
        traceback.print_exc()
        first_line = (str(exc).strip().splitlines() or [""])[0]
        results[name] = {"error": f"{type(exc).__name__}: {first_line}"}
    results[name]["wall_s"] = round(time.perf_counter() - start, 1)
    print(f"gpu-check {name}: {json.dumps(results[name])}", flush=True)


def environment(device: str) -> dict:
    import transformers

    versions = {"python": platform.python_version(), "torch": torch.__version__,
                "transformers": transformers.__version__}
    for name in ("peft", "trl", "datasets", "accelerate", "bitsandbytes"):
        try:
            versions[name] = __import__(name).__version__
        except Exception as exc:  # noqa: BLE001 - a missing package is reported, and only its checks fail
            versions[name] = f"missing ({type(exc).__name__})"
    info = {"device": device, "versions": versions}
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info |= {"gpu": props.name, "gpu_memory_gb": round(props.total_memory / 2**30, 1),
                 "capability": f"{props.major}.{props.minor}", "cuda": torch.version.cuda}
    return info


def run(device: str, size: dict, out: Path) -> dict:
    start = time.perf_counter()
    results = {"environment": environment(device)}
    tok = tokenizer()
    rows = additions(size["rows"] + size["prompts"], seed=0)
    train_rows = rows[:size["rows"]]
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        work = Path(tmp)
        target, draft = llama(tok, size, size["layers"], seed=0), llama(tok, size, size["draft_layers"], seed=1)
        results["setup"] = {"target_parameters": target.num_parameters(), "draft_parameters": draft.num_parameters(),
                            "target_loss": warm(target, tok, train_rows, size, device),
                            "draft_loss": warm(draft, tok, train_rows, size, device)}
        target.cpu().save_pretrained(work / "base")
        tok.save_pretrained(work / "base")
        results["train"] = {}
        for method in METHODS:
            for precision in PRECISIONS:
                guarded(results["train"], f"{method}_{precision}",
                        lambda m=method, p=precision: train(m, p, work / "base", tok, train_rows, size, device, work))
        target, draft = target.to(device).eval(), draft.to(device).eval()
        if device == "cuda":
            target, draft = target.to(torch.bfloat16), draft.to(torch.bfloat16)
        inputs = prompts(tok, rows, size["prompts"] // 4 or 1, device)
        guarded(results, "kv_cache", lambda: kv_cache(target, inputs, size, device))
        guarded(results, "speculative", lambda: speculative(target, draft, inputs, size, device))
        guarded(results, "continuous_batching", lambda: continuous_batching(target, tok, rows, size, device))
        guarded(results, "attention", lambda: attention(llama(tok, size, size["layers"], seed=0), size, device))
    results["wall_s"] = round(time.perf_counter() - start, 1)
    write_json(out, results)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m labs.tools.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help="the JSON it writes (default: %(default)s)")
    parser.add_argument("--allow-cpu", action="store_true",
                        help="without CUDA, run the same code at tiny sizes (for tests): no GPU number comes of it")
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not args.allow_cpu:
        print("error: gpu-check: no CUDA device here (torch.cuda.is_available() is False); run it on a GPU "
              "machine, or pass --allow-cpu to try the code at tiny sizes", file=sys.stderr)
        return 2
    results = run(device, GPU_SIZES if device == "cuda" else CPU_SIZES, args.out)
    failed = [name for name, row in {**results["train"], **results}.items()
              if isinstance(row, dict) and "error" in row]
    print(f"gpu-check: {args.out} written in {results['wall_s']} s on "
          f"{results['environment'].get('gpu', device)}; failed: {', '.join(failed) or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
