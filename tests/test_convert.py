"""`lab convert`: public dataset formats into the data contract, on files written here in each format's exact
schema with the quirks real files carry (labs/core/convert.py)."""

import gzip
import json
import random

import pytest
import yaml

from labs.core.convert import convert
from labs.core.data import DataError, read_jsonl
from tests.conftest import ROOT, SPINE, build_order, lab, make_workspace, run, run_in_parallel


def jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


CASES = {
    "alpaca": ({"instruction": "Add.", "input": "2 and 3", "output": "5"},
               {"prompt": "Add.\n\n2 and 3", "completion": "5"}),
    "dolly": ({"instruction": "Name it.", "context": "", "response": "Bo", "category": "qa"},
              {"prompt": "Name it.", "completion": "Bo", "family": "qa"}),
    "hh-rlhf": ({"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: hi\n\nAssistant: go away"},
                {"prompt": "\n\nHuman: hi\n\nAssistant:", "chosen": "hello", "rejected": "go away"}),
    "gsm8k": ({"question": "1+1?", "answer": "One and one.\n#### 1,002"},
              {"prompt": "1+1?", "answer": "1002", "solution": "One and one."}),
    "ultrafeedback": ({"prompt": "q",
                       "chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "good"}],
                       "rejected": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "bad"}],
                       "score_chosen": 9.0},
                      {"prompt": "q", "chosen": "good", "rejected": "bad"}),
}
BAD = {
    "alpaca": ({"instruction": "x"}, 'missing field "output"'),
    "dolly": ({"instruction": "x", "response": 1}, 'field "response" must be a string'),
    "hh-rlhf": ({"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: c\n\nAssistant: d"},
                'share no dialogue up to an "Assistant:" turn'),
    "gsm8k": ({"question": "q", "answer": "no marker"}, '"answer" must end with "#### <final answer>"'),
    "ultrafeedback": ({"prompt": "q", "chosen": "text", "rejected": []}, 'field "chosen" must be a list'),
}


@pytest.mark.parametrize("fmt", sorted(CASES))
def test_converters_map_public_formats_into_the_contract(tmp_path, fmt):
    source, expected = CASES[fmt]
    out = tmp_path / "out.jsonl"
    assert convert(fmt, jsonl(tmp_path / "in.jsonl", [source]), out).rows == 1
    assert [json.loads(line) for line in out.read_text().splitlines()] == [expected]


@pytest.mark.parametrize("fmt", sorted(BAD))
def test_strict_stops_at_a_bad_row_without_output(tmp_path, fmt):
    row, problem = BAD[fmt]
    out = tmp_path / "out.jsonl"
    with pytest.raises(DataError) as info:
        convert(fmt, jsonl(tmp_path / "in.jsonl", [CASES[fmt][0], row]), out, strict=True)
    assert str(info.value).startswith(f"{tmp_path / 'in.jsonl'}:2: ") and problem in str(info.value)
    assert not out.exists()


def test_text_and_gzip(tmp_path):
    source = tmp_path / "in.txt.gz"
    with gzip.open(source, "wt") as f:
        f.write("first doc\nline two\n\n\nsecond doc\n")
    out = tmp_path / "out.jsonl.gz"
    assert convert("text", source, out).rows == 2
    assert read_jsonl(out, "text") == [{"text": "first doc\nline two"}, {"text": "second doc"}]
    again = tmp_path / "again.jsonl.gz"
    convert("text", source, again)
    assert out.read_bytes() == again.read_bytes(), "gzip output must not embed a timestamp"


# --- files in the real formats, a few hundred rows each, with the quirks of the real files ---------------------

TURN = "\n\nAssistant:"
WORDS = "the a cat dog river stone light paper green slow quick night city bread music".split()


