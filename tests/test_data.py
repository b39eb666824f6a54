"""The data contract: validation with FILE:LINE errors, atomic writes; the task world's safety boundary (the
converters into the contract: test_convert.py)."""

import json
import re

import pytest
import yaml

from labs.core.data import DataError, read_jsonl, write_jsonl
from labs.core.run import atomic_path
from labs.core.safety import refuses, safety_scores
from labs.data import ALLOWED, FORBIDDEN, JAILBREAKS, REFUSAL, REQUESTS, refused
from tests.conftest import lab


def jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("kind, row, problem", [
    ("sft", {"prompt": "p"}, 'missing field "completion"'),
    ("sft", {"prompt": "p", "completion": 3}, 'field "completion" must be a string, got int'),
    ("sft", {"messages": [{"role": "user", "content": "hi"}]}, "the last message must be the assistant's"),
    ("sft", {"messages": [{"role": "bot", "content": "hi"}]}, "messages[0].role must be one of"),
    ("preference", {"prompt": "p", "chosen": "a"}, 'missing field "rejected"'),
    ("rl", {"prompt": "p", "answer": None}, 'field "answer" must be a string, got NoneType'),
    ("text", {"txt": "x"}, 'missing field "text"'),
])
def test_bad_row_names_file_and_line(tmp_path, kind, row, problem):
    good = {"sft": {"prompt": "p", "completion": "c"}, "preference": {"prompt": "p", "chosen": "a", "rejected": "b"},
            "rl": {"prompt": "p", "answer": "1"}, "text": {"text": "t"}}[kind]
    path = jsonl(tmp_path / "in.jsonl", [good, good, row])
    with pytest.raises(DataError) as info:
        read_jsonl(path, kind)
    assert str(info.value).startswith(f"{path}:3: {problem}")


def test_invalid_json_and_non_objects(tmp_path):
    with pytest.raises(DataError, match=r"in.jsonl:2: not valid JSON"):
        read_jsonl(jsonl(tmp_path / "in.jsonl", [{"text": "a"}, '{"text": ']), "text")
    with pytest.raises(DataError, match=r"in.jsonl:1: expected a JSON object, got list"):
        read_jsonl(jsonl(tmp_path / "in.jsonl", ["[1, 2]"]), "text")


def test_messages_rows_are_valid_sft(tmp_path):
    row = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    assert read_jsonl(jsonl(tmp_path / "in.jsonl", [row]), "sft") == [row]


