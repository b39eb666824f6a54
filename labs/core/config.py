"""params.yaml -> typed, validated config.

Every knob lives in params.yaml, one section per lab. A section may carry `tiers: {t4: {...}, a100: {...}}`:
the active tier's overrides are merged over the section's defaults (the CPU tier is the defaults). Every
tier's merged section is validated on every load, so a typo in the a100 overrides fails on a laptop too.

Errors are one line: `params.yaml: sft.lr: expected a number, got 'fast'`.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

TIERS = ("cpu", "t4", "a100")
PARAMS_FILE = "params.yaml"


class ConfigError(Exception):
    """A bad params.yaml or override; the message is the one line the user sees."""


class Section(BaseModel):
    # Unknown keys are errors: a misspelt knob must not silently fall back to its default.
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataParams(Section):
    families: list[Literal["add", "compare", "sort", "reverse"]] = ["add", "compare", "sort", "reverse"]
    sft_per_family: int = Field(2000, gt=0)
    test_per_family: int = Field(100, gt=0)
    corpus_per_family: int = Field(3000, gt=0)
    preference_per_family: int = Field(1000, gt=0)
    rl_per_family: int = Field(500, gt=0)


class PrepareParams(Section):
    val_fraction: float = Field(0.05, gt=0, lt=0.5)


class TokenizerParams(Section):
    vocab_size: int = Field(512, ge=64)
    min_frequency: int = Field(2, ge=1)


class ModelShape(Section):
    """A Llama built from scratch (CPU tier). Sizes are powers of two for fast matmuls."""

    hidden_size: int = Field(128, gt=0)
    num_layers: int = Field(4, gt=0)
    num_heads: int = Field(4, gt=0)
    num_kv_heads: int = Field(4, gt=0)
    intermediate_size: int = Field(512, gt=0)
    max_position_embeddings: int = Field(512, gt=0)


class TrainParams(Section):
    """Knobs shared by every lab that hands a model to a library trainer."""

    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(32, gt=0)
    grad_accum: int = Field(1, gt=0)
    epochs: float = Field(1.0, gt=0)
    max_steps: int = -1  # -1: run `epochs`; a positive value wins (the HF Trainer convention)
    warmup_steps: int = Field(20, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    lr_scheduler: Literal["linear", "cosine", "constant_with_warmup"] = "cosine"
    max_length: int = Field(256, gt=0)
    save_steps: int = Field(50, gt=0)
    logging_steps: int = Field(10, gt=0)
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"
    attn_implementation: Literal["eager", "sdpa", "flash_attention_2"] = "sdpa"
    gradient_checkpointing: bool = False


class PretrainParams(TrainParams):
    # None: build a tiny Llama from `model` and train it from scratch (CPU tier). A hub id or a local
    # directory: start from that model and its tokenizer (GPU tiers), continuing pretraining for
    # `max_steps` (0 = take the model as it is).
    base_model: str | None = None
    model: ModelShape = ModelShape()


class SFTParams(TrainParams):
    max_length: int = Field(128, gt=0)


class LoraParams(SFTParams):
    """The sft task through a PEFT adapter on the frozen pretrained model."""

    method: Literal["lora", "dora", "prefix", "prompt", "ia3"] = "lora"
    rank: int = Field(8, gt=0)
    alpha: float = Field(16, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    num_virtual_tokens: int = Field(16, gt=0)  # prefix and prompt tuning
    # lora / dora: also train these tokens' embedding rows (PEFT trainable_token_indices): tokens the base
    # never saw in pretraining, like the chat template's role markers, are otherwise stuck at their init.
    trainable_tokens: list[str] = []
    ia3_feedforward_modules: list[str] = ["down_proj"]  # (IA)^3 scales these modules' inputs, the rest's outputs
    # Seeds the adapter is trained with again, after the run with the project's `seed`: the spread of exact-match
    # over all of them is reported beside the single run, so a reader knows what a rerun may give.
    seeds: list[int] = []


class QLoraParams(LoraParams):
    """LoRA (or DoRA) on a base quantized to 4 bits by bitsandbytes; compute dtype = `precision`."""

    method: Literal["lora", "dora"] = "lora"
    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True  # quantize the quantization constants too (QLoRA paper, ~0.4 bit/param saved)


class MethodOverrides(Section):
    """What a method in `peft_methods` may set differently from the `lora` section."""

    lr: float | None = Field(None, gt=0)
    epochs: float | None = Field(None, gt=0)
    max_steps: int | None = None
    rank: int | None = Field(None, gt=0)
    alpha: float | None = Field(None, gt=0)
    num_virtual_tokens: int | None = Field(None, gt=0)
    target_modules: list[str] | None = None
    seeds: list[int] | None = None


class PeftMethodsParams(Section):
    # method -> its overrides of the `lora` section. lora itself and qlora have their own stages; the
    # comparison table takes their rows (and full SFT's) from metrics/.
    methods: dict[Literal["lora", "dora", "prefix", "prompt", "ia3"], MethodOverrides] = {}


class RewardParams(TrainParams):
    """A Bradley-Terry reward model: the SFT model's architecture with a scalar head."""

    max_length: int = Field(128, gt=0)
    center_rewards: float | None = Field(None, ge=0)  # TRL's center_rewards_coefficient: pulls rewards to mean 0
    # dataset: the preference file's pairs. with_on_policy: plus pairs from the SFT model's own wrong answers
    # (sampled on `on_policy_prompts` of those prompts, checked against the chosen answer)
    pairs: Literal["dataset", "with_on_policy"] = "dataset"
    on_policy_prompts: int = Field(4000, gt=0)
    on_policy_samples: int = Field(4, gt=0)
    samples_per_prompt: int = Field(2, gt=0)  # sampled SFT answers per held-out prompt for the correlations


