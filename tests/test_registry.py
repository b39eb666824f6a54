"""The registry is the one list of labs: dvc.yaml's stages, params and code deps agree with it and with the
code, and every code default agrees with params.yaml's cpu tier (one source of defaults)."""

import copy
from pathlib import Path

import yaml
from pydantic import Field

from labs.core.config import Section, TrainParams, resolve_tier
from labs.registry import LABS, STAGELESS, all_params_schema
from labs.tools.stages import code_deps, mismatches

ROOT = Path(__file__).resolve().parents[1]


def stages() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def disagreements(defaults: dict, values: dict, where: str = "") -> list[str]:
    """Each key whose value in `values` (params.yaml's cpu tier, validated: unset keys take the code's default)
    differs from the code's default in `defaults`."""
    found = []
    for key in defaults:
        default, value = defaults[key], values.get(key)
        if isinstance(value, dict) and isinstance(default, dict) and value.keys() == default.keys():
            found += disagreements(default, value, f"{where}{key}.")
        elif value != default:
            found.append(f"{where}{key}: params.yaml {value!r}, code {default!r}")
    return found


def cpu_view(change=None) -> dict:
    """params.yaml's cpu tier, validated against every lab's classes, as JSON-like data."""
    raw = resolve_tier(yaml.safe_load((ROOT / "params.yaml").read_text()), "cpu")
    if change:
        change(raw)
    return all_params_schema().model_validate(raw).model_dump(mode="json")


def test_dvc_yaml_agrees_with_the_registry_and_the_code():
    assert mismatches(stages()) == []
    assert [name for name in LABS if name not in STAGELESS] == list(stages())


def test_the_check_names_a_stage_that_disagrees():
    broken = copy.deepcopy(stages())
    broken["sft"]["params"].remove("evaluate.batch_size")  # a key sft reads, unlisted
    broken["lora"]["deps"].remove("labs/core/adapters.py")  # a module lora imports, unlisted
    broken["dpo"]["cmd"] = "python -m labs dpo2"
    problems = mismatches(broken)
    assert sorted(line.split(": ")[1] for line in problems) == ["dpo.cmd", "lora.deps", "sft.params"], problems
    reordered = dict(reversed(list(stages().items())))
    assert any("stages" in line for line in mismatches(reordered))


def test_code_deps_follow_the_imports():
    # the adapter machinery runs for the three adapter labs and continual's adapter per task, nothing else; every
    # lab runs the core runner
    users = {name for name in stages() if "labs/core/adapters.py" in code_deps(name)}
    assert users == {"lora", "qlora", "peft_methods", "continual"}
    assert all(code_deps(name)[0] in (f"labs/{name}.py", f"labs/{name}/__init__.py") for name in stages())
    assert all("labs/core/runner.py" in code_deps(name) for name in stages())
    assert not any("labs/registry.py" in code_deps(name) or "labs/__main__.py" in code_deps(name) for name in stages())


def test_every_code_default_agrees_with_params_yaml():
    defaults = all_params_schema()().model_dump(mode="json")
    assert disagreements(defaults, cpu_view()) == []


def test_a_default_that_disagrees_is_named():
    defaults = all_params_schema()().model_dump(mode="json")

    def change(raw):
        raw["pretrain"]["model"]["num_layers"] += 1
        raw["dpo"]["beta"] = 0.5
        raw["decode"]["strategies"]["greedy"] = {"num_beams": 2}

    assert [line.split(":")[0] for line in disagreements(defaults, cpu_view(change))] == [
        "pretrain.model.num_layers", "dpo.beta", "decode.strategies.greedy.num_beams"]


def undocumented(schema: type[Section], where: str = "") -> list[str]:
    """Every key under `schema` without a one-line help (a nested section is documented by its own keys)."""
    found = []
    for key, field in schema.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, Section):
            found += undocumented(field.annotation, f"{where}{key}.")
        elif not field.description or "\n" in field.description:
            found.append(f"{where}{key}")
    return found


def test_every_key_of_params_yaml_has_one_help_line():
    assert undocumented(all_params_schema()) == []


def test_a_key_without_help_is_named_and_a_redeclared_key_keeps_its_help():
    class Recipe(TrainParams):
        lr: float = Field(5e-5, gt=0)  # a new default: TrainParams' help line still applies
        steps_per_eval: int = 10
        shuffle: bool = True
        """two lines
        of help"""

    assert Recipe.model_fields["lr"].description == TrainParams.model_fields["lr"].description
    assert undocumented(Recipe, "recipe.") == ["recipe.steps_per_eval", "recipe.shuffle"]
