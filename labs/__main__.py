"""`lab NAME` / `python -m labs NAME`: run one lab with params.yaml (plus -S overrides).

DVC calls exactly this command for every stage. The labs are listed in labs/registry.py; a lab module
exposes `Params` (what it reads from params.yaml) and `run(params) -> metrics`, which labs/core/runner.py
writes to metrics/<lab>.json with the run's provenance.
"""

from __future__ import annotations

import argparse
import sys

from labs.core.config import PARAMS_FILE, ConfigError
from labs.core.data import CONVERTERS, DataError, convert
from labs.registry import LABS, lab_params, module


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
    lab = module(name)
    parser = argparse.ArgumentParser(
        prog=f"lab {name}", description=lab.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a param, e.g. -S sft.lr=3e-4 (same syntax as `dvc exp run -S`)")
    parser.add_argument("--params", default=PARAMS_FILE, help="params file (default: %(default)s)")
    args = parser.parse_args(argv)

    params = lab_params(name, args.params, args.set)
    from labs.core.runner import execute

    execute(name, lab, params)
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
