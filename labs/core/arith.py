"""The long additions (data.arith) as chats, shared by cot (which compares targets) and curriculum (which orders
them by operand length): their splits, and a row's target with its worked steps or with the answer alone."""

from __future__ import annotations

import re
from pathlib import Path

from labs.core.data import DataError, read_jsonl

PREPARED = Path("data/prepared")
# GSM8K's calculator annotations ("<<48/2=24>>"): tool-call markup for its own solver, not working to imitate
CALCULATOR_NOTE = re.compile(r"<<[^>]*>>")


def splits() -> tuple[list[dict], list[dict], list[dict]]:
    """data/prepared/arith_{train,val,test}.jsonl; a clear error when `just data` has not made them."""
    if not (PREPARED / "arith_train.jsonl").exists():
        raise DataError(f"{PREPARED}: no arith_train.jsonl: the long additions come from `just data`, then "
                        "`just lab prepare`")
    train, val, test = (read_jsonl(PREPARED / f"arith_{split}.jsonl", "rl") for split in ("train", "val", "test"))
    return train, val, test


def target(row: dict, steps: bool) -> dict:
    """A chat row whose completion is the working and the answer, or the answer alone."""
    working = CALCULATOR_NOTE.sub("", row.get("solution", "")).strip()
    answer = f"Answer: {row['answer']}"
    return {"prompt": row["prompt"], "completion": f"{working} {answer}" if steps and working else answer}