class DPOParams(TrainParams):
    """Preference optimisation of the SFT model; `loss` picks the method."""

    # sigmoid = DPO, ipo = IPO (both DPOTrainer), kto = KTO on the pairs split into unpaired rows,
    # orpo = ORPO and simpo = SimPO (no reference model; trl.experimental ORPOTrainer / CPOTrainer)
    loss: Literal["sigmoid", "ipo", "kto", "orpo", "simpo"] = "sigmoid"
    # dataset: the preference file's pairs. on_policy: the SFT model's own wrong answers (sampled on those
    # prompts, checked against the chosen answer) are the rejected side: needs checkable answers.
    pairs: Literal["dataset", "on_policy"] = "dataset"
    samples_per_prompt: int = Field(4, gt=0)  # on_policy: answers sampled per prompt
    temperature: float = Field(1.0, gt=0)  # on_policy: lower finds the mistakes greedy decoding makes
    max_prompts: int | None = Field(None, gt=0)  # on_policy: prompts sampled from (null: all)
    beta: float | None = Field(None, gt=0)  # null: the method's paper default (labs/dpo.py DEFAULT_BETA)
    simpo_gamma: float = Field(0.5, ge=0)  # SimPO's target reward margin
    # sigmoid / ipo: weight of an added NLL loss on the chosen answers (RPO); it keeps the chosen answers'
    # likelihood from falling with the rejected ones', DPO's known failure
    sft_weight: float = Field(0.0, ge=0)
    max_length: int = Field(128, gt=0)


class PPOParams(TrainParams):
    """RLHF with PPO: policy and value model trained, reward model and reference frozen."""

    episodes: int = Field(2048, gt=0)  # prompts sampled in all (TRL's total_episodes)
    kl_coef: float = Field(0.05, ge=0)
    ppo_epochs: int = Field(4, gt=0)  # optimisation passes over each batch of rollouts
    mini_batches: int = Field(1, gt=0)
    temperature: float = Field(1.0, gt=0)
    response_length: int = Field(48, gt=0)
    missing_eos_penalty: float | None = Field(1.0, ge=0)  # subtracted from the score of a completion with no EOS
    gae_lambda: float = Field(0.95, ge=0, le=1)
    gamma: float = Field(1.0, ge=0, le=1)
    heldout_seeds: int = Field(4, gt=0)  # sampled answers per held-out prompt, before and after training
    bootstrap_resamples: int = Field(2000, gt=0)  # for the 95% interval of the held-out reward's change


