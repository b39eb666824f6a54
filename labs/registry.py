"""The curriculum: every lab, in order. The single list the CLI, `lab list`, the tables of evaluated models and
the tests' build order read; `tests/test_registry.py` checks dvc.yaml against it.

A lab NAME is the module `labs/NAME.py` (or the package `labs/NAME/`), the section NAME of params.yaml and the
DVC stage NAME. Its module defines `Params` (every params.yaml section it reads, its own first) and
`run(params) -> metrics`. Adding a lab touches its module, one line here, its params.yaml section and its stage.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from pydantic import create_model

from labs.core.config import PARAMS_FILE, ConfigError, Section, View, load_params

# name -> one line. `data` writes data/raw, which data.dvc tracks: the one lab without a stage of its own.
LABS = {
    "data": "generate the task world (corpus, SFT, preference, RL prompts) into data/raw",
    "prepare": "validate data/raw against the data contract and carve validation splits",
    "tokenizer": "train a byte-level BPE tokenizer with a chat template",
    "pretrain": "pretrain a tiny Llama from scratch on the corpus (GPU tiers: start from a hub model)",
    "objectives": "five pretraining objectives at one token budget, then one probe with 1/10/100% of the labels",
    "embeddings": "contrastive sentence embeddings (SimCSE, supervised pairs) on our bodies: retrieval recall and MRR",
    "cpt": "continued pretraining on a domain the base never saw: adaptation against forgetting, with replay",
    "sft": "supervised fine-tuning with TRL SFTTrainer, loss on completions only",
    "sft_variants": "sft's variants side by side: randomized templates and KL to the base against plain SFT",
    "cot": "chain-of-thought supervision: long additions with and without worked steps, in and beyond their lengths",
    "curriculum": "easy-to-hard, random and hard-to-easy orderings of the same rows: exact-match curves",
    "mixing": "one model on a mixture of the task families against a specialist per family, at equal compute",
    "continual": "the families learned one after another: forgetting, and replay and one adapter per task against it",
    "rag": "retrieval-augmented answers: embeddings + FAISS over the document store, the SFT model fine-tuned to read",
    "lora": "the sft task through a PEFT adapter: LoRA, or DoRA / prefix / prompt / (IA)^3 by one param",
    "qlora": "LoRA on a 4-bit NF4 base quantized by bitsandbytes",
    "peft_methods": "every PEFT method against full SFT: one table of cost and quality",
    "scale": "data-parallel training on several processes: DDP, FSDP2, ZeRO-2 and ZeRO-3 against one process",
    "label": "human preference labelling: pairs of answers to judge, and a page to judge them (`just label`)",
    "reward": "a Bradley-Terry reward model on preference pairs with TRL RewardTrainer",
    "dpo": "preference optimisation of the SFT model: DPO, or IPO / KTO / ORPO / SimPO by one param",
    "ppo": "RLHF with PPO: policy, value model, frozen reward model and reference, KL penalty",
    "grpo": "GRPO with a verifiable reward: exact match of the answer plus a format reward",
    "multiobjective": "helpfulness and harmlessness reward models, DPO on their weighted sum per w: the Pareto table",
    "distill": "knowledge distillation of the SFT model into a 14x smaller student, against hard labels only",
    "rlaif": "RLAIF: the SFT model taught to judge labels the student's own answer pairs; DPO on AI vs checker labels",
    "selfinstruct": "self-instruct: a vanilla LM writes, answers and filters its own tasks from a seed set",
    "constitution": "Constitutional AI: a helpful-only model critiques and rewrites its replies; SFT and DPO on them",
    "prune": "magnitude pruning at several sparsities, each with a short recovery fine-tune",
    "quantize": "int8 / NF4 / torch.ao / torchao quantization and QAT: the compression table",
    "decode": "decoding strategies side by side: exact-match against diversity, reward and tokens/s",
    "attention": "attention implementations and KV cache on / off / static: tokens/s and cache memory",
    "speculative": "assisted generation with the distilled student as draft, and prompt lookup decoding",
    "serve": "vLLM, llama-server and transformers serve under one load, against sequential generate",
    "evaluate": "exact-match per task family and perplexity for every model, one table",
}
STAGELESS = {"data"}
# every top-level key params.yaml may hold: a misspelt section fails instead of being ignored
SECTIONS = {"seed", "tier", *LABS}


def module(name: str):
    """The lab's module (imports its libraries: torch, transformers, trl ...)."""
    if name not in LABS:
        raise ConfigError(f"unknown lab {name!r} (expected one of: {', '.join(LABS)})")
    return importlib.import_module(f"labs.{name}")


def lab_params(name: str, path: str | Path = PARAMS_FILE, overrides: list[str] = ()) -> Section:
    """What lab `name` reads from params.yaml, validated."""
    return load_params(module(name).Params, path, overrides, known=SECTIONS)


def all_params_schema() -> type[Section]:
    """Every section of params.yaml with the class of the lab that owns it (a lab's view of another lab's
    section gives way to the owner's full class)."""
    fields = {}
    for name in LABS:
        for key, field in module(name).Params.model_fields.items():
            taken = fields.get(key, (None,))[0]
            if key == name or taken is None or (isinstance(taken, type) and issubclass(taken, View)):
                fields[key] = (field.annotation, field)
    return create_model("Params", __base__=Section, **fields)


def all_params(path: str | Path = PARAMS_FILE, overrides: list[str] = ()) -> Section:
    """The whole of params.yaml, validated (tools and tests; a lab reads just its own `Params`)."""
    return load_params(all_params_schema(), path, overrides, known=SECTIONS)