def sentence(rng: random.Random, n: int = 8) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def hh_rlhf_rows(rng: random.Random, n: int) -> list[dict]:
    """Anthropic/hh-rlhf rows: 1 to 3 exchanges, the two dialogues differing in the last assistant reply."""
    rows = []
    for _ in range(n):
        exchanges = rng.randint(0, 2)
        dialogue = "".join(f"\n\nHuman: {sentence(rng)}{TURN} {sentence(rng)}" for _ in range(exchanges))
        dialogue += f"\n\nHuman: {sentence(rng)}{TURN}"
        rows.append({"chosen": f"{dialogue} Sure. {sentence(rng)}", "rejected": f"{dialogue} No. {sentence(rng)}"})
    return rows


def test_hh_rlhf_rows_that_part_before_the_last_reply_keep_the_shared_dialogue_as_prompt(tmp_path):
    """harmless-base's test file holds rows whose two dialogues part before the last assistant turn (5 of 2,312):
    the prompt is what they share up to an assistant turn, as TRL's extract_prompt takes the common prefix, and
    each answer is the rest of its own dialogue. Rows that still fail are skipped and named by line."""
    rng = random.Random(0)
    rows = hh_rlhf_rows(rng, 300)
    parted = {17, 120, 121, 250, 299}  # 0-based rows whose dialogues part at an earlier assistant reply
    for i in parted:
        first = f"\n\nHuman: {sentence(rng)}{TURN}"
        rest = [f"{sentence(rng)}\n\nHuman: {sentence(rng)}{TURN} {sentence(rng)}" for _ in range(2)]
        rows[i] = {"chosen": f"{first} Gladly. {rest[0]}", "rejected": f"{first} Never. {rest[1]}"}
    rows[40] = {"chosen": rows[40]["chosen"], "rejected": rows[40]["chosen"]}  # the same dialogue twice
    lines = [json.dumps(row) for row in rows]
    lines[200] = lines[200][:57]  # a line cut short
    source = tmp_path / "harmless-base-test.jsonl"
    source.write_text("\n".join(lines) + "\n")
    out = tmp_path / "hh.jsonl"

    proc = lab("convert", "hh-rlhf", str(source), str(out), cwd=ROOT)
    converted = read_jsonl(out, "preference")
    assert len(converted) == 298
    assert proc.stdout.splitlines()[-1].startswith(
        f'convert: skipped 2 of 300 rows of {source}: line 41: "chosen" and "rejected" give the same answer; '
        "line 201: not valid JSON"), proc.stdout
    originals = [(i, row) for i, row in enumerate(rows) if i not in (40, 200)]
    assert len(converted) == len(originals) == 298, "the rows in their order, less the two skipped"
    for (i, row), got in zip(originals, converted, strict=True):
        if i in parted:  # the prompt is the first exchange, which both share; each answer the rest of its dialogue
            first = row["chosen"][:row["chosen"].index(TURN) + len(TURN)]
            assert got["prompt"] == first and got["chosen"].startswith("Gladly.") and \
                got["rejected"].startswith("Never."), got
            assert "\n\nHuman:" in got["chosen"] and "\n\nHuman:" in got["rejected"], "turns and all"
        else:  # everything up to the last assistant turn, then each reply
            cut = row["chosen"].rindex(TURN) + len(TURN)
            assert got == {"prompt": row["chosen"][:cut], "chosen": row["chosen"][cut:].strip(),
                           "rejected": row["rejected"][cut:].strip()}

    before = out.read_bytes()
    proc = lab("convert", "hh-rlhf", str(source), str(out), "--strict", cwd=ROOT, check=False)
    assert proc.returncode == 2 and proc.stderr.strip() == \
        f'error: {source}:41: "chosen" and "rejected" give the same answer (hh-rlhf format)'
    assert out.read_bytes() == before, "a failed conversion leaves the earlier output as it was"