class GRPOParams(TrainParams):
    """GRPO with a verifiable reward: exact match of the final answer plus a format reward."""

    num_generations: int = Field(8, ge=2)  # completions per prompt: the group whose mean is the baseline
    beta: float = Field(0.04, ge=0)  # KL penalty to the reference (TRL's default is 0: no reference at all)
    temperature: float = Field(1.0, gt=0)
    max_completion_length: int = Field(48, gt=0)
    format_reward: float = Field(0.2, ge=0)  # for an answer in the "... Answer: X" form that ended with EOS


class StudentPretrainParams(TrainParams):
    """The distilled student's own pretraining on the corpus, before either fine-tune."""

    max_length: int = Field(256, gt=0)


class DistillParams(SFTParams):
    """Knowledge distillation from the SFT model (teacher) into a smaller student of the same tokenizer."""

    # null: a Llama of `student` shape built here; a hub id or local directory: that model (same tokenizer)
    student_model: str | None = None
    student: ModelShape = ModelShape(hidden_size=64, num_layers=2, intermediate_size=256)
    pretrain: StudentPretrainParams = StudentPretrainParams()
    temperature: float = Field(2.0, gt=0)  # softens both distributions; the soft term is scaled by T^2
    alpha: float = Field(0.5, ge=0, le=1)  # weight of the soft-label term; 1 - alpha goes to the hard labels


QuantMethod = Literal["int8", "nf4", "dynamic_int8", "torchao_int8", "torchao_int4", "qat_int4", "gptq", "awq",
                      "gguf_f16", "gguf_q8_0", "gguf_q4_0"]


class QuantizeParams(Section):
    """Post-training quantization (and QAT) of the SFT model and the distilled student."""

    method: Literal["all"] | QuantMethod = "all"  # all: every method this device can run, one row each
    models: list[Literal["sft", "distill"]] = ["sft", "distill"]
    student_methods: list[QuantMethod] = ["int8", "nf4"]  # the distilled student's quantized rows
    group_size: int = Field(32, gt=0)  # torchao int4 / QAT: weights per quantization scale
    qat: SFTParams = SFTParams(epochs=1, lr=2e-4)  # QAT's fine-tune with fake-quantized weights


class PruneParams(SFTParams):
    """Magnitude pruning of the SFT model's linear layers, each sparsity followed by a short recovery fine-tune."""

    kind: Literal["unstructured", "structured"] = "unstructured"
    # share of each pruned weight set set to zero: global over all linears (unstructured), whole rows per layer
    # (structured, L2 norm)
    sparsities: list[Annotated[float, Field(gt=0, lt=1)]] = [0.3, 0.5, 0.7]


class Strategy(Section):
    """One decoding strategy: `generate` arguments, contrastive decoding, or a re-ranking of sampled answers."""

    do_sample: bool = False
    temperature: float = Field(1.0, gt=0)
    top_k: int = Field(0, ge=0)  # 0: no top-k cut (generation_config's default of 50 would otherwise apply)
    top_p: float = Field(1.0, gt=0, le=1)
    min_p: float | None = Field(None, gt=0, lt=1)
    num_beams: int = Field(1, ge=1)
    repetition_penalty: float = Field(1.0, gt=0)
    # contrastive decoding: the plausibility cut alpha (keep tokens with p_expert >= alpha * max p_expert),
    # then pick by log p_expert - log p_amateur
    contrastive: float | None = Field(None, gt=0, le=1)
    samples: int = Field(1, ge=1)  # > 1: sample this many answers per prompt and keep one by `pick`
    pick: Literal["best_reward", "reward_weighted"] = "best_reward"
    beta: float = Field(1.0, gt=0)  # reward_weighted: keep answer i with probability softmax(reward / beta)_i


