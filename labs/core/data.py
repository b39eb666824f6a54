"""The data contract: JSONL in public schemas, validated row by row (labs/core/convert.py converts public
dataset formats into it).

| kind       | schema                                           |
| ---------- | ------------------------------------------------ |
| text       | {"text"}                                         |
| sft        | {"prompt","completion"} or {"messages":[...]}    |
| preference | {"prompt","chosen","rejected"}                   |
| rl         | {"prompt","answer"}                              |

Extra keys (e.g. the task world's "family") are kept: real datasets carry metadata columns too.
A bad row stops everything with `FILE:LINE: what was expected` (DataError).
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from labs.core.run import atomic_path


class DataError(Exception):
    """A bad input row or file; the message is `FILE:LINE: what was expected`."""


ROLES = ("system", "user", "assistant")


def open_text(path: Path, mode: str):
    if path.suffix == ".gz":
        return gzip.open(path, mode + "t", encoding="utf-8")
    return open(path, mode, encoding="utf-8")


def require_str(row: dict, keys: Iterable[str]) -> str | None:
    for key in keys:
        if key not in row:
            return f'missing field "{key}"'
        if not isinstance(row[key], str):
            return f'field "{key}" must be a string, got {type(row[key]).__name__}'
    return None


def check_messages(messages) -> str | None:
    if not isinstance(messages, list) or not messages:
        return 'field "messages" must be a non-empty list of {"role","content"}'
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or require_str(message, ("role", "content")):
            return f'messages[{i}] must be {{"role": str, "content": str}}'
        if message["role"] not in ROLES:
            return f"messages[{i}].role must be one of {', '.join(ROLES)}, got {message['role']!r}"
    if messages[-1]["role"] != "assistant":
        return "the last message must be the assistant's"
    return None


def _check_sft(row: dict) -> str | None:
    if "messages" in row:
        return check_messages(row["messages"])
    return require_str(row, ("prompt", "completion"))


SCHEMAS: dict[str, Callable[[dict], str | None]] = {
    "text": lambda row: require_str(row, ("text",)),
    "sft": _check_sft,
    "preference": lambda row: require_str(row, ("prompt", "chosen", "rejected")),
    "rl": lambda row: require_str(row, ("prompt", "answer")),
}


def numbered_rows(path: str | Path) -> Iterator[tuple[int, dict | str]]:
    """(line number, row) for every non-blank line, or (line number, why the line is not a JSON object)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    with open_text(path, "r") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                yield lineno, f"not valid JSON ({exc.msg} at column {exc.colno})"
                continue
            yield lineno, row if isinstance(row, dict) else f"expected a JSON object, got {type(row).__name__}"


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """(line number, row) for every non-blank line; a line that is not a JSON object is a DataError."""
    for lineno, row in numbered_rows(path):
        if isinstance(row, str):
            raise DataError(f"{path}:{lineno}: {row}")
        yield lineno, row


def read_jsonl(path: str | Path, kind: str) -> list[dict]:
    """Every row of `path`, each validated against the `kind` schema."""
    check = SCHEMAS[kind]
    rows = []
    for lineno, row in iter_jsonl(path):
        problem = check(row)
        if problem:
            raise DataError(f"{path}:{lineno}: {problem} ({kind} schema)")
        rows.append(row)
    if not rows:
        raise DataError(f"{path}: no rows (expected {kind} JSONL)")
    return rows


def user_turn(prompt: str) -> list[dict]:
    return [{"role": "user", "content": prompt}]


def chat_prompt(tokenizer, prompt: str) -> str:
    """`prompt` as a user turn in the tokenizer's chat template, followed by the opening of the assistant's:
    the text a model continues with its answer."""
    return tokenizer.apply_chat_template(user_turn(prompt), tokenize=False, add_generation_prompt=True)


def assistant_turn(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def preference_chats(rows: list[dict]) -> list[dict]:
    """Preference rows -> TRL's conversational preference format (explicit prompt), so the chat template
    applies exactly as in SFT."""
    return [{"prompt": user_turn(r["prompt"]), "chosen": assistant_turn(r["chosen"]),
             "rejected": assistant_turn(r["rejected"])} for r in rows]


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> int:
    """Write atomically (temp file, then rename): a failure midway leaves any earlier file as it was."""
    path = Path(path)
    count = 0
    with atomic_path(path) as tmp:
        # gzip stores the file name and mtime in its header; a fixed mtime keeps outputs byte-identical.
        if path.suffix == ".gz":
            raw = open(tmp, "wb")
            handle = io.TextIOWrapper(gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0), encoding="utf-8")
        else:
            raw, handle = None, open(tmp, "w", encoding="utf-8")
        with handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
                count += 1
        if raw:
            raw.close()
    return count