def test_gsm8k_ultrafeedback_alpaca_and_dolly_files_convert_with_their_quirks(tmp_path):
    rng = random.Random(1)
    gsm8k = []
    for _ in range(200):
        a, b = rng.randint(100, 999), rng.randint(1000, 9999)
        gsm8k.append({"question": f"Sam has {a} apples and buys {b} more. How many now?",
                      "answer": f"Sam has {a} + {b} = <<{a}+{b}={a + b}>>{a + b} apples.\n#### {a + b:,}"})
    gsm8k[77]["answer"] = "The answer is 12."  # no #### line
    ultra = []
    for i in range(200):
        prompt, good, bad = sentence(rng), sentence(rng), sentence(rng)
        ultra.append({"prompt": prompt, "prompt_id": f"{i:064x}",
                      "chosen": [{"content": prompt, "role": "user"}, {"content": good, "role": "assistant"}],
                      "rejected": [{"content": prompt, "role": "user"}, {"content": bad, "role": "assistant"}],
                      "messages": [{"content": prompt, "role": "user"}, {"content": good, "role": "assistant"}],
                      "score_chosen": 8.0, "score_rejected": 5.0})
    ultra[5]["rejected"] = ultra[5]["chosen"]  # a tie the binarizing kept
    alpaca = [{"instruction": sentence(rng), "input": "" if i % 3 else sentence(rng), "output": sentence(rng),
               "text": "Below is an instruction ..."} for i in range(200)]
    dolly = [{"instruction": sentence(rng), "context": sentence(rng) if i % 2 else "", "response": sentence(rng),
              "category": rng.choice(["open_qa", "closed_qa", "summarization"])} for i in range(200)]

    out = tmp_path / "gsm8k.jsonl"
    result = convert("gsm8k", jsonl(tmp_path / "gsm8k-train.jsonl", gsm8k), out)
    assert result.rows == 199 and result.skipped == [(78, '"answer" must end with "#### <final answer>"')]
    rows = read_jsonl(out, "rl")
    assert all("," not in row["answer"] and int(row["answer"]) >= 1100 for row in rows), "thousands joined up"
    assert rows[0]["solution"].startswith("Sam has") and "####" not in rows[0]["solution"]

    result = convert("ultrafeedback", jsonl(tmp_path / "ultra.jsonl", ultra), tmp_path / "ultra-out.jsonl")
    assert result.rows == 199 and result.skipped == [(6, '"chosen" and "rejected" give the same answer')]
    assert read_jsonl(tmp_path / "ultra-out.jsonl", "preference")[0] == \
        {"prompt": ultra[0]["prompt"], "chosen": ultra[0]["chosen"][1]["content"],
         "rejected": ultra[0]["rejected"][1]["content"]}

    convert("alpaca", jsonl(tmp_path / "alpaca.jsonl", alpaca), tmp_path / "alpaca-out.jsonl")
    rows = read_jsonl(tmp_path / "alpaca-out.jsonl", "sft")
    assert rows[1]["prompt"] == alpaca[1]["instruction"], "an empty input leaves the instruction alone"
    assert rows[0]["prompt"] == f"{alpaca[0]['instruction']}\n\n{alpaca[0]['input']}"

    convert("dolly", jsonl(tmp_path / "dolly.jsonl", dolly), tmp_path / "dolly-out.jsonl")
    rows = read_jsonl(tmp_path / "dolly-out.jsonl", "sft")
    assert rows[1]["prompt"] == f"{dolly[1]['instruction']}\n\n{dolly[1]['context']}" and rows[0]["prompt"] == \
        dolly[0]["instruction"]
    assert {row["family"] for row in rows} <= {"open_qa", "closed_qa", "summarization"}


