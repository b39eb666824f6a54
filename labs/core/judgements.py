"""Human preference judgements: the file `just label` appends to and `reward` and `dpo` train on.

Each line of data/labels/judgements.jsonl is one judgement of one pair (data/labels/pairs.jsonl, which the
`label` stage builds) in the data contract's preference format, {"prompt","chosen","rejected"}, plus who judged
it and how it was shown:

    {"pair": "p0007", "labeller": "ana", "verdict": "a", "left": "b", "prompt": ..., "chosen": ...,
     "rejected": ..., "chosen_model": "sft", "rejected_model": "sft", "family": "add", "comment": "", "time": ...}

`verdict` is the pair file's answer a or b (not the screen side: `left` says which answer was shown on the
left), `tie` or `both_bad`; for those two, chosen and rejected hold answers a and b. An undo is a line of its
own, {"pair", "labeller", "verdict": "undo", "time"}, taking back that labeller's judgement of that pair: the
file is only ever appended to, so two labellers at once cannot overwrite each other and the file is its own
audit trail. DVC tracks it (data/labels/judgements.jsonl.dvc); `just label` records it when the page stops.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
from collections import Counter
from pathlib import Path

from labs.core.data import DataError, iter_jsonl

JUDGEMENTS = Path("data/labels/judgements.jsonl")
VERDICTS = ("a", "b", "tie", "both_bad")
DECISIVE = ("a", "b")
LABELLER = re.compile(r"[A-Za-z0-9_.-]{1,32}")  # a name that is safe in a file, a URL and a page


def check(row: dict) -> str | None:
    """What is wrong with one line of the judgements file, or None."""
    for key in ("pair", "labeller", "verdict", "time"):
        if not isinstance(row.get(key), str):
            return f'field "{key}" must be a string'
    if not LABELLER.fullmatch(row["labeller"]):
        return f"labeller {row['labeller']!r} must be 1-32 letters, digits, '_', '.' or '-'"
    if row["verdict"] == "undo":
        return None
    if row["verdict"] not in VERDICTS:
        return f"verdict must be one of {', '.join(VERDICTS)} or undo, got {row['verdict']!r}"
    for key in ("prompt", "chosen", "rejected", "chosen_model", "rejected_model"):
        if not isinstance(row.get(key), str):
            return f'field "{key}" must be a string (preference format)'
    if row.get("left") not in ("a", "b"):
        return f'field "left" must be "a" or "b", got {row.get("left")!r}'
    return None


def apply(current: dict[tuple[str, str], dict], row: dict) -> str | None:
    """Take one valid line into `current`, (labeller, pair) -> the judgement in force; what is wrong with the line
    in that place (an undo of nothing, a second judgement without an undo between), or None."""
    key = (row["labeller"], row["pair"])
    if row["verdict"] == "undo":
        if key not in current:
            return f"undo of pair {row['pair']!r}, which {row['labeller']!r} has no judgement of"
        del current[key]
    elif key in current:
        return f"a second judgement of pair {row['pair']!r} by {row['labeller']!r} without an undo between"
    else:
        current[key] = row
    return None


def read(path: str | Path = JUDGEMENTS) -> list[dict]:
    """Every line, validated in order: a bad line, or an undo of nothing, is a DataError naming its line.
    A missing file is an error too (not pulled?); an empty one holds no judgements."""
    path = Path(path)
    rows, current = [], {}
    for lineno, row in iter_jsonl(path):
        problem = check(row) or apply(current, row)
        if problem:
            raise DataError(f"{path}:{lineno}: {problem}")
        rows.append(row)
    if path.stat().st_size and not path.read_bytes().endswith(b"\n"):
        raise DataError(f"{path}: the last line is cut short (a write stopped midway); remove it and relabel")
    return rows


def standing(rows: list[dict]) -> dict[tuple[str, str], dict]:
    """(labeller, pair) -> the judgement in force once every undo is applied, in the order they were made (a
    judgement undone and made again counts from the second time)."""
    current: dict[tuple[str, str], dict] = {}
    for row in rows:
        apply(current, row)
    return current


def training_pairs(path: str | Path = JUDGEMENTS) -> list[dict]:
    """Preference rows from the judgements: per pair, the answer most labellers chose. Ties, "both bad" and
    pairs whose labellers split evenly teach no preference and are left out."""
    votes: dict[str, Counter] = {}
    rows: dict[tuple[str, str], dict] = {}
    for (_, pair), row in standing(read(path)).items():
        if row["verdict"] in DECISIVE:
            votes.setdefault(pair, Counter())[row["verdict"]] += 1
            rows[(pair, row["verdict"])] = row
    pairs = []
    for pair, count in votes.items():
        (top, n), *rest = count.most_common()
        if not rest or rest[0][1] < n:
            row = rows[(pair, top)]
            pairs.append({"prompt": row["prompt"], "chosen": row["chosen"], "rejected": row["rejected"],
                          "family": row.get("family", "all")})
    if not pairs:
        raise DataError(f"{path}: no judgement prefers one answer (label pairs with `just label`)")
    return pairs


def append(path: str | Path, row: dict) -> None:
    """Add one judgement as one write under an exclusive lock, flushed to disk before returning: a second
    labeller's line never lands inside this one, and an answered request is never lost."""
    problem = check(row)
    if problem:
        raise DataError(f"{path}: refusing to write a bad judgement: {problem}")
    line = (json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n").encode()
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            raise DataError(f"{path}: the last line is cut short (a write stopped midway); remove it and relabel")
        written = 0
        while written < len(line):
            written += os.write(fd, line[written:])
        os.fsync(fd)
    finally:
        os.close(fd)
