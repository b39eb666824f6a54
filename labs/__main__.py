"""`lab NAME` / `python -m labs NAME`: run one lab with params.yaml (plus -S overrides).

DVC calls exactly this command for every stage. A lab module exposes `run(params) -> metrics`; the
metrics are written to metrics/<lab>.json with the run's wall time, peak memory and device.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from labs.core.config import PARAMS_FILE, ConfigError, load_params
from labs.core.data import CONVERTERS, DataError, convert

# name -> one line; the module is labs/<name>.py. Order = curriculum order.
LABS = {
    "data": "generate the task world (corpus, SFT, preference, RL prompts) into data/raw",
    "prepare": "validate data/raw against the data contract and carve validation splits",
    "tokenizer": "train a byte-level BPE tokenizer with a chat template",
    "pretrain": "pretrain a tiny Llama from scratch on the corpus (GPU tiers: start from a hub model)",
    "sft": "supervised fine-tuning with TRL SFTTrainer, loss on completions only",
    "lora": "the sft task through a PEFT adapter: LoRA, or DoRA / prefix / prompt / (IA)^3 by one param",
    "qlora": "LoRA on a 4-bit NF4 base quantized by bitsandbytes",
    "peft_methods": "every PEFT method against full SFT: one table of cost and quality",
    "reward": "a Bradley-Terry reward model on preference pairs with TRL RewardTrainer",
    "dpo": "preference optimisation of the SFT model: DPO, or IPO / KTO / ORPO / SimPO by one param",
    "ppo": "RLHF with PPO: policy, value model, frozen reward model and reference, KL penalty",
    "grpo": "GRPO with a verifiable reward: exact match of the answer plus a format reward",
    "distill": "knowledge distillation of the SFT model into a 14x smaller student, against hard labels only",
    "prune": "magnitude pruning at several sparsities, each with a short recovery fine-tune",
    "quantize": "int8 / NF4 / torch.ao / torchao quantization and QAT: the compression table",
    "decode": "decoding strategies side by side: exact-match against diversity, reward and tokens/s",
    "attention": "attention implementations and KV cache on / off / static: tokens/s and cache memory",
    "speculative": "assisted generation with the distilled student as draft, and prompt lookup decoding",
    "serve": "an OpenAI-compatible server (transformers serve) under load against sequential generate",
    "evaluate": "exact-match per task family and perplexity for every model, one table",
}


def _usage() -> str:
    width = max(map(len, LABS))
    lines = [f"  {name:<{width}}  {doc}" for name, doc in LABS.items()]
    return (
        "usage: lab NAME [-S KEY=VALUE ...] [--params FILE]\n"
        "       lab convert FORMAT IN.jsonl[.gz] OUT.jsonl[.gz]\n\nlabs:\n" + "\n".join(lines)
        + "\n\n`lab NAME --help` explains one lab."
    )


def _fail(message: str, code: int = 2) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def run_lab(name: str, argv: list[str]) -> int:
    module = importlib.import_module(f"labs.{name}")
    parser = argparse.ArgumentParser(
        prog=f"lab {name}", description=module.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a param, e.g. -S sft.lr=3e-4 (same syntax as `dvc exp run -S`)")
    parser.add_argument("--params", default=PARAMS_FILE, help="params file (default: %(default)s)")
    args = parser.parse_args(argv)

    params = load_params(args.params, args.set)
    import datasets
    import transformers

    from labs.core.run import RunStats, seed_everything, write_json

    # Per-example progress bars drown the trainer's loss log in DVC's output.
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()

    stats = RunStats()
    seed_everything(params.seed)
    metrics = module.run(params)
    if metrics:
        from labs.core.models import device_name

        write_json(f"metrics/{name}.json", metrics | {"run": stats.as_dict(device_name(params))})
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "list"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    try:
        if name == "names":  # for scripts (the justfile): lab names, or with --evaluated the evaluated ones
            print("\n".join(load_params().evaluate.models if "--evaluated" in rest else LABS))
            return 0
        if name == "convert":
            if len(rest) != 3 or rest[0] in ("-h", "--help"):
                print(f"usage: lab convert FORMAT IN OUT   (FORMAT: text, {', '.join(CONVERTERS)})")
                return 0 if rest[:1] in (["-h"], ["--help"]) else 2
            count = convert(*rest)
            print(f"convert: {count} rows -> {rest[2]}")
            return 0
        if name not in LABS:
            return _fail(f"unknown lab {name!r} (expected one of: {', '.join(LABS)}, convert)")
        return run_lab(name, rest)
    except (ConfigError, DataError) as exc:
        return _fail(str(exc))


if __name__ == "__main__":
    sys.exit(main())