def test_a_file_of_another_format_is_one_line_exit_2_and_writes_nothing(tmp_path):
    """Most rows failing is a wrong format or column, not quirks: the share allowed is 10% unless given."""
    dolly = [{"instruction": f"Say {i}.", "context": "", "response": str(i), "category": "open_qa"} for i in range(50)]
    source = jsonl(tmp_path / "dolly.jsonl", dolly)
    out = tmp_path / "out.jsonl"
    out.write_text("previous\n")
    proc = lab("convert", "alpaca", str(source), str(out), cwd=ROOT, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"error: {source}: 50 of 50 rows cannot be converted as alpaca (more than 10%: "
                                   'the wrong format or column?); the first, line 1: missing field "output"')
    assert out.read_text() == "previous\n"

    # a few bad rows pass under the default share and fail under a smaller one
    source = jsonl(tmp_path / "alpaca.jsonl", [CASES["alpaca"][0]] * 19 + [{"instruction": "x"}])
    assert lab("convert", "alpaca", str(source), str(out), cwd=ROOT).returncode == 0
    assert len(read_jsonl(out, "sft")) == 19
    proc = lab("convert", "alpaca", str(source), str(out), "--max-skipped", "0.01", cwd=ROOT, check=False)
    assert proc.returncode == 2 and "1 of 20 rows cannot be converted as alpaca (more than 1%" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    proc = lab("convert", "alpaca", str(source), str(out), "--max-skipped", "lots", cwd=ROOT, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: --max-skipped: expected a share such as 0.1, got lots"
    assert len(read_jsonl(out, "sft")) == 19, "a refused conversion leaves the earlier output"


# --- `data.source: real`: the data lab reads datasets in place of the task world's files ------------------------

def hub_like(root, rng: random.Random):
    """Local directories laid out as the hub's repositories (no network here): hh-rlhf's per-subset gzipped JSONL
    (`harmless-base/train.jsonl.gz`), gsm8k's parquet files under a README's `main` config."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    hh = root / "Anthropic__hh-rlhf"
    for subset in ("harmless-base", "helpful-base"):
        (hh / subset).mkdir(parents=True)
        for split, n in (("train", 300), ("test", 60)):
            rows = hh_rlhf_rows(rng, n)
            if subset == "harmless-base" and split == "train":
                rows[9] = {"chosen": rows[9]["chosen"], "rejected": rows[9]["chosen"]}  # a tie: skipped
            with gzip.open(hh / subset / f"{split}.jsonl.gz", "wt") as f:
                f.write("".join(json.dumps(row) + "\n" for row in rows))
    gsm = root / "openai__gsm8k"
    (gsm / "main").mkdir(parents=True)
    (gsm / "README.md").write_text("---\nconfigs:\n- config_name: main\n  data_files:\n  - split: train\n"
                                   "    path: main/train-*\n  - split: test\n    path: main/test-*\n---\n")
    for split, n in (("train", 200), ("test", 50)):
        numbers = [(rng.randint(100, 999), rng.randint(1000, 9999)) for _ in range(n)]
        table = pa.table({"question": [f"What is {a} plus {b}?" for a, b in numbers],
                          "answer": [f"{a} + {b} = <<{a}+{b}={a + b}>>{a + b}\n#### {a + b:,}" for a, b in numbers]})
        pq.write_table(table, gsm / "main" / f"{split}-00000-of-00001.parquet")
    return hh, gsm


def real_params(ws, **sources) -> None:
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["data"]["source"] = "real"
    params["data"]["real"] = sources
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def real_files(ws, tmp_path, rng: random.Random, sft, sft_format: str, rows: dict[str, tuple[int, int]]) -> None:
    """`ws`'s data.real on files in the real formats: `sft` (in `sft_format`), hh-rlhf and GSM8K in hub-like
    directories and a text corpus, each kind drawn to its (rows, held-out rows)."""
    hh, gsm = hub_like(tmp_path / "hub", rng)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(f"{sentence(rng)}\n{sentence(rng)}" for _ in range(200)) + "\n")
    sizes = {kind: {"rows": n, "test_rows": held_out} for kind, (n, held_out) in rows.items()}
    real_params(ws, corpus={"dataset": str(corpus), "format": "text", **sizes["corpus"]},
                sft={"dataset": str(sft), "format": sft_format, **sizes["sft"]},
                preference={"dataset": str(hh), "data_dir": "harmless-base", "format": "hh-rlhf", "test": "test",
                            **sizes["preference"]},
                rl={"dataset": str(gsm), "config": "main", "format": "gsm8k", "test": "test", **sizes["rl"]})


def alpaca_file(tmp_path, rng: random.Random):
    """300 tatsu-lab/alpaca rows, every other one with an empty `input`."""
    return jsonl(tmp_path / "alpaca_data.jsonl", [
        {"instruction": sentence(rng), "input": "" if i % 2 else sentence(rng), "output": sentence(rng)}
        for i in range(300)])


def test_a_real_source_replaces_the_task_world_files_and_prepare_takes_them(workspace, tmp_path):
    rng = random.Random(2)
    alpaca = alpaca_file(tmp_path, rng)
    real_files(workspace, tmp_path, rng, alpaca, "alpaca",
               {"corpus": (100, 0), "sft": (200, 50), "preference": (200, 40), "rl": (150, 30)})
    env = {"HF_DATASETS_CACHE": str(tmp_path / "cache")}
    untouched = {p.name: p.read_bytes() for p in (workspace / "data/raw").glob("*.jsonl")
                 if p.stem.startswith(("domain", "arith", "safety"))}
    world = {f"world_{name}.jsonl": (workspace / f"data/raw/{name}.jsonl").read_bytes()
             for kind in ("sft", "preference", "rl") for name in (kind, f"{kind}_test")}

    proc = lab("data", cwd=workspace, env=env)
    raw = workspace / "data/raw"
    counts = {name: len(read_jsonl(raw / f"{name}.jsonl", kind)) for name, kind in (
        ("corpus", "text"), ("sft", "sft"), ("sft_test", "sft"), ("preference", "preference"),
        ("preference_test", "preference"), ("rl", "rl"), ("rl_test", "rl"))}
    assert counts == {"corpus": 100, "sft": 200, "sft_test": 50, "preference": 200, "preference_test": 40, "rl": 150,
                      "rl_test": 30}, proc.stdout
    sft, held_out = read_jsonl(raw / "sft.jsonl", "sft"), read_jsonl(raw / "sft_test.jsonl", "sft")
    assert not {row["prompt"] for row in sft} & {row["prompt"] for row in held_out}, "carved apart"
    assert all(row["answer"] == str(int(row["answer"])) for row in read_jsonl(raw / "rl_test.jsonl", "rl"))
    sources = json.loads((raw / "sources.json").read_text())
    assert sources["preference"]["skipped"] == 1 and sources["preference"]["revision"] is None, "local: no commit"
    assert sources["preference"]["skipped_rows"] == ['10: "chosen" and "rejected" give the same answer']
    assert "data: preference from" in proc.stdout and "skipped 1" in proc.stdout
    assert {p.name: p.read_bytes() for p in raw.glob("*.jsonl") if p.stem.startswith(("domain", "arith", "safety"))} \
        == untouched, "the files no real kind replaces stay the task world's"
    assert {name: (raw / name).read_bytes() for name in world} == world, "the task world's files, kept apart"

    before = {p.name: p.read_bytes() for p in raw.iterdir()}
    lab("data", cwd=workspace, env=env)
    assert {p.name: p.read_bytes() for p in raw.iterdir()} == before, "the same draw: data.dvc stays exact"

    proc = lab("prepare", cwd=workspace)
    assert "preference_test=40" in proc.stdout and "rl_test=30" in proc.stdout, proc.stdout
    prepared = workspace / "data/prepared"
    assert all((prepared / name).read_bytes() == world[name] for name in world if name.endswith("_test.jsonl"))
    assert {r["family"] for r in read_jsonl(prepared / "world_sft_train.jsonl", "sft")} == {"add", "sort"}
    assert not any("family" in r for r in read_jsonl(prepared / "sft_train.jsonl", "sft")), "Alpaca has none"


@pytest.mark.parametrize("change, expected", [
    ({"preference": {"test": "validation"}}, "data.real.preference.test: {hh} has no split 'validation'"),
    ({"sft": {"format": "dolly"}}, "data.real.sft ({alpaca}): 300 of 300 rows cannot be converted as dolly "
                                   "(more than 10%: the wrong format or column?); the first, line 1: "
                                   'missing field "response"'),
    ({"rl": {"format": "hh-rlhf"}}, "data.real.rl.format: hh-rlhf gives preference rows, not rl"),
    ({"sft": {"rows": 400}}, "data.real.sft: asks for 400 rows and 50 held out; {alpaca} gives 250 and 50"),
    ({"sft": {"dataset": "tatsu-lab/alpaca"}}, "data.real.sft: cannot resolve 'tatsu-lab/alpaca' on the hub"),
])
def test_a_bad_real_source_is_one_line_and_leaves_data_raw_as_it_was(workspace, tmp_path, change, expected):
    rng = random.Random(3)
    hh, _ = hub_like(tmp_path / "hub", rng)
    alpaca = jsonl(tmp_path / "alpaca.jsonl", [{"instruction": sentence(rng), "input": "", "output": sentence(rng)}
                                               for _ in range(300)])
    sources = {"sft": {"dataset": str(alpaca), "format": "alpaca", "rows": 200, "test_rows": 50},
               "preference": {"dataset": str(hh), "data_dir": "harmless-base", "format": "hh-rlhf", "test": "test",
                              "rows": 100, "test_rows": 20},
               "rl": None, "corpus": None}
    for kind, keys in change.items():
        sources[kind] = {**(sources[kind] or {"dataset": str(alpaca), "format": "gsm8k"}), **keys}
    real_params(workspace, **sources)
    before = {p.name: p.read_bytes() for p in (workspace / "data/raw").iterdir()}
    proc = lab("data", cwd=workspace, check=False, env={"HF_DATASETS_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 2, proc.stdout
    assert proc.stderr.strip().startswith(f"error: params.yaml: {expected.format(hh=hh, alpaca=alpaca)}"), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert {p.name: p.read_bytes() for p in (workspace / "data/raw").iterdir()} == before


def test_a_text_column_drops_its_empty_rows_without_counting_them_as_failures(tmp_path):
    """wikitext's rows hold one paragraph each and an empty row between them: those are not failures."""
    from labs.core.convert import dataset_rows

    rows = [{"text": ""}, {"text": " = Title = \n"}] + [{"text": ""}, {"text": "A paragraph."}] * 10 + [{"text": 3}]
    got, skipped, revision = dataset_rows("text", str(jsonl(tmp_path / "wiki.jsonl", rows)), "train")
    assert got == [{"text": "= Title ="}] + [{"text": "A paragraph."}] * 10 and revision is None
    assert skipped == [(23, 'field "text" must be a string, got int')], "1 of 12: under the 10% a file may lose"


def test_real_files_train_sft_reward_dpo_and_grpo_and_evaluate_scores_them(workspace, tmp_path):
    """Issue 32's pipeline on the CPU tier: real-format files through data, prepare, tokenizer, pretrain, sft,
    reward, dpo, grpo and evaluate, each on a few steps (a tiny model shows that the pipeline runs, not quality),
    then the labs that keep the task world's chats (continual, mixing) and label. Dolly's categories are the sft
    file's families, so the held-out rows each lab scored are told apart."""
    rng = random.Random(4)
    categories = ("open_qa", "summarization")
    dolly = jsonl(tmp_path / "dolly.jsonl", [
        {"instruction": sentence(rng), "context": "" if i % 3 else sentence(rng, 20),
         "response": f"Here is what you asked for: {sentence(rng)}", "category": categories[i % 2]}
        for i in range(300)])
    real_files(workspace, tmp_path, rng, dolly, "dolly",
               {"corpus": (150, 0), "sft": (250, 40), "preference": (200, 40), "rl": (100, 20)})
    lab("data", cwd=workspace, env={"HF_DATASETS_CACHE": str(tmp_path / "cache")})
    for stage in ("prepare", "tokenizer"):
        lab(stage, cwd=workspace)
    lab("pretrain", "-S", "pretrain.max_steps=20", cwd=workspace)
    short = ["-S", "evaluate.max_new_tokens=16"]  # every lab's held-out replies, cut short: the suite's time
    proc = lab("sft", "-S", "sft.max_steps=60", *short, cwd=workspace)
    sft = json.loads((workspace / "metrics/sft.json").read_text())
    assert sft["val_loss"] < sft["val_loss_before"], proc.stdout
    # every reply opens with the same six words: a model that learnt them shares them with every reference
    assert set(sft["rouge_l"]) == {*categories, "overall"} and sft["rouge_l"]["overall"] > 10, sft["rouge_l"]
    assert set(sft["exact_match"]) == {*categories, "overall"}, "scored against the reference replies"
    assert f"ROUGE-L {sft['rouge_l']['overall']}" in proc.stdout

    lab("reward", "-S", "reward.pairs=dataset", "-S", "reward.epochs=1", *short, cwd=workspace)
    reward = json.loads((workspace / "metrics/reward.json").read_text())
    assert reward["dataset_pairs"] == len(read_jsonl(workspace / "data/prepared/preference_train.jsonl",
                                                     "preference"))
    # the task world's on-policy pairs need an answer checker: real pairs say so and name the switch
    failed = lab("dpo", *short, cwd=workspace, check=False)
    assert failed.returncode == 2 and len(failed.stderr.strip().splitlines()) == 1, failed.stderr
    assert "-S dpo.pairs=dataset" in failed.stderr and not (workspace / "models/dpo").exists()
    proc = lab("dpo", "-S", "dpo.pairs=dataset", "-S", "dpo.max_steps=8", *short, cwd=workspace)
    dpo = json.loads((workspace / "metrics/dpo.json").read_text())
    assert set(dpo["rouge_l_before"]) == set(dpo["rouge_l"]) == {*categories, "overall"}
    assert dpo["rouge_l_before"] == sft["rouge_l"], "before: the SFT model's greedy replies, scored alike"
    assert "ROUGE-L" in proc.stdout
    lab("grpo", "-S", "grpo.max_steps=2", *short, cwd=workspace)
    grpo = json.loads((workspace / "metrics/grpo.json").read_text())
    assert set(grpo["exact_match"]) == {"all", "overall"}, "GRPO is scored on GSM8K's test split, not on Dolly's"

    proc = lab("evaluate", "-S", "evaluate.models=[sft,dpo,grpo]", "-S", "evaluate.llm_judge=null", *short,
               cwd=workspace)
    models = json.loads((workspace / "metrics/evaluate.json").read_text())["models"]
    assert set(models) == {"sft", "dpo", "grpo"}
    assert abs(models["sft"]["rouge_l"] - sft["rouge_l"]["overall"]) <= 0.01, "evaluate scores sft's replies alike"
    for m in models.values():
        assert {"rl_exact_match", "rl_format_rate", "rouge_l", "chrf", "reward", "win_rate"} <= set(m)
    # the same greedy replies to GSM8K's split, scored by grpo after training and by evaluate from its saved model
    assert models["grpo"]["rl_exact_match"] == grpo["exact_match"]["overall"]
    assert "rl EM %" in proc.stdout

    # the labs whose method needs the task world's families train on its chats, kept apart (world_sft_*), as on
    # the GPU tiers, whose default is a real source: a step or two each shows they run on a real source's project
    lab("continual", "-S", "continual.steps_per_task=2", *short, cwd=workspace)
    continual = json.loads((workspace / "metrics/continual.json").read_text())
    assert continual["order"] == ["add", "sort"] and set(continual["sequential"]["families"]) == {"add", "sort"}
    lab("mixing", "-S", "mixing.steps_per_task=2", *short, cwd=workspace)
    assert json.loads((workspace / "metrics/mixing.json").read_text())["families"] == ["add", "sort"]
    # label pairs the real prompts for people; real pairs have no answer to check, and the switch is named
    pairs = workspace / "data/labels/pairs.jsonl"
    failed = lab("label", *short, cwd=workspace, check=False)
    assert failed.returncode == 2 and len(failed.stderr.strip().splitlines()) == 1, failed.stderr
    assert "-S label.checker=false" in failed.stderr and not pairs.exists()
    lab("label", "-S", "label.checker=false", "-S", "label.pairs=4", *short, cwd=workspace)
    label = json.loads((workspace / "metrics/label.json").read_text())
    rows = [json.loads(line) for line in pairs.read_text().splitlines()]
    assert label["pairs"] == len(rows) == 4 and label["checker"] is None
    prompts = {r["prompt"] for r in read_jsonl(workspace / "data/prepared/preference_train.jsonl", "preference")}
    assert all(r["checker"] is None and r["prompt"] in prompts for r in rows), "HH-RLHF's prompts, unchecked"


# What a real source needs of the labs that default to the task world's checker or its answers: the GPU tiers set
# each of these beside `data.source: real`, and the whole-curriculum run below sets them on the CPU tier.
REAL_SOURCE_SWITCHES = {"reward.pairs": "dataset", "dpo.pairs": "dataset", "label.checker": False,
                        "rlaif.policy_sft.max_steps": 300}


def test_the_gpu_tiers_read_the_seeds_datasets_with_the_switches_a_real_source_needs():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert params["data"]["source"] == "task_world", "the CPU tier needs no network"
    for tier in ("t4", "a100"):
        assert params["data"]["tiers"][tier]["source"] == "real"
        for key, value in REAL_SOURCE_SWITCHES.items():
            section, *path = key.split(".")
            node = params[section]["tiers"][tier]
            for part in path:
                node = node[part]
            assert node == value, f"{section}.tiers.{tier}.{'.'.join(path)}"


@pytest.mark.real_curriculum
def test_every_stage_runs_on_a_real_source(tmp_path):
    """The GPU tiers' default on the CPU tier: the tiny curriculum's every stage, in `built`'s order, on real-format
    files (Alpaca, HH-RLHF, GSM8K, a text corpus) with the switches above. The labs whose method needs the task
    world's families or checker read its files kept apart (world_*). ~16 min on 2 cores: `python -m pytest -m
    real_curriculum` (not in `just test`)."""
    ws = make_workspace(tmp_path / "ws")
    rng = random.Random(2)
    alpaca = alpaca_file(tmp_path, rng)
    real_files(ws, tmp_path, rng, alpaca, "alpaca",
               {"corpus": (150, 0), "sft": (250, 40), "preference": (200, 40), "rl": (100, 20)})
    params = yaml.safe_load((ws / "params.yaml").read_text())
    for key, value in REAL_SOURCE_SWITCHES.items():
        *parents, leaf = key.split(".")
        node = params
        for part in parents:
            node = node[part]
        node[leaf] = value
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["just", "data"], cwd=ws, env={"HF_DATASETS_CACHE": str(tmp_path / "cache")})
    run(["dvc", "repro", SPINE[-1]], cwd=ws, timeout=900)
    run_in_parallel(ws, build_order(ws), done=set(SPINE))  # fails naming the first stage that stops
    assert json.loads((ws / "metrics/grpo.json").read_text())["exact_match"].keys() == {"all", "overall"}
    families = json.loads((ws / "metrics/mixing.json").read_text())["families"]
    assert families == ["add", "sort"], "mixing on the task world's chats, not Alpaca's"
