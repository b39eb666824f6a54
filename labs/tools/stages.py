"""What each DVC stage must list, computed from the code: its params (the lab's `Params`) and its code deps
(the lab's module and every `labs` module it imports, transitively, plus the runner every lab runs under).

    python -m labs.tools.stages          # print each stage's expected code deps and params
    python -m labs.tools.stages --check  # exit 1 naming each stage whose dvc.yaml entry disagrees

tests/test_registry.py runs the check. The CLI front door (labs/__main__.py, labs/registry.py) dispatches and
validates but shapes no output, so no stage depends on it: adding a lab does not re-run the others.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import yaml

from labs.core.config import View
from labs.registry import LABS, STAGELESS, module

PACKAGE = Path(__file__).resolve().parents[1]  # labs/
ROOT = PACKAGE.parent
RUNNER = PACKAGE / "core" / "runner.py"


def module_file(dotted: str) -> Path | None:
    """labs.core.train -> labs/core/train.py (or a package's __init__.py); None outside `labs`."""
    parts = dotted.split(".")
    if parts[0] != "labs":
        return None
    base = PACKAGE.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_files(path: Path) -> set[Path]:
    """The `labs` files `path` imports (anywhere in it, deferred imports too), with their packages' __init__."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from labs.core import kernels` imports a module; `from labs.core.run import x` a name
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for dotted in names:
            parts = dotted.split(".")
            for depth in range(1, len(parts) + 1):  # each package on the way is imported (and runs) too
                file = module_file(".".join(parts[:depth]))
                if file:
                    found.add(file)
    return found


def code_deps(name: str) -> list[str]:
    """Every file of `labs` that runs when lab `name` runs, relative to the project root: the lab's own first."""
    lab = module_file(f"labs.{name}")
    todo, seen = [lab, RUNNER, PACKAGE / "__init__.py"], set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        todo.extend(imported_files(path) - seen)
    return [str(path.relative_to(ROOT)) for path in sorted(seen, key=lambda path: (path != lab, path))]


def params_entries(name: str) -> list[str]:
    """dvc.yaml `params` of lab `name`: a section it reads whole by name, a view's keys one by one."""
    entries = []
    for key, field in module(name).Params.model_fields.items():
        kind = field.annotation
        if isinstance(kind, type) and issubclass(kind, View):
            entries += [f"{key}.{sub}" for sub in kind.model_fields]
        else:
            entries.append(key)
    return entries


def upstream_stages(stages: dict) -> dict[str, set[str]]:
    """stage -> the stages whose outputs it reads, from dvc.yaml's `stages` (deps against outs, metrics, plots)."""
    made_by = {(next(iter(out)) if isinstance(out, dict) else out): stage for stage, spec in stages.items()
               for key in ("outs", "metrics", "plots") for out in spec.get(key, [])}
    return {stage: {made_by[out] for dep in spec.get("deps", []) for out in made_by
                    if dep == out or dep.startswith(out + "/")} for stage, spec in stages.items()}


def mismatches(stages: dict) -> list[str]:
    """One line per way dvc.yaml's `stages` disagree with the registry and the code."""
    problems = []
    expected = [name for name in LABS if name not in STAGELESS]
    if list(stages) != expected:
        problems.append(f"dvc.yaml: stages {list(stages)}: expected the registry's, in its order: {expected}")
    for name in expected:
        stage = stages.get(name)
        if stage is None:
            continue
        if stage.get("cmd") != f"python -m labs {name}":
            problems.append(f"dvc.yaml: {name}.cmd: expected 'python -m labs {name}', got {stage.get('cmd')!r}")
        code = [dep for dep in stage.get("deps", []) if dep.startswith("labs/") or dep == "labs"]
        if sorted(code) != sorted(code_deps(name)):
            problems.append(f"dvc.yaml: {name}.deps: code deps {code}: expected {code_deps(name)}")
        listed = [next(iter(p)) if isinstance(p, dict) else p for p in stage.get("params", [])]
        if sorted(listed) != sorted(params_entries(name)):
            problems.append(f"dvc.yaml: {name}.params: {listed}: expected {params_entries(name)}")
    return problems


def main(argv: list[str]) -> int:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    if "--check" in argv:
        problems = mismatches(stages)
        print("\n".join(problems) or "dvc.yaml agrees with the registry and the code")
        return 1 if problems else 0
    for name in LABS:
        if name not in STAGELESS:
            print(f"{name}:\n  deps: {code_deps(name)}\n  params: {params_entries(name)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