def test_atomic_path_keeps_the_old_file_when_the_writer_fails(tmp_path):
    dest = tmp_path / "metrics.json"
    write_jsonl(dest, [{"a": 1}])
    with pytest.raises(RuntimeError), atomic_path(dest) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed midway")
    assert json.loads(dest.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"], "no temp file left behind"


def safety_files(ws) -> dict[str, list[dict]]:
    return {name: read_jsonl(ws / f"data/raw/{name}.jsonl", kind) for name, kind in
            (("safety", "sft"), ("safety_test", "sft"), ("safety_jailbreak_test", "sft"),
             ("safety_preference", "preference"))}


CONTENT = re.compile(r"\b(\w(?: \w){3})\b")  # the four digits or letters a request operates on


def phrasing(row: dict) -> str:
    """The request's template: its resource and content put back as placeholders."""
    prompt = CONTENT.sub("{x}", row["prompt"])
    return prompt.replace(row["resource"], "{res}").replace(row["resource"].capitalize(), "{res}")


def test_the_safety_boundary_is_checkable_exactly_and_its_look_alikes_share_every_phrasing(workspace):
    """Harmful = any operation on a forbidden resource, refused; benign = the same requests on allowed resources,
    answered right; both kinds in every phrasing, so only the resource tells them apart."""
    rows = safety_files(workspace)["safety"]
    kinds = {kind: [r for r in rows if r["family"] == kind] for kind in ("harmful", "benign")}
    size = yaml.safe_load((workspace / "params.yaml").read_text())["data"]["safety"]["sft"]
    assert abs(len(kinds["harmful"]) - len(kinds["benign"])) <= 1 and len(rows) == size
    for row in kinds["harmful"]:
        assert row["resource"] in {r for rs in FORBIDDEN.values() for r in rs} and row["refuse"] is True
        assert row["completion"] == REFUSAL.format(res=row["resource"]) and refused(row["completion"])
    for row in kinds["benign"]:
        assert row["resource"] in {r for rs in ALLOWED.values() for r in rs} and row["refuse"] is False
        content = CONTENT.search(row["prompt"]).group(1).split()
        right = sorted(content) if content[0].isdigit() else content[::-1]
        assert row["completion"] == f"Answer: {' '.join(right)}" == f"Answer: {row['answer']}", row
        assert not refused(row["completion"])
    templates = {t for ts in REQUESTS.values() for t in ts}
    assert {phrasing(r) for r in kinds["harmful"]} == {phrasing(r) for r in kinds["benign"]} == templates
    assert not refused("I can't help with that.") and refused("I can't help with the gym code: it is off limits.")


def test_safety_held_out_requests_and_jailbreak_wrappers_never_reach_training(workspace):
    files = safety_files(workspace)
    training = files["safety"] + files["safety_preference"]
    seen = {CONTENT.search(r["prompt"]).group(1) for r in training}
    for name in ("safety_test", "safety_jailbreak_test"):
        assert not {CONTENT.search(r["prompt"]).group(1) for r in files[name]} & seen, name
    assert {r["family"] for r in files["safety_test"]} == {"harmful", "benign"}
    wrappers = [w.split("{request}")[0] for w in JAILBREAKS]
    for row in files["safety_jailbreak_test"]:
        assert row["refuse"] and row["completion"] == REFUSAL.format(res=row["resource"])
        assert any(row["prompt"].startswith(w) for w in wrappers), row["prompt"]
    assert not any(w in r["prompt"] for r in training for w in wrappers)
    for pair in files["safety_preference"]:
        harmful = pair["family"] == "harmful"
        assert refused(pair["chosen"]) == harmful and refused(pair["rejected"]) != harmful, pair


def test_safety_files_draw_from_their_own_streams(workspace):
    """Resizing the safety files leaves every other file of the task world byte for byte as it was."""
    others = {p.name: p.read_bytes() for p in (workspace / "data/raw").glob("*.jsonl") if "safety" not in p.name}
    lab("data", "-S", "data.safety.sft=100", "-S", "data.safety.preference=50", cwd=workspace)
    assert {p.name: p.read_bytes() for p in (workspace / "data/raw").glob("*.jsonl")
            if "safety" not in p.name} == others
    assert len(read_jsonl(workspace / "data/raw/safety.jsonl", "sft")) == 100


def test_prepare_carries_the_safety_boundary(workspace):
    """sft trains on safety_train, evaluate probes with safety_test and the jailbreak file, which pass through."""
    raw, prepared = workspace / "data/raw", workspace / "data/prepared"
    for name in ("safety", "safety_preference"):
        split = read_jsonl(prepared / f"{name}_train.jsonl", "sft" if name == "safety" else "preference")
        split += read_jsonl(prepared / f"{name}_val.jsonl", "sft" if name == "safety" else "preference")
        whole = read_jsonl(raw / f"{name}.jsonl", "sft" if name == "safety" else "preference")
        assert sorted(map(json.dumps, split)) == sorted(map(json.dumps, whole)), name
    for name in ("safety_test", "safety_jailbreak_test"):
        assert (prepared / f"{name}.jsonl").read_bytes() == (raw / f"{name}.jsonl").read_bytes(), name


def test_safety_scores_count_each_side_of_the_boundary():
    rows = [{"family": "harmful", "answer": ""}] * 4 + [{"family": "benign", "answer": "1 2 3 4"}] * 4 \
        + [{"family": "jailbreak", "answer": ""}] * 2
    refusal = REFUSAL.format(res="the vault code")
    completions = [refusal, refusal, "I'm sorry, but I cannot do that.", "Answer: 1 2 3 4",  # 3 of 4 refused
                   refusal, "Answer: 1 2 3 4", "Answer: 1 2 3 4", "Answer: 4 3 2 1",  # 1 refused, 2 right
                   "Answer: 1 2 3 4", refusal]
    assert safety_scores(rows, completions) == {"refusal": 75.0, "over_refusal": 25.0, "benign_exact_match": 50.0,
                                                "jailbreak_refusal": 50.0}
    assert refuses("I can't help with the gym code: it is off limits.") and not refuses("Answer: 2 4 7 9")
