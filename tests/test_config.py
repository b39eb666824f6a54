"""params.yaml -> typed config: tier overrides, CLI overrides, one-line errors."""

from pathlib import Path

import pytest
import yaml

from labs.core.config import ConfigError
from labs.registry import all_params as load_params
from labs.registry import lab_params

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def test_project_params_load_for_every_tier():
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert load_params(ROOT / "params.yaml").tier == "cpu"
    for tier in ("t4", "a100"):
        assert load_params(ROOT / "params.yaml", [f"tier={tier}"]).tier == tier
    assert raw["tier"] == "cpu", "the committed default tier must be the one that needs no GPU"


def test_tier_overrides_merge_over_defaults(tmp_path):
    path = write(tmp_path, "tier: t4\nsft:\n  lr: 0.001\n  batch_size: 8\n  tiers:\n"
                           "    t4: {batch_size: 4, precision: fp16}\n    a100: {precision: bf16}\n")
    params = load_params(path)
    assert (params.sft.batch_size, params.sft.precision, params.sft.lr) == (4, "fp16", 0.001)
    assert load_params(path, ["tier=cpu"]).sft.precision == "fp32"
    assert load_params(path, ["tier=a100"]).sft.precision == "bf16"


def test_cli_override_parses_yaml_values(tmp_path):
    path = write(tmp_path, "sft:\n  lr: 0.001\n")
    params = load_params(path, ["sft.lr=3e-4", "sft.gradient_checkpointing=true"])
    assert params.sft.lr == pytest.approx(3e-4) and params.sft.gradient_checkpointing is True


@pytest.mark.parametrize("text, expected", [
    ("sft:\n  lr: fast\n", "params.yaml: sft.lr: expected a number, got 'fast'"),
    ("sft:\n  lrr: 0.1\n", "params.yaml: sft.lrr: unknown key"),
    ("sftt:\n  lr: 0.1\n", "params.yaml: sftt: unknown section (expected one of attention, "),
    ("tier: tpu\n", "params.yaml: tier: unknown tier 'tpu' (expected one of cpu, t4, a100)"),
    ("sft:\n  batch_size: 0\n", "params.yaml: sft.batch_size: input should be greater than 0, got 0"),
    ("sft:\n  precision: fp8\n", "params.yaml: sft.precision: expected one of 'fp32', 'fp16' or 'bf16', got 'fp8'"),
    ("sft:\n  tiers:\n    a100: {lr: x}\n",
     "params.yaml: sft.lr: expected a number, got 'x' (in the a100 tier's overrides)"),
    ("sft:\n  tiers:\n    v100: {lr: 1}\n",
     "params.yaml: sft.tiers.v100: unknown tier (expected one of cpu, t4, a100)"),
    ("sft: [1\n", "params.yaml:2: not valid YAML"),
])
def test_bad_params_give_one_line_naming_the_key(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_params(path)
    message = str(info.value).replace(str(tmp_path) + "/", "")
    assert message.startswith(expected) and "\n" not in message


def test_command_line_override_wins_over_the_tier_override(tmp_path):
    path = write(tmp_path, "pretrain:\n  base_model: null\n  tiers:\n    t4: {base_model: org/hub-model}\n")
    assert load_params(path, ["tier=t4"]).pretrain.base_model == "org/hub-model"
    assert load_params(path, ["tier=t4", "pretrain.base_model=./local"]).pretrain.base_model == "./local"


def test_malformed_override_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_params(write(tmp_path, "seed: 1\n"), ["sft.lr"])


@pytest.mark.parametrize("text, expected", [
    ("peft_methods:\n  methods:\n    lokr: {}\n", "peft_methods.methods.lokr"),
    ("peft_methods:\n  methods:\n    prompt: {lr: fast}\n", "peft_methods.methods.prompt.lr: expected a number"),
    ("peft_methods:\n  methods:\n    prompt: {rnak: 4}\n", "peft_methods.methods.prompt.rnak: unknown key"),
    ("qlora:\n  method: prefix\n", "qlora.method: expected one of 'lora' or 'dora'"),
])
def test_peft_params_are_checked(tmp_path, text, expected):
    with pytest.raises(ConfigError) as error:
        load_params(write(tmp_path, text))
    assert expected in str(error.value) and "\n" not in str(error.value)


def test_a_lab_reads_and_checks_only_its_own_sections(tmp_path):
    path = write(tmp_path, "sft:\n  lr: 0.002\nevaluate:\n  models: [sft]\n  batch_size: 8\ndpo:\n  lr: 0.1\n")
    params = lab_params("sft", path)
    assert set(type(params).model_fields) == {"seed", "tier", "sft", "evaluate"}
    # sft reads two keys of the evaluate section; the models list is evaluate's own concern
    assert (params.sft.lr, params.evaluate.batch_size) == (0.002, 8) and not hasattr(params.evaluate, "models")
    with pytest.raises(ConfigError, match="sft.lr: expected a number"):
        lab_params("sft", path, ["sft.lr=fast"])
    # a misspelt section fails for every lab, though none reads it
    with pytest.raises(ConfigError, match="sftt: unknown section"):
        lab_params("dpo", path, ["sftt.lr=1"])