class DecodeParams(Section):
    """Decoding strategies of one model, side by side on the held-out prompts."""

    model: str = "sft"  # directories under models/
    amateur: str = "pretrain"  # contrastive decoding's amateur: same tokenizer, no SFT
    reward_model: str | None = "reward"  # re-ranks best-of-N and reward-weighted samples; scores every strategy
    prompts: int = Field(400, gt=0)  # held-out prompts each strategy answers
    # diversity: the first `diversity_prompts` are answered `diversity_runs` times (new seeds): how often it differs
    diversity_prompts: int = Field(64, gt=0)
    diversity_runs: int = Field(4, ge=2)
    strategies: dict[str, Strategy] = {"greedy": Strategy()}


AttentionName = Literal["eager", "sdpa", "flash_attention_2", "flex_attention"]


class AttentionParams(Section):
    """Attention implementations and KV-cache variants, timed side by side."""

    model: str = "sft"  # a directory under models/ ...
    shape: ModelShape | None = None  # ... or a randomly initialised Llama of this shape (speed ignores weights)
    implementations: list[AttentionName] = ["eager", "sdpa"]
    caches: list[Literal["none", "dynamic", "static"]] = ["none", "dynamic", "static"]
    prompt_lengths: list[Annotated[int, Field(gt=0)]] = [32, 256]
    new_tokens: list[Annotated[int, Field(gt=0)]] = [128]
    batch_size: int = Field(1, gt=0)
    rounds: int = Field(3, gt=0)


class SpeculativeParams(Section):
    """Assisted generation with a draft model, and prompt lookup decoding, against plain decoding."""

    target: str = "sft"  # directories under models/
    draft: str = "distill/student"  # same tokenizer, several times smaller
    draft_tokens: list[Annotated[int, Field(gt=0)]] = [4, 8, 16]  # tokens the draft proposes per target forward
    # constant: exactly draft_tokens each time; heuristic: transformers grows / shrinks it with acceptance
    schedule: Literal["constant", "heuristic"] = "constant"
    prompt_lookup_tokens: int = Field(10, gt=0)
    temperature: float = Field(0.7, gt=0)  # the sampled comparison
    prompts: int = Field(64, gt=0)
    max_new_tokens: int = Field(48, gt=0)
    rounds: int = Field(3, gt=0)


class ServeParams(Section):
    """An OpenAI-compatible server for one model and a load test against it."""

    model: str = "sft"
    host: str = "127.0.0.1"  # loopback unless told otherwise
    port: int = Field(0, ge=0, le=65535)  # 0: any free port
    continuous_batching: bool = True
    concurrency: list[Annotated[int, Field(gt=0)]] = [1, 4, 16, 64]
    requests_per_client: int = Field(4, gt=0)
    max_tokens: int = Field(48, gt=0)
    startup_timeout_s: int = Field(180, gt=0)
    rounds: int = Field(5, gt=0)  # best of, interleaved: a level's tokens/s moves by a third within one run
    # continuous batching's paged KV cache: unset, transformers serve takes 60% of RAM for it on CPU
    cache_blocks: int = Field(256, gt=0)
    block_size: int = Field(64, gt=0)  # tokens per cache block
    max_batch_tokens: int = Field(2048, gt=0)  # tokens one forward may hold


class EvaluateParams(Section):
    models: list[str] = ["pretrain", "sft"]
    reward_model: str | None = None  # a directory under models/ whose scores become a column (null: none)
    max_new_tokens: int = Field(48, gt=0)
    batch_size: int = Field(64, gt=0)
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"
    speed_prompts: int = Field(64, gt=0)  # held-out prompts each tokens/s measurement decodes (batch 1: the first 8)
    speed_rounds: int = Field(3, gt=0)  # interleaved rounds; the best of each model's rounds counts


