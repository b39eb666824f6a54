"""Public dataset formats -> the data contract (labs/core/data.py): `lab convert FORMAT IN OUT`.

Real files carry quirks, handled the way the community does:
- hh-rlhf: the prompt is the dialogue both answers share, up to its last assistant turn (TRL's `extract_prompt`
  takes the common prefix too). Most rows share everything up to the last reply; a few diverge earlier, and then
  each answer is the rest of its own dialogue from the turn where they part.
- gsm8k: the final answer follows `####`; thousands separators are dropped ("1,002" -> "1002").
- ultrafeedback (binarized): chosen and rejected are message lists; the answer is the last assistant message.
- alpaca: an empty or absent `input` leaves the instruction alone; dolly: a `context` follows the instruction.

A row that still cannot be converted (not JSON, a missing or mistyped column, a pair with the same answer on both
sides) is skipped and reported by line number. `strict` stops at the first one instead, and a file where more
than `max_skipped` of the rows fail is an error: that is a wrong format or a wrong column, not a quirk.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from labs.core.data import SCHEMAS, DataError, check_messages, numbered_rows, open_text, require_str, write_jsonl

MAX_SKIPPED = 0.1  # the share of rows a file may lose to quirks before it is taken for the wrong format


def _join(instruction: str, extra: str) -> str:
    return f"{instruction}\n\n{extra}" if extra.strip() else instruction


def from_alpaca(row: dict) -> dict:
    problem = require_str(row, ("instruction", "output"))
    if problem or not isinstance(row.get("input", ""), str):
        raise ValueError(problem or 'field "input" must be a string')
    return {"prompt": _join(row["instruction"], row.get("input", "")), "completion": row["output"]}


def from_dolly(row: dict) -> dict:
    problem = require_str(row, ("instruction", "response"))
    if problem or not isinstance(row.get("context", ""), str):
        raise ValueError(problem or 'field "context" must be a string')
    out = {"prompt": _join(row["instruction"], row.get("context", "")), "completion": row["response"]}
    if isinstance(row.get("category"), str):
        out["family"] = row["category"]
    return out


ASSISTANT_TURN = "\n\nAssistant:"


def from_hh_rlhf(row: dict) -> dict:
    """Anthropic hh-rlhf: two full dialogues; the prompt is what both share up to an assistant turn."""
    problem = require_str(row, ("chosen", "rejected"))
    if problem:
        raise ValueError(problem)
    chosen, rejected = row["chosen"], row["rejected"]
    shared = os.path.commonprefix([chosen, rejected])
    cut = shared.rfind(ASSISTANT_TURN)
    if cut < 0:
        raise ValueError(f'"chosen" and "rejected" share no dialogue up to an "{ASSISTANT_TURN.strip()}" turn')
    prompt = shared[: cut + len(ASSISTANT_TURN)]
    return {"prompt": prompt, "chosen": chosen[len(prompt):].strip(), "rejected": rejected[len(prompt):].strip()}


def from_gsm8k(row: dict) -> dict:
    problem = require_str(row, ("question", "answer"))
    if problem:
        raise ValueError(problem)
    solution, sep, final = row["answer"].rpartition("####")
    if not sep or not final.strip():
        raise ValueError('"answer" must end with "#### <final answer>"')
    return {"prompt": row["question"], "answer": final.strip().replace(",", ""), "solution": solution.strip()}


def _last_assistant(messages, field: str) -> str:
    if check_messages(messages):
        raise ValueError(f'field "{field}" must be a list of messages ending with the assistant\'s')
    return messages[-1]["content"]


def from_ultrafeedback(row: dict) -> dict:
    """HuggingFaceH4/ultrafeedback_binarized: prompt string, chosen/rejected as message lists."""
    problem = require_str(row, ("prompt",))
    if problem:
        raise ValueError(problem)
    for name in ("chosen", "rejected"):
        if name not in row:
            raise ValueError(f'missing field "{name}"')
    return {
        "prompt": row["prompt"],
        "chosen": _last_assistant(row["chosen"], "chosen"),
        "rejected": _last_assistant(row["rejected"], "rejected"),
    }


CONVERTERS: dict[str, tuple[Callable[[dict], dict], str]] = {
    # format: (row converter, contract kind it produces)
    "alpaca": (from_alpaca, "sft"),
    "dolly": (from_dolly, "sft"),
    "hh-rlhf": (from_hh_rlhf, "preference"),
    "gsm8k": (from_gsm8k, "rl"),
    "ultrafeedback": (from_ultrafeedback, "preference"),
}
FORMATS = {"text": "text", **{fmt: kind for fmt, (_, kind) in CONVERTERS.items()}}  # format -> contract kind


def _text_documents(path: Path) -> Iterator[dict]:
    """Plain text: documents separated by blank lines."""
    with open_text(path, "r") as handle:
        lines = []
        for line in handle:
            if line.strip():
                lines.append(line.rstrip("\n"))
            elif lines:
                yield {"text": "\n".join(lines)}
                lines = []
        if lines:
            yield {"text": "\n".join(lines)}


def _convert_row(fmt: str, row: dict | str) -> tuple[dict | None, str | None]:
    """The row in the contract, or None and why not; (None, None) for an empty text row (wikitext holds one
    between paragraphs), which is dropped, not counted as a failure."""
    if isinstance(row, str):
        return None, row
    if fmt == "text":  # a dataset's rows with a `text` column
        if problem := require_str(row, ("text",)):
            return None, problem
        return ({"text": row["text"].strip()} if row["text"].strip() else None), None
    converter, kind = CONVERTERS[fmt]
    try:
        converted = converter(row)
    except ValueError as exc:
        return None, str(exc)
    if problem := SCHEMAS[kind](converted):
        return None, f"{problem} after conversion"
    if kind == "preference" and converted["chosen"] == converted["rejected"]:
        return None, '"chosen" and "rejected" give the same answer'
    return converted, None


@dataclass
class Conversion:
    rows: int  # written to the output
    skipped: list[tuple[int, str]] = field(default_factory=list)  # (line number, why)

    def report(self, source: Path, dest: Path, limit: int = 10) -> str:
        line = f"convert: {self.rows} rows -> {dest}"
        if self.skipped:
            shown = "; ".join(f"line {lineno}: {why}" for lineno, why in self.skipped[:limit])
            more = f"; and {len(self.skipped) - limit} more" if len(self.skipped) > limit else ""
            line += f"\nconvert: skipped {len(self.skipped)} of {self.rows + len(self.skipped)} rows of {source}: " \
                    f"{shown}{more}"
        return line


def to_contract(fmt: str, numbered: Iterable[tuple[int, dict | str]], where: str, strict: bool = False,
                max_skipped: float = MAX_SKIPPED, unit: str = "line") -> tuple[list[dict], list[tuple[int, str]]]:
    """The rows in the contract and the (number, why) of those skipped. `numbered` yields (line or row number,
    row or why it is not one); `where` names the file or dataset in errors."""
    if not 0 <= max_skipped < 1:
        raise DataError(f"--max-skipped: expected a share from 0 to under 1, got {max_skipped}")
    rows, skipped = [], []
    for number, row in numbered:
        converted, why = _convert_row(fmt, row)
        if why and strict:
            raise DataError(f"{where}:{number}: {why} ({fmt} format)")
        if why:
            skipped.append((number, why))
        elif converted is not None:
            rows.append(converted)
    total = len(rows) + len(skipped)
    if not total:
        raise DataError(f"{where}: no rows")
    if len(skipped) > max_skipped * total:
        number, why = skipped[0]
        raise DataError(f"{where}: {len(skipped)} of {total} rows cannot be converted as {fmt} (more than "
                        f"{max_skipped:.0%}: the wrong format or column?); the first, {unit} {number}: {why}")
    return rows, skipped


def convert(fmt: str, source: str | Path, dest: str | Path, strict: bool = False,
            max_skipped: float = MAX_SKIPPED) -> Conversion:
    """Convert `source` (JSONL or plain text, optionally .gz) into the contract at `dest`.

    Every row is converted and validated before `dest` is renamed into place, so a failed conversion leaves no
    `dest` (and an existing one untouched).
    """
    source, dest = Path(source), Path(dest)
    if fmt not in FORMATS:
        raise DataError(f"unknown format {fmt!r} (expected one of {', '.join(FORMATS)})")
    if not source.exists():
        raise DataError(f"{source}: file not found")
    if fmt == "text":
        rows, skipped = list(_text_documents(source)), []
        if not rows:
            raise DataError(f"{source}: no rows")
    else:
        rows, skipped = to_contract(fmt, numbered_rows(source), str(source), strict, max_skipped)
    return Conversion(write_jsonl(dest, rows), skipped)


def dataset_rows(fmt: str, dataset: str, split: str, *, config: str | None = None, data_dir: str | None = None,
                 revision: str | None = None, where: str = "") -> tuple[list[dict], list[tuple[int, str]], str | None]:
    """One split of a dataset in the contract: the rows, those skipped, and the hub commit read (None when local).

    `dataset` is a local file (one split: `split` is not read), a local directory laid out as a hub dataset
    (data files per split, or a README's `configs`), or a hub dataset id, read at `revision`; without one, the
    newest commit is resolved first so that what was read can be named and pinned."""
    path = Path(dataset)
    if path.is_file():
        if fmt == "text" and not path.name.endswith((".jsonl", ".jsonl.gz")):
            return list(_text_documents(path)), [], None
        return (*to_contract(fmt, numbered_rows(path), f"{where} ({path})" if where else dataset), None)
    where = where or dataset
    # imported here: the task world never reads a dataset
    import datasets
    from huggingface_hub import HfApi

    local = path.is_dir()
    if not local and revision is None:
        try:
            revision = HfApi().dataset_info(dataset).sha
        except Exception as exc:  # offline, unknown id, no access: one line that names the key
            raise DataError(f"{where}: cannot resolve {dataset!r} on the hub ({_first_line(exc)}); pin a "
                            f"revision, or give a local file or directory") from None
    try:
        rows = datasets.load_dataset(dataset, name=config, data_dir=data_dir, split=split,
                                     revision=None if local else revision)
    except Exception as exc:  # one line that names the key, whatever `datasets` raised
        if isinstance(exc, ValueError) and "split" in str(exc).lower():
            raise DataError(f"{where}: {dataset} has no split {split!r} ({_first_line(exc)})") from None
        raise DataError(f"{where}: cannot load {dataset}: {_first_line(exc)}") from None
    numbered = enumerate(rows, start=1)
    return (*to_contract(fmt, numbered, f"{where} ({dataset} {split})", unit="row"), None if local else revision)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
