"""`lab NAME` / `python -m labs NAME`: run one lab with params.yaml (plus -S overrides).

DVC calls exactly this command for every stage. The labs are listed in labs/registry.py; a lab module
exposes `Params` (what it reads from params.yaml) and `run(params) -> metrics`, which labs/core/runner.py
writes to metrics/<lab>.json with the run's provenance.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml
from pydantic_core import to_jsonable_python

from labs.core.config import PARAMS_FILE, ConfigError, Processes, Section
from labs.core.convert import CONVERTERS, MAX_SKIPPED, convert
from labs.core.data import DataError
from labs.registry import LABS, lab_params, module
from labs.serve.engines import EngineError


def _usage() -> str:
    width = max(map(len, LABS))
    lines = [f"  {name:<{width}}  {doc}" for name, doc in LABS.items()]
    return (
        "usage: lab NAME [-S KEY=VALUE ...] [--params FILE]\n"
        "       lab convert FORMAT IN.jsonl[.gz] OUT.jsonl[.gz] [--strict] [--max-skipped SHARE]\n\nlabs:\n"
        + "\n".join(lines) + "\n\n`lab NAME --help` explains one lab."
    )


def params_help(schema: type[Section], prefix: str = "") -> list[tuple[str, str, str]]:
    """One row per key a lab reads: its params.yaml path, its cpu-tier default and its help line."""
    rows = []
    for key, field in schema.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, Section):
            rows += params_help(field.annotation, f"{prefix}{key}.")
            continue
        default = json.dumps(to_jsonable_python(field.default))
        default = default if len(default) <= 32 else default[:29] + "..."
        rows.append((f"{prefix}{key}", default, field.description))
    return rows


def _params_epilog(schema: type[Section]) -> str:
    rows = params_help(schema)
    key_width, value_width = (max(len(row[i]) for row in rows) for i in (0, 1))
    lines = [f"  {key:<{key_width}}  {value:<{value_width}}  {text}" for key, value, text in rows]
    return "params (params.yaml key, cpu-tier default, what it does):\n" + "\n".join(lines)


def _fail(message: str, code: int = 2) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def run_lab(name: str, argv: list[str]) -> int:
    lab = module(name)
    parser = argparse.ArgumentParser(
        prog=f"lab {name}", description=lab.__doc__, epilog=_params_epilog(lab.Params),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a param, e.g. -S sft.lr=3e-4 (same syntax as `dvc exp run -S`)")
    parser.add_argument("--params", default=PARAMS_FILE, help="params file (default: %(default)s)")
    args = parser.parse_args(argv)

    params = lab_params(name, args.params, args.set)
    section = getattr(params, name, None)
    from labs.core.run import die_with_parent, lab_nodes, launch

    several = isinstance(section, Processes) and (section.procs > 1 or lab_nodes()[0] > 1)
    if several and "LAB_PROCESSES" not in os.environ:  # not yet launched
        return launch(name, section, argv)
    if "LAB_PROCESSES" in os.environ:  # one of the processes `launch` started through torchrun
        die_with_parent()
    from labs.core.runner import execute

    started = time.perf_counter()
    execute(name, lab, params)
    print(summary(name, time.perf_counter() - started))
    return 0


def plan(name: str) -> list[str]:
    """The stages `dvc repro name` runs: those of its upstream that `dvc status` finds out of date, and every stage
    between them and `name` (DVC skips one of those only if its inputs come out unchanged)."""
    from labs.tools.stages import upstream_stages

    upstream = upstream_stages(yaml.safe_load(Path("dvc.yaml").read_text())["stages"])

    def closure(stage: str) -> set[str]:
        return {stage}.union(*(closure(up) for up in upstream[stage]))

    try:  # no answer from DVC: every stage up to `name` may run
        status = subprocess.run(["dvc", "status", "--with-deps", "--json", name], capture_output=True, text=True,
                                check=True)
        stale = set(json.loads(status.stdout or "{}"))
    except (OSError, ValueError, subprocess.CalledProcessError):
        stale = closure(name)
    runs = {stage for stage in closure(name) if closure(stage) & stale}
    return [stage for stage in LABS if stage in runs]


def summary(name: str, seconds: float) -> str:
    """What a finished lab leaves and what to try next (its own last line above states its headline result)."""
    stages = yaml.safe_load(Path("dvc.yaml").read_text())["stages"] if Path("dvc.yaml").exists() else {}
    if Path(f"{name}.dvc").exists():  # a lab without a stage: a .dvc file tracks what it writes
        stages[name] = {"outs": [out["path"] for out in yaml.safe_load(Path(f"{name}.dvc").read_text())["outs"]]}
    outputs = [next(iter(out)) if isinstance(out, dict) else out for key in ("outs", "metrics", "plots")
               for out in stages.get(name, {}).get(key, [])]
    names = list(LABS)
    following = names[names.index(name) + 1] if name != names[-1] else None
    then = f"just lab {following}   # {LABS[following]}" if following else "just report   # every model on one page"
    minutes, rest = divmod(round(seconds), 60)
    return (f"\n{name} finished in {minutes}m{rest:02d}s; outputs: {', '.join(outputs) or f'metrics/{name}.json'}\n"
            f"next: {then}")


CONVERT_USAGE = (f"usage: lab convert FORMAT IN OUT [--strict] [--max-skipped SHARE]   (FORMAT: text, "
                 f"{', '.join(CONVERTERS)}; rows that cannot be converted are skipped and named by line, or with "
                 f"--strict stop it; more than SHARE of them, default {MAX_SKIPPED}, is an error)")


def convert_command(args: list[str]) -> int:
    if args[:1] in (["-h"], ["--help"]):
        print(CONVERT_USAGE)
        return 0
    strict = "--strict" in args
    args = [arg for arg in args if arg != "--strict"]
    max_skipped = MAX_SKIPPED
    if "--max-skipped" in args:
        at = args.index("--max-skipped")
        given = args[at + 1] if at + 1 < len(args) else "nothing"
        try:
            max_skipped = float(given)
        except ValueError:
            return _fail(f"--max-skipped: expected a share such as 0.1, got {given}")
        del args[at:at + 2]
    if len(args) != 3 or any(arg.startswith("--") for arg in args):
        print(CONVERT_USAGE, file=sys.stderr)
        return 2
    fmt, source, dest = args
    print(convert(fmt, source, dest, strict=strict, max_skipped=max_skipped).report(Path(source), Path(dest)))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "list"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    try:
        if name == "names":  # for scripts (the justfile): lab names, or with --evaluated the evaluated ones
            print("\n".join(lab_params("evaluate").evaluate.models if "--evaluated" in rest else LABS))
            return 0
        if name == "plan":  # for the justfile: the stages `dvc repro NAME` will run, in curriculum order
            print(" ".join(plan(rest[0])))
            return 0
        if name == "convert":
            return convert_command(rest)
        if name not in LABS:
            return _fail(f"unknown lab {name!r} (expected one of: {', '.join(LABS)}, convert)")
        return run_lab(name, rest)
    except (ConfigError, DataError, EngineError) as exc:
        return _fail(str(exc))


if __name__ == "__main__":
    sys.exit(main())
