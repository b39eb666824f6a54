"""The data contract: JSONL in public schemas, validated row by row, plus converters into it.

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


def _open(path: Path, mode: str):
    if path.suffix == ".gz":
        return gzip.open(path, mode + "t", encoding="utf-8")
    return open(path, mode, encoding="utf-8")


def _require_str(row: dict, keys: Iterable[str]) -> str | None:
    for key in keys:
        if key not in row:
            return f'missing field "{key}"'
        if not isinstance(row[key], str):
            return f'field "{key}" must be a string, got {type(row[key]).__name__}'
    return None


def _check_messages(messages) -> str | None:
    if not isinstance(messages, list) or not messages:
        return 'field "messages" must be a non-empty list of {"role","content"}'
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or _require_str(message, ("role", "content")):
            return f'messages[{i}] must be {{"role": str, "content": str}}'
        if message["role"] not in ROLES:
            return f"messages[{i}].role must be one of {', '.join(ROLES)}, got {message['role']!r}"
    if messages[-1]["role"] != "assistant":
        return "the last message must be the assistant's"
    return None


def _check_sft(row: dict) -> str | None:
    if "messages" in row:
        return _check_messages(row["messages"])
    return _require_str(row, ("prompt", "completion"))


SCHEMAS: dict[str, Callable[[dict], str | None]] = {
    "text": lambda row: _require_str(row, ("text",)),
    "sft": _check_sft,
    "preference": lambda row: _require_str(row, ("prompt", "chosen", "rejected")),
    "rl": lambda row: _require_str(row, ("prompt", "answer")),
}


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """(line number, row) for every non-blank line; a line that is not a JSON object is a DataError."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    with _open(path, "r") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: not valid JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
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


# --- converters: public dataset formats -> the contract -------------------------------------------


def _join(instruction: str, extra: str) -> str:
    return f"{instruction}\n\n{extra}" if extra.strip() else instruction


def from_alpaca(row: dict) -> dict:
    problem = _require_str(row, ("instruction", "output"))
    if problem or not isinstance(row.get("input", ""), str):
        raise ValueError(problem or 'field "input" must be a string')
    return {"prompt": _join(row["instruction"], row.get("input", "")), "completion": row["output"]}


def from_dolly(row: dict) -> dict:
    problem = _require_str(row, ("instruction", "response"))
    if problem or not isinstance(row.get("context", ""), str):
        raise ValueError(problem or 'field "context" must be a string')
    out = {"prompt": _join(row["instruction"], row.get("context", "")), "completion": row["response"]}
    if isinstance(row.get("category"), str):
        out["family"] = row["category"]
    return out


ASSISTANT_TURN = "\n\nAssistant:"


def from_hh_rlhf(row: dict) -> dict:
    """Anthropic hh-rlhf: two full dialogues sharing everything up to the last assistant turn."""
    problem = _require_str(row, ("chosen", "rejected"))
    if problem:
        raise ValueError(problem)
    cut = row["chosen"].rfind(ASSISTANT_TURN)
    if cut < 0:
        raise ValueError(f'"chosen" has no "{ASSISTANT_TURN.strip()}" turn')
    prompt = row["chosen"][: cut + len(ASSISTANT_TURN)]
    if not row["rejected"].startswith(prompt):
        raise ValueError('"chosen" and "rejected" must share the dialogue up to the last assistant turn')
    return {
        "prompt": prompt,
        "chosen": row["chosen"][len(prompt):].strip(),
        "rejected": row["rejected"][len(prompt):].strip(),
    }


def from_gsm8k(row: dict) -> dict:
    problem = _require_str(row, ("question", "answer"))
    if problem:
        raise ValueError(problem)
    solution, sep, final = row["answer"].rpartition("####")
    if not sep or not final.strip():
        raise ValueError('"answer" must end with "#### <final answer>"')
    return {"prompt": row["question"], "answer": final.strip().replace(",", ""), "solution": solution.strip()}


def _last_assistant(messages, field: str) -> str:
    if _check_messages(messages):
        raise ValueError(f'field "{field}" must be a list of messages ending with the assistant\'s')
    return messages[-1]["content"]


def from_ultrafeedback(row: dict) -> dict:
    """HuggingFaceH4/ultrafeedback_binarized: prompt string, chosen/rejected as message lists."""
    problem = _require_str(row, ("prompt",))
    if problem:
        raise ValueError(problem)
    for field in ("chosen", "rejected"):
        if field not in row:
            raise ValueError(f'missing field "{field}"')
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


def _text_documents(path: Path) -> Iterator[tuple[int, dict]]:
    """Plain text: documents separated by blank lines; the line number is where a document starts."""
    with _open(path, "r") as handle:
        lines, start = [], None
        for lineno, line in enumerate(handle, start=1):
            if line.strip():
                start = start or lineno
                lines.append(line.rstrip("\n"))
            elif lines:
                yield start, {"text": "\n".join(lines)}
                lines, start = [], None
        if lines:
            yield start, {"text": "\n".join(lines)}


def convert(fmt: str, source: str | Path, dest: str | Path) -> int:
    """Convert `source` (JSONL or plain text, optionally .gz) into the contract at `dest`.

    Every row is converted and validated before `dest` is renamed into place, so a bad row leaves no
    `dest` (and an existing one untouched).
    """
    source = Path(source)
    if fmt != "text" and fmt not in CONVERTERS:
        raise DataError(f"unknown format {fmt!r} (expected one of text, {', '.join(CONVERTERS)})")
    if not source.exists():
        raise DataError(f"{source}: file not found")
    if fmt == "text":
        rows = [row for _, row in _text_documents(source)]
    else:
        to_contract, kind = CONVERTERS[fmt]
        rows = []
        for lineno, row in iter_jsonl(source):
            try:
                converted = to_contract(row)
            except ValueError as exc:
                raise DataError(f"{source}:{lineno}: {exc} ({fmt} format)") from None
            problem = SCHEMAS[kind](converted)
            if problem:
                raise DataError(f"{source}:{lineno}: {problem} after conversion ({fmt} format)")
            rows.append(converted)
    if not rows:
        raise DataError(f"{source}: no rows")
    return write_jsonl(dest, rows)
