"""Benchmarks: speed and memory ratios measured side by side in one process (never in timed unit tests).

    just bench compression     # fp32 SFT model vs distilled student vs the saved quantized models
    just bench kernels         # training speed with the CPU kernels pinned (exact everywhere) and fast

Each model decodes the same held-out prompts for the same number of new tokens, in interleaved rounds
(labs/core/evaluation.py `decoding_speeds`), so load from other processes hits every model alike and the
printed ratios compare like with like. Reads the models the curriculum left in models/.
"""

from __future__ import annotations

import sys
from pathlib import Path

from transformers import AutoModelForCausalLM

from labs.core.data import read_jsonl
from labs.core.evaluation import decoding_speeds, tensor_bytes
from labs.core.models import load_model, load_tokenizer, require
from labs.core.run import seed_everything
from labs.registry import all_params

BENCHES = {"compression": "tokens/s and memory of the SFT model, the distilled student and the quantized models",
           "kernels": "training steps/s and the weights they give: the CPU kernels pinned to AVX2 (the default), with "
                      "1 thread, with MKL's vendor-neutral COMPATIBLE branch, and with LAB_FAST_KERNELS=1"}

# One setting's training speed, in a process of its own: the kernel pins act only before torch loads.
TRAINING_STEPS = """
import hashlib, sys, time
import labs, torch
from labs.core.models import load_model
from labs.core.run import seed_everything
seed_everything(0)
model = load_model("models/pretrain", training=True)
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
ids = torch.randint(0, model.config.vocab_size, (16, 128))
steps = int(sys.argv[1])
for step in range(steps + 2):  # two warm-up steps
    if step == 2:
        start = time.perf_counter()
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    optimizer.zero_grad()
seconds = time.perf_counter() - start
digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.parameters())).hexdigest()[:12]
print(torch.backends.cpu.get_cpu_capability(), digest, steps / seconds)
"""


def compression(rounds: int = 15) -> str:
    params = all_params()
    seed_everything(params.seed)
    sft = require(Path("models/sft"), "config.json", "sft")
    tokenizer = load_tokenizer(sft)
    models = {"fp32": load_model(sft)}
    if (Path("models/distill/student") / "config.json").exists():
        models["distilled"] = load_model("models/distill/student")
    for folder in sorted(Path("models/quantize").glob("*/config.json")):
        # each saved with its quantization config; an explicit fp32 dtype breaks loading saved NF4 weights
        # (transformers 5.23 then expects unquantized shapes), so the checkpoint's own dtype applies
        models[folder.parent.name] = AutoModelForCausalLM.from_pretrained(folder.parent, use_safetensors=True,
                                                                          trust_remote_code=False)
    prompts = [r["prompt"] for r in read_jsonl("data/prepared/sft_test.jsonl", "sft")][:params.evaluate.speed_prompts]
    speeds = decoding_speeds(models, tokenizer, prompts, params.evaluate.max_new_tokens,
                             (1, params.evaluate.batch_size), rounds)
    memory = {name: tensor_bytes(model) for name, model in models.items()}
    keys = list(speeds["fp32"])
    lines = [f"{'model':<20}{'memory MB':>10}{'x fp32':>8}" + "".join(f"{k + ' tok/s':>18}{'x fp32':>8}" for k in keys)]
    for name in models:
        row = f"{name:<20}{memory[name] / 2**20:>10.2f}{memory[name] / memory['fp32']:>8.2f}"
        row += "".join(f"{speeds[name][k]:>18.0f}{speeds[name][k] / speeds['fp32'][k]:>8.2f}" for k in keys)
        lines.append(row)
    return "\n".join(lines)


def kernels(rounds: int = 5, steps: int = 20) -> str:
    """What exactness costs on this CPU, and what each setting computes: steps/s of the pretrained model (batch
    16 x 128 tokens) and a digest of the weights after the steps, per setting, each in its own process (the pins
    act only before torch loads), alternating for `rounds` rounds so load from elsewhere hits all alike; the best
    round of each counts. Equal digests mean equal bits: pinned with 1 and 2 threads should agree; MKL honours
    its AVX2 branch on Intel CPUs only, COMPATIBLE on every vendor."""
    import os
    import subprocess

    from labs.core import kernels as pins

    require(Path("models/pretrain"), "config.json", "pretrain")
    clean = {name: value for name, value in os.environ.items() if name not in pins.PINS and name != pins.FAST_SWITCH}
    settings = {"pinned": clean | {"LAB_THREADS": "2"}, "pinned, 1 thread": clean | {"LAB_THREADS": "1"},
                "pinned, MKL COMPATIBLE": clean | {"LAB_THREADS": "2", "MKL_CBWR": "COMPATIBLE"},
                "fast": clean | {"LAB_THREADS": "2", pins.FAST_SWITCH: "1"}}
    best, capability, digest = dict.fromkeys(settings, 0.0), {}, {}
    for _ in range(rounds):
        for name, env in settings.items():
            out = subprocess.run([sys.executable, "-c", TRAINING_STEPS, str(steps)], env=env, check=True,
                                 capture_output=True, text=True).stdout.split()
            capability[name], digest[name], best[name] = out[-3], out[-2], max(best[name], float(out[-1]))
    cpu = pins.cpu()
    return "\n".join([f"cpu: {cpu['model']} ({' '.join(cpu['flags'])}); best of {rounds} rounds of {steps} steps",
                      *(f"{name:<24}{capability[name]:<8}weights {digest[name]}{best[name]:8.2f} steps/s"
                        for name in settings),
                      f"fast / pinned: {best['fast'] / best['pinned']:.2f}x; MKL COMPATIBLE / pinned: "
                      f"{best['pinned, MKL COMPATIBLE'] / best['pinned']:.2f}x"])


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in BENCHES:
        print(f"error: expected one benchmark name: {', '.join(BENCHES)}", file=sys.stderr)
        return 2
    print(compression() if argv[0] == "compression" else kernels())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
