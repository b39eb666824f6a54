"""params.yaml -> typed, validated config.

Every knob lives in params.yaml, one section per lab. Each lab declares what it reads as its `Params`
class; a section's class lives with its lab, the pieces several labs share live here. A section may carry
`tiers: {t4: {...}, a100: {...}}`: the active tier's overrides are merged over the section's defaults (the
CPU tier is the defaults). Every tier's view is validated on every load, so a typo in the a100 overrides
fails on a laptop too.

Errors are one line: `params.yaml: sft.lr: expected a number, got 'fast'`.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

TIERS = ("cpu", "t4", "a100")
PARAMS_FILE = "params.yaml"


class ConfigError(Exception):
    """A bad params.yaml or override; the message is the one line the user sees."""


class Section(BaseModel):
    """A section of params.yaml. Each field's help line is the docstring under it (`lab NAME --help` lists
    them); a field a subclass redeclares to change its default keeps its parent's help."""

    # Unknown keys are errors: a misspelt knob must not silently fall back to its default.
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        for name, field in cls.model_fields.items():
            if field.description is None:
                field.description = next((base.model_fields[name].description for base in cls.__mro__[1:]
                                          if name in getattr(base, "model_fields", {})), None)


Tier = Annotated[Literal["cpu", "t4", "a100"], Field(description="hardware tier whose `tiers:` overrides apply")]
Precision = Literal["fp32", "fp16", "bf16"]
SEED = 1337  # params.yaml's `seed`: every lab that draws random numbers starts from it
Seed = Annotated[int, Field(description="the seed every random draw of the lab starts from")]


class ModelShape(Section):
    """A Llama built from scratch (CPU tier). Sizes are powers of two for fast matmuls."""

    hidden_size: int = Field(128, gt=0)
    """width of the residual stream"""
    num_layers: int = Field(8, gt=0)
    """decoder layers"""
    num_heads: int = Field(4, gt=0)
    """attention heads per layer"""
    num_kv_heads: int = Field(4, gt=0)
    """key/value heads (fewer than num_heads: grouped-query attention)"""
    intermediate_size: int = Field(512, gt=0)
    """width of each MLP's hidden layer"""
    max_position_embeddings: int = Field(512, gt=0)
    """longest sequence the rotary positions are built for"""


class Processes(Section):
    """Several processes training one model at once (`dvc exp run -S sft.procs=2 sft`): each takes its share of
    every step's `batch_size` rows and their gradients are averaged (under DDP, FSDP2 or DeepSpeed ZeRO), so the
    steps, rows and schedule are one process's."""

    procs: int = Field(1, ge=1)
    """processes training together on this machine (1: the lab's own process)"""
    strategy: Literal["ddp", "fsdp2", "zero2", "zero3"] = "ddp"
    """ddp: a whole copy each; zero2: optimizer state and gradients sharded; fsdp2, zero3: everything sharded"""


class TrainParams(Section):
    """Knobs shared by every lab that hands a model to a library trainer."""

    lr: float = Field(1e-3, gt=0)
    """peak learning rate"""
    batch_size: int = Field(32, gt=0)
    """examples per optimizer step (before grad_accum), split between the processes when there are several"""
    grad_accum: int = Field(1, gt=0)
    """batches whose gradients add up to one optimizer step"""
    epochs: float = Field(1.0, gt=0)
    """passes over the training data (ignored when max_steps > 0)"""
    max_steps: int = -1  # -1: run `epochs`; a positive value wins (the HF Trainer convention)
    """optimizer steps; -1 runs `epochs` instead"""
    warmup_steps: int = Field(20, ge=0)
    """steps of linear warm-up from 0 to lr"""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW's decoupled weight decay"""
    lr_scheduler: Literal["linear", "cosine", "constant_with_warmup"] = "cosine"
    """shape of the learning rate after warm-up"""
    max_length: int = Field(256, gt=0)
    """tokens per training row; longer rows are cut"""
    save_steps: int = Field(50, gt=0)
    """steps between checkpoints a killed run resumes from"""
    logging_steps: int = Field(10, gt=0)
    """steps between logged losses (the curves in plots/)"""
    precision: Precision = "fp32"
    """dtype of the weights and matmuls while training: fp32 | fp16 | bf16"""
    attn_implementation: Literal["eager", "sdpa", "flash_attention_2"] = "sdpa"
    """attention kernel: eager | sdpa | flash_attention_2"""
    gradient_checkpointing: bool = False
    """recompute activations in the backward pass: less memory, more time"""


class View(Section):
    """A few keys of another lab's section that a lab reads too (see `view`)."""

    model_config = ConfigDict(extra="ignore", frozen=True)


def view(section: type[Section], *keys: str) -> type[View]:
    """Just `keys` of `section`, each with its type, bounds and default: the rest of that section is not the
    reading lab's concern, so its stage lists only these keys as params and changing the others does not
    re-run it."""
    fields = {key: (section.model_fields[key].annotation, section.model_fields[key]) for key in keys}
    return create_model(f"{section.__name__}View", __base__=View, **fields)


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


def read_params(path: str | Path = PARAMS_FILE, overrides: list[str] = ()) -> dict:
    """params.yaml as a plain mapping with the command-line overrides applied (not yet validated)."""
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
    return raw


def load_params(schema: type[Section], path: str | Path = PARAMS_FILE, overrides: list[str] = (),
                known: set[str] | None = None) -> Section:
    """The sections `schema` declares (a lab's `Params`: what it reads), validated in every tier's view and
    returned in the active tier's. `known`: every top-level key params.yaml may hold, so a misspelt section
    or override fails instead of being ignored."""
    raw = read_params(path, overrides)
    for name in raw:
        if known is not None and name not in known:
            raise ConfigError(f"{path}: {name}: unknown section (expected one of {', '.join(sorted(known))})")
    tier = raw.get("tier", "cpu")
    if tier not in TIERS:
        raise ConfigError(f"{path}: tier: unknown tier {tier!r} (expected one of {', '.join(TIERS)})")

    active = None
    for candidate in TIERS:  # validate every tier's view, return the active one
        resolved = resolve_tier(raw, candidate)
        for assignment in overrides:  # command-line overrides win over the tier's overrides too
            if ".tiers." not in assignment.partition("=")[0]:
                apply_override(resolved, assignment, "override")
        resolved["tier"] = tier
        try:
            params = schema.model_validate({k: v for k, v in resolved.items() if k in schema.model_fields})
        except ValidationError as exc:
            suffix = "" if candidate == tier else f" (in the {candidate} tier's overrides)"
            raise ConfigError(f"{path}: {_explain(exc.errors()[0], '')}{suffix}") from None
        if candidate == tier:
            active = params
    return active
