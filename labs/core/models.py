"""Tokenizer and model factory: the tiny from-scratch Llama, hub / local loading, dtype and attention per
tier, and the TrainingArguments every lab shares."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
)

from labs.core.config import ModelShape, Processes, Section, TrainParams
from labs.core.data import DataError
from labs.core.run import lab_processes, strategy_kwargs

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

# One chat template for every model this project trains (and for hub models that ship none).
# `{% generation %}` marks the assistant's tokens so trainers can mask everything else (assistant_only_loss);
# the end-of-turn token is EOS, so a model that learned the format stops by itself (GRPO/PPO rely on it).
END_OF_TURN = "<|end|>"
SPECIAL_TOKENS = ["<|pad|>", END_OF_TURN, "<|system|>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|assistant|>\\n' }}{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}"
    "{% else %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + eos_token + '\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)


def use_gpu(params) -> bool:
    """Whether this run uses the GPU: a GPU tier (`params.tier`) on a machine that has one."""
    return params.tier != "cpu" and torch.cuda.is_available()



def require(path: str | Path, marker: str, produced_by: str) -> Path:
    """`path` if it holds `marker` (e.g. config.json), else a one-line error naming the lab that makes it."""
    path = Path(path)
    if not (path / marker).exists():
        raise DataError(f"{path}: missing {marker} (run `just lab {produced_by}` first)")
    return path


def _unloadable(path, exc: OSError) -> DataError:
    where = "local directory" if Path(path).is_dir() else "local directory nor a hub model that could be fetched"
    return DataError(f"{path}: cannot load a model or tokenizer (not a complete {where}: {str(exc).splitlines()[0]})")


def load_tokenizer(path: str | Path):
    # trust_remote_code stays off: only tokenizers transformers itself implements are loaded.
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
    except OSError as exc:
        raise _unloadable(path, exc) from None
    # How this process may reach the hub (HF_HUB_OFFLINE) is not a property of the tokenizer: kept out of the
    # configs it saves, so a model directory does not depend on the environment it was built in
    tokenizer.init_kwargs.pop("local_files_only", None)
    if tokenizer.pad_token is None:  # many hub models ship without one; EOS is the usual stand-in
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.chat_template is None:
        tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def load_model(path: str | Path, precision: str = "fp32", attn_implementation: str = "sdpa",
               training: bool = False, quantization_config=None):
    """A causal LM from a local directory or a hub id: safetensors only, no remote code.

    For fp16 training the weights stay fp32: the Trainer's fp16 autocast needs fp32 master weights
    (fp16 weights fail at gradient unscaling). bf16 trains in bf16 directly. A `quantization_config`
    (bitsandbytes) quantizes the linear layers while loading; on a GPU they are placed there at once.
    """
    dtype = torch.float32 if training and precision == "fp16" else DTYPES[precision]
    placement = {"device_map": {"": 0}} if quantization_config is not None and torch.cuda.is_available() else {}
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(path), dtype=dtype, attn_implementation=attn_implementation, quantization_config=quantization_config,
            use_safetensors=True, trust_remote_code=False, **placement,
        )
    except OSError as exc:
        raise _unloadable(path, exc) from None
    return plain_4bit_matmul(model)


def plain_4bit_matmul(model):
    """bitsandbytes 0.50.2's 4-bit layers on the same arithmetic on every CPU.

    On CPUs with AVX512-BF16 its first forward without gradients repacks each 4-bit weight for a bf16 inference
    kernel: other numbers than on CPUs without it, no gradient through the layer afterwards (QLoRA then trained
    nothing below it: 7% exact-match instead of LoRA's 95.5%), and a failure for widths outside the kernel's
    block. Its dequantize-then-matmul path, which every CPU has, serves every shape and trains.
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
    return model


def load_reward_model(path: str | Path, precision: str = "fp32", training: bool = False, quiet: bool = False):
    """A causal LM's body with a scalar head (reward and value models). From a causal LM checkpoint the
    head is new (seeded init) and the LM head is dropped; from a reward model it is that model."""
    from transformers.utils import logging as hf_logging

    dtype = torch.float32 if training and precision == "fp16" else DTYPES[precision]
    verbosity = hf_logging.get_verbosity()
    if quiet:  # "newly initialized: score.weight" is the point here, not a warning
        hf_logging.set_verbosity_error()
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            str(path), num_labels=1, dtype=dtype, use_safetensors=True, trust_remote_code=False)
    except OSError as exc:
        raise _unloadable(path, exc) from None
    finally:
        hf_logging.set_verbosity(verbosity)
    return model


def build_llama(shape: ModelShape, tokenizer, attn_implementation: str = "sdpa") -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=shape.hidden_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_kv_heads,
        intermediate_size=shape.intermediate_size,
        max_position_embeddings=shape.max_position_embeddings,
        tie_word_embeddings=True,  # at this size the embedding is a large share of all parameters
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        attn_implementation=attn_implementation,
    )
    return LlamaForCausalLM(config)


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def trainer_kwargs(params: Section, train: TrainParams, output_dir: Path) -> dict:
    """TrainingArguments shared by every trainer (TRL configs accept the same keywords).

    TRL configs default to bf16 and gradient checkpointing: on this kind of CPU bf16 is ~19x slower and
    checkpointing ~40% slower, so both come from params and are off on the CPU tier.
    """
    gpu = use_gpu(params)
    kwargs = dict(
        output_dir=str(output_dir),
        seed=params.seed,
        data_seed=params.seed,
        full_determinism=not gpu,  # deterministic kernels; on GPU they cost speed, so only on CPU
        use_cpu=not gpu,
        bf16=train.precision == "bf16",
        fp16=train.precision == "fp16",
        gradient_checkpointing=train.gradient_checkpointing,
        learning_rate=train.lr,
        # several processes split each step's rows (labs/core/run.py launch): the steps stay one process's
        per_device_train_batch_size=train.batch_size // lab_processes(),
        per_device_eval_batch_size=train.batch_size // lab_processes(),
        gradient_accumulation_steps=train.grad_accum,
        num_train_epochs=train.epochs,
        max_steps=train.max_steps,
        warmup_steps=train.warmup_steps,
        weight_decay=train.weight_decay,
        lr_scheduler_type=train.lr_scheduler,
        logging_steps=train.logging_steps,
        save_strategy="steps",
        save_steps=train.save_steps,
        save_total_limit=2,  # enough to resume from; older checkpoints only cost disk
        eval_strategy="steps",
        eval_steps=train.save_steps,
        dataloader_num_workers=0,  # worker processes would change nothing but start-up time here
        report_to="none",
        disable_tqdm=True,
        include_num_input_tokens_seen="non_padding",  # for tokens/s in metrics
    )
    if isinstance(train, Processes) and lab_processes() > 1:
        kwargs |= strategy_kwargs(train.strategy, gpu)  # how the processes share the model
    return kwargs