class Params(Section):
    seed: int = 1337
    tier: Literal["cpu", "t4", "a100"] = "cpu"
    data: DataParams = DataParams()
    prepare: PrepareParams = PrepareParams()
    tokenizer: TokenizerParams = TokenizerParams()
    pretrain: PretrainParams = PretrainParams()
    sft: SFTParams = SFTParams()
    lora: LoraParams = LoraParams()
    qlora: QLoraParams = QLoraParams()
    peft_methods: PeftMethodsParams = PeftMethodsParams()
    reward: RewardParams = RewardParams()
    dpo: DPOParams = DPOParams()
    ppo: PPOParams = PPOParams()
    grpo: GRPOParams = GRPOParams()
    distill: DistillParams = DistillParams()
    prune: PruneParams = PruneParams()
    quantize: QuantizeParams = QuantizeParams()
    decode: DecodeParams = DecodeParams()
    attention: AttentionParams = AttentionParams()
    speculative: SpeculativeParams = SpeculativeParams()
    serve: ServeParams = ServeParams()
    evaluate: EvaluateParams = EvaluateParams()


def deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def apply_override(raw: dict, assignment: str, source: str) -> None:
    """`sft.lr=3e-4` -> raw['sft']['lr'] = 3e-4 (the value is parsed as YAML, like `dvc exp run -S`)."""
    key, sep, text = assignment.partition("=")
    if not sep or not key:
        raise ConfigError(f"{source}: '{assignment}': expected KEY=VALUE, e.g. sft.lr=3e-4")
    node = raw
    *parents, leaf = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{source}: {key}: '{part}' is not a section")
    node[leaf] = yaml.safe_load(text)


def resolve_tier(raw: dict, tier: str) -> dict:
    """Each section's `tiers[tier]` merged over its defaults; the `tiers` keys themselves removed."""
    resolved = {}
    for name, section in raw.items():
        if isinstance(section, dict) and "tiers" in section:
            overrides = section.get("tiers") or {}
            if not isinstance(overrides, dict):
                raise ConfigError(f"{PARAMS_FILE}: {name}.tiers: expected a mapping of tier -> overrides")
            for unknown in set(overrides) - set(TIERS):
                raise ConfigError(
                    f"{PARAMS_FILE}: {name}.tiers.{unknown}: unknown tier (expected one of {', '.join(TIERS)})"
                )
            base = {k: v for k, v in section.items() if k != "tiers"}
            section = deep_merge(base, overrides.get(tier) or {})
        resolved[name] = section
    return resolved


def _explain(error: dict, prefix: str) -> str:
    loc = ".".join(str(p) for p in error["loc"])
    where = f"{prefix}{loc}" if loc else prefix.rstrip(".")
    kind, given = error["type"], error.get("input")
    if kind == "extra_forbidden":
        return f"{where}: unknown key"
    if kind == "missing":
        return f"{where}: missing key"
    if kind == "literal_error":
        expected = error["ctx"]["expected"]
        return f"{where}: expected one of {expected}, got {given!r}"
    expected = {
        "int_parsing": "an integer", "int_type": "an integer", "int_from_float": "an integer",
        "float_parsing": "a number", "float_type": "a number", "bool_parsing": "true or false",
        "bool_type": "true or false", "string_type": "a string", "list_type": "a list",
        "model_type": "a mapping", "dict_type": "a mapping",
    }.get(kind)
    if expected:
        return f"{where}: expected {expected}, got {given!r}"
    return f"{where}: {error['msg'].lower()}, got {given!r}"


def load_params(path: str | Path = PARAMS_FILE, overrides: list[str] = ()) -> Params:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found (run from the project root, where params.yaml lives)") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{line}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    for assignment in overrides:
        apply_override(raw, assignment, "override")

    tier = raw.get("tier", "cpu")
    if tier not in TIERS:
        raise ConfigError(f"{path}: tier: unknown tier {tier!r} (expected one of {', '.join(TIERS)})")

    active = None
    for candidate in TIERS:  # validate every tier's view, return the active one
        resolved = resolve_tier(raw, candidate)
        for assignment in overrides:  # command-line overrides win over the tier's overrides too
            if ".tiers." not in assignment.partition("=")[0]:
                apply_override(resolved, assignment, "override")
        try:
            params = Params.model_validate(resolved | {"tier": tier})
        except ValidationError as exc:
            suffix = "" if candidate == tier else f" (in the {candidate} tier's overrides)"
            raise ConfigError(f"{path}: {_explain(exc.errors()[0], '')}{suffix}") from None
        if candidate == tier:
            active = params
    return active
