"""prepare — validate data/raw against the data contract and carve validation splits into data/prepared.

    just lab prepare     # dvc repro prepare

Every row of every raw file is checked (a bad row stops with `FILE:LINE: what was expected`). Each
training file is split into train / val by a hash of its row, so the split is stable when rows are
added or reordered; the held-out `*_test` files pass through unchanged. The new domain's files
(`domain_*`, for `cpt`) and the long additions (`arith*`, for `cot` and `curriculum`) are prepared the same
way when data/raw has them, and so is the safety boundary (`safety*`: chats sft trains on, pairs for the
alignment labs, and the held-out probe with its jailbreak file, which passes through like a test file).
`world_{sft,preference,rl}_*` are the task world's files whatever `data.source`, for the labs whose method needs
its families or its answer checker: data/raw's `world_*` where a real source replaced them, the files themselves
otherwise (the same bytes, which DVC's cache stores once).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pydantic import Field

from labs.core.config import Section
from labs.core.data import read_jsonl, write_jsonl
from labs.core.run import atomic_path


class PrepareParams(Section):
    val_fraction: float = Field(0.05, gt=0, lt=0.5)
    """share of each training file held out for validation loss"""


class Params(Section):
    """What prepare reads from params.yaml."""

    prepare: PrepareParams = PrepareParams()


RAW, PREPARED = Path("data/raw"), Path("data/prepared")
# raw file -> (contract kind, has a held-out *_test file)
FILES = {"corpus": ("text", False), "sft": ("sft", True), "preference": ("preference", True),
         "rl": ("rl", True)}
# prepared when data/raw has them, as the task world does: the new domain continued pretraining adapts to (`cpt`),
# long additions with worked steps (`cot`, `curriculum`), and the safety boundary (sft's refusals, evaluate's probe)
OPTIONAL = {"domain_corpus": ("text", False), "domain_sft": ("sft", True), "arith": ("rl", True),
            "safety": ("sft", True), "safety_preference": ("preference", False)}
# held-out files with no training file of their own: copied as they are when data/raw has them
HELD_OUT = {"safety_jailbreak_test": "sft"}
# the task world's own files: data writes them apart (world_*) only where a real source took their place
WORLD = {f"world_{name}": name for name in ("sft", "preference", "rl")}


def is_validation(row: dict, fraction: float) -> bool:
    digest = hashlib.sha256(json.dumps(row, sort_keys=True).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def run(params: Params) -> dict:
    counts = {}
    with atomic_path(PREPARED) as tmp:
        tmp.mkdir()
        present = {name: spec for name, spec in OPTIONAL.items() if (RAW / f"{name}.jsonl").exists()}
        # each world_* file is read from data/raw's own copy where data kept one, else from the file it stands for
        read_from = {world: world if (RAW / f"{world}.jsonl").exists() else name for world, name in WORLD.items()}
        world = {name: FILES[WORLD[name]] for name in WORLD}
        for name, (kind, has_test) in (FILES | present | world).items():
            source = read_from.get(name, name)
            rows = read_jsonl(RAW / f"{source}.jsonl", kind)
            val = [r for r in rows if is_validation(r, params.prepare.val_fraction)]
            train = [r for r in rows if not is_validation(r, params.prepare.val_fraction)]
            counts[f"{name}_train"] = write_jsonl(tmp / f"{name}_train.jsonl", train)
            counts[f"{name}_val"] = write_jsonl(tmp / f"{name}_val.jsonl", val)
            if has_test:
                test = read_jsonl(RAW / f"{source}_test.jsonl", kind)
                counts[f"{name}_test"] = write_jsonl(tmp / f"{name}_test.jsonl", test)
        for name, kind in HELD_OUT.items():
            if (RAW / f"{name}.jsonl").exists():
                counts[name] = write_jsonl(tmp / f"{name}.jsonl", read_jsonl(RAW / f"{name}.jsonl", kind))
    print("prepare: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
    return {"rows": counts}
