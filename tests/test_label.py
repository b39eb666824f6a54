"""The labelling round: the `label` stage's pairs, the page served by `python -m labs.label` (driven over HTTP and
in headless Chromium), the judgements file's guarantees, and DPO trained on the judgements."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests
import yaml

from labs.core import judgements
from labs.core.data import DataError
from labs.core.evaluation import extract_answer, is_correct
from labs.tools.checker_labeller import checker_choice, label
from tests.conftest import free_port, lab_env, run

HOSTILE = '<script>document.title = "owned"</script><img src=x onerror="document.title=\'owned\'">'


def write_pairs(path: Path, n: int, models=("sft", "dpo")) -> Path:
    """`n` pairs the checker can judge: answer a is right on even pairs, b on odd ones; every b is hostile."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"pair": f"p{i:04d}", "prompt": f"What is {i} + 1?", "family": "add", "models": list(models),
             "answers": [f"Answer: {i + 1 if i % 2 == 0 else i}", f"{HOSTILE} Answer: {i + 1 if i % 2 else i + 2}"],
             "checker": "a" if i % 2 == 0 else "b"} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@contextmanager
def page(cwd: Path, pairs: Path | None = None, extra: list[str] = (), env: dict | None = None):
    """`python -m labs.label` on a free port until the block ends; yields its base URL."""
    port = free_port()
    args = [sys.executable, "-m", "labs.label", "--port", str(port), *extra]
    if pairs:
        args += ["--pairs", str(pairs)]
    log = (cwd / f".label-{port}.log").open("w")
    proc = subprocess.Popen(args, cwd=cwd, env=lab_env(env), stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            assert proc.poll() is None, Path(log.name).read_text()
            try:
                requests.get(f"{url}/api/summary", timeout=2)
                break
            except requests.ConnectionError:
                time.sleep(0.25)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


# --- the judgements file ------------------------------------------------------------------------------------

def row(pair: str, labeller: str, verdict: str) -> dict:
    return {"pair": pair, "labeller": labeller, "verdict": verdict, "left": "a", "prompt": "q", "chosen": "x",
            "rejected": "y", "chosen_model": "m", "rejected_model": "m", "time": "t"}


def test_judgements_file_names_the_bad_line_and_never_drops_it(tmp_path):
    path = tmp_path / "judgements.jsonl"
    for r in (row("p1", "ana", "a"), row("p2", "ana", "b")):
        judgements.append(path, r)
    good = path.read_bytes()
    path.write_bytes(good + b'{"pair": "p3", "labeller": "ana"\n')
    with pytest.raises(DataError, match=r"judgements.jsonl:3: not valid JSON"):
        judgements.read(path)
    path.write_bytes(good + json.dumps(row("p1", "bo", "undo")).encode() + b"\n")
    with pytest.raises(DataError, match=r":3: undo of pair 'p1', which 'bo' has no judgement of"):
        judgements.read(path)
    path.write_bytes(good + b'{"pair": "p3", "labe')  # a write cut short: appending would glue onto it
    with pytest.raises(DataError, match="cut short"):
        judgements.append(path, row("p3", "ana", "a"))
    assert path.read_bytes() == good + b'{"pair": "p3", "labe', "nothing was written"
    with pytest.raises(DataError, match="bad judgement"):
        judgements.append(path, row("p3", "ana", "maybe"))


def test_training_pairs_follow_the_majority_after_undos(tmp_path):
    path = tmp_path / "judgements.jsonl"
    for r in (row("p1", "ana", "a"), row("p1", "bo", "a"), row("p1", "cy", "b"),   # 2:1 for a
              row("p2", "ana", "a"), row("p2", "bo", "b"),                          # split: left out
              row("p3", "ana", "tie"), row("p4", "ana", "b"), row("p4", "ana", "undo"),
              row("p5", "ana", "both_bad")):
        judgements.append(path, r)
    assert [(p["prompt"], p["chosen"]) for p in judgements.training_pairs(path)] == [("q", "x")]
    assert set(judgements.standing(judgements.read(path))) == {
        ("ana", "p1"), ("bo", "p1"), ("cy", "p1"), ("ana", "p2"), ("bo", "p2"), ("ana", "p3"), ("ana", "p5")}
    empty = tmp_path / "empty.jsonl"
    empty.touch()
    with pytest.raises(DataError, match="no judgement prefers one answer"):
        judgements.training_pairs(empty)


# --- the page over HTTP ---------------------------------------------------------------------------------------

def test_two_labellers_at_once_lose_nothing(tmp_path):
    """500 judgements each from two labellers posting at the same time: 1,000 whole lines, one per judgement;
    the summary's agreement is what the two scripted labellers made it (the second flips every fifth pair)."""
    pairs = {p["pair"]: p for p in map(json.loads, write_pairs(tmp_path / "pairs.jsonl", 500).read_text().splitlines())}
    flips = {"left": "right", "right": "left"}
    flip_fifth = lambda pair, shown: (flips[checker_choice(pair, shown)]  # noqa: E731
                                      if int(pair["pair"][1:]) % 5 == 0 else checker_choice(pair, shown))
    with page(tmp_path, tmp_path / "pairs.jsonl") as url, ThreadPoolExecutor(2) as pool:
        judged = [pool.submit(label, url, list(pairs.values()), name, choose)
                  for name, choose in (("ana", checker_choice), ("bo", flip_fifth))]
        assert [j.result() for j in judged] == [500, 500]
        stats = requests.get(f"{url}/api/summary", timeout=30).json()
    lines = (tmp_path / "data/labels/judgements.jsonl").read_bytes().split(b"\n")
    assert lines[-1] == b"" and len(lines) == 1001
    rows = [json.loads(line) for line in lines[:-1]]
    assert sorted((r["labeller"], r["pair"]) for r in rows) == sorted(
        (name, pair) for name in ("ana", "bo") for pair in pairs)
    assert all(r["verdict"] == pairs[r["pair"]]["checker"] for r in rows if r["labeller"] == "ana")
    assert stats["judgements"] == 1000 and stats["labellers"] == {"ana": 500, "bo": 500}
    assert stats["agreement"]["agreement_pct"] == 80.0 and stats["agreement"]["pairs_judged_by_several"] == 500
    assert stats["checker"]["agreement_pct"] == 90.0, "ana always agrees with the checker, bo on 4 pairs in 5"
    # pairs are sft against dpo: dpo's answer is right on odd pairs, and ana picks the right one
    wins = {w["model"]: w for w in stats["win_rates"]}
    # ana: 250; bo flips 100 pairs, 50 each way: 250 again
    assert wins["dpo"]["wins"] == 500 and wins["dpo"]["decisive"] == 1000 and wins["dpo"]["win_rate"] == 50.0
    assert wins["dpo"]["ci95"][0] < wins["dpo"]["win_rate"] < wins["dpo"]["ci95"][1]
    assert 40 < stats["left_chosen_pct"] < 60, "the sides were drawn at random"


def test_hostile_requests_get_a_4xx_and_the_page_keeps_working(tmp_path):
    write_pairs(tmp_path / "pairs.jsonl", 4)
    with page(tmp_path, tmp_path / "pairs.jsonl") as url:
        shown = requests.get(f"{url}/api/next", params={"labeller": "ana"}, timeout=30).json()
        valid = {"labeller": "ana", "pair": shown["pair"], "shown_left": shown["shown_left"], "choice": "tie"}
        forged = dict(valid, shown_left="b" if shown["shown_left"] == "a" else "a")
        post = lambda body, **kw: requests.post(f"{url}/api/judge", timeout=60, **kw,  # noqa: E731
                                                **({"json": body} if body is not None else {}))
        json_type = {"Content-Type": "application/json"}
        assert post(forged).status_code == 400, "a side the page was not shown"
        assert post(None, data=b"{" * 10 * 2**20, headers=json_type).status_code == 413
        assert post(None, data=b'{"labeller": "ana", "pair": ', headers=json_type).status_code == 400
        assert post(None, data=json.dumps(valid), headers={"Content-Type": "text/plain"}).status_code == 415
        assert post(dict(valid, verdict="a")).status_code == 400, "no field beyond the page's"
        assert post(dict(valid, labeller="<b>x</b>")).status_code == 400
        assert post(dict(valid, pair="p9999")).status_code == 404
        assert requests.get(f"{url}/api/summary", headers={"Host": "attacker.example"}, timeout=30).status_code == 400
        assert (tmp_path / "data/labels/judgements.jsonl").read_text() == "", "nothing refused was written"
        assert post(valid).status_code == 200
        assert post(valid).status_code == 409, "the same pair twice"
        headers = requests.get(f"{url}/", timeout=30).headers
        assert "script-src 'self'" in headers["Content-Security-Policy"]
    assert len((tmp_path / "data/labels/judgements.jsonl").read_text().splitlines()) == 1
    with page(tmp_path, tmp_path / "pairs.jsonl") as url:  # a restart resumes after the last judgement
        again = requests.get(f"{url}/api/next", params={"labeller": "ana"}, timeout=30).json()
        assert (again["pair"], again["done"]) == ("p0001", 1)


def test_beyond_loopback_needs_a_token_and_one_page_per_file(tmp_path):
    write_pairs(tmp_path / "pairs.jsonl", 4)
    args = [sys.executable, "-m", "labs.label", "--pairs", "pairs.jsonl", "--host", "0.0.0.0"]
    proc = run(args, cwd=tmp_path, check=False, env={"LABEL_TOKEN": ""})
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "LABEL_TOKEN" in proc.stderr, proc.stderr
    with page(tmp_path, tmp_path / "pairs.jsonl", ["--host", "0.0.0.0"], env={"LABEL_TOKEN": "s3cret"}) as url:
        assert requests.get(f"{url}/api/summary", timeout=30).status_code == 401
        bearer = {"Authorization": "Bearer s3cret"}
        assert requests.get(f"{url}/api/summary", headers=bearer, timeout=30).json()["pairs"] == 4
        second = run([sys.executable, "-m", "labs.label", "--pairs", "pairs.jsonl", "--port", str(free_port())],
                     cwd=tmp_path, check=False)
        assert second.returncode == 1 and "another labelling page is serving" in second.stderr
    (tmp_path / "data/labels/judgements.jsonl").write_text('{"pair": "p0000"}\n')
    proc = run([sys.executable, "-m", "labs.label", "--pairs", "pairs.jsonl"], cwd=tmp_path, check=False)
    assert proc.returncode == 1 and 'judgements.jsonl:1: field "labeller" must be a string' in proc.stderr


# --- the page in a browser ------------------------------------------------------------------------------------

def chrome(tmp_path: Path):
    webdriver = pytest.importorskip("selenium.webdriver")
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (browser and driver):
        pytest.fail("needs Debian's chromium and chromium-driver (apt-get install -y chromium chromium-driver); "
                    ".ci/run installs them")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1200,900",
                 f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver))


def test_page_in_chromium_labels_undoes_and_resumes(tmp_path):
    """10 pairs judged with clicks and keys, one undone, the page reloaded: it resumes at the undone pair, and the
    file holds every judgement with the side that was shown. The hostile answer shows as text."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    write_pairs(tmp_path / "pairs.jsonl", 12)
    screenshot = Path(os.environ.get("LAB_SCREENSHOTS", tmp_path)) / "label-page.png"
    with page(tmp_path, tmp_path / "pairs.jsonl") as url:
        browser = chrome(tmp_path)
        try:
            browser.get(url + "/")
            browser.find_element(By.ID, "name").send_keys("ana", Keys.ENTER)
            count = lambda: browser.find_element(By.ID, "count").text  # noqa: E731
            wait = lambda text: WebDriverWait(browser, 30).until(lambda _: count() == text)  # noqa: E731
            wait("0 / 12")
            assert browser.find_element(By.ID, "prompt").text == "What is 0 + 1?"
            clicks = ["choose-left", "choose-right", "choose-tie", "choose-both-bad", "choose-left"]
            keys = ["a", Keys.ARROW_RIGHT, "t", "x", "b"]
            for i, action in enumerate(clicks + keys):
                if i < len(clicks):
                    browser.find_element(By.ID, action).click()
                else:
                    browser.find_element(By.TAG_NAME, "body").send_keys(action)
                wait(f"{i + 1} / 12")
            browser.find_element(By.TAG_NAME, "body").send_keys("u")
            wait("9 / 12")
            assert "undid p0009" in browser.find_element(By.ID, "status").text
            browser.refresh()
            wait("9 / 12")
            assert browser.find_element(By.ID, "prompt").text == "What is 9 + 1?", "resumed at the undone pair"
            hostile = [browser.find_element(By.ID, side).text for side in ("left", "right")]
            assert any(text.startswith(HOSTILE) for text in hostile), "the answer's markup shown as text"
            assert browser.title != "owned" and not browser.find_elements(By.CSS_SELECTOR, "pre img, pre script")
            browser.save_screenshot(str(screenshot))
            browser.get(url + "/summary")
            WebDriverWait(browser, 30).until(lambda b: b.find_element(By.ID, "overview").text)
            assert browser.find_element(By.ID, "overview").text.startswith("9 judgements in force of 12 pairs")
        finally:
            browser.quit()
    rows = judgements.read(tmp_path / "data/labels/judgements.jsonl")
    assert [r["verdict"] for r in rows][-1] == "undo" and len(rows) == 11
    standing = list(judgements.standing(rows).values())
    screen = ["left", "right", "tie", "both_bad", "left", "left", "right", "tie", "both_bad"]
    for r, choice in zip(standing, screen, strict=True):
        other = "b" if r["left"] == "a" else "a"
        assert r["verdict"] == {"left": r["left"], "right": other}.get(choice, choice), r
    assert screenshot.stat().st_size > 10_000


# --- the stage and DPO on people's judgements ------------------------------------------------------------------

def test_label_stage_pairs_differ_and_carry_the_checkers_verdict(built):
    pairs = [json.loads(line) for line in (built / "data/labels/pairs.jsonl").read_text().splitlines()]
    metrics = json.loads((built / "metrics/label.json").read_text())
    cfg = yaml.safe_load((built / "params.yaml").read_text())["label"]
    assert len(pairs) == metrics["pairs"] == cfg["pairs"]
    assert metrics["prompts_tried"] == len(pairs) + metrics["identical_answers"]
    gold = {r["prompt"]: extract_answer(r["chosen"]) for r in map(
        json.loads, (built / "data/prepared/preference_train.jsonl").read_text().splitlines())}
    for p in pairs:
        a, b = p["answers"]
        assert a != b and p["models"] == cfg["models"]
        right = is_correct(a, gold[p["prompt"]]), is_correct(b, gold[p["prompt"]])
        assert p["checker"] == {(1, 0): "a", (0, 1): "b", (1, 1): "tie", (0, 0): "both_bad"}[right]
    assert sum(metrics["checker"].values()) == len(pairs) and metrics["checker"]["a"] + metrics["checker"]["b"] > 0


def test_dpo_trains_on_the_judgements_of_a_scripted_labeller(built_copy):
    """The checker's choice posted through the page for every pair (labs/tools/checker_labeller.py), then
    `dvc repro dpo` with dpo.pairs=human: it trains on the decisive judgements alone, and raises the chosen
    answers over the rejected ones."""
    ws = built_copy
    pairs = {p["pair"]: p for p in map(json.loads, (ws / "data/labels/pairs.jsonl").read_text().splitlines())}
    with page(ws) as url:
        assert label(url, list(pairs.values()), "checker") == len(pairs)
    decisive = sum(p["checker"] in judgements.DECISIVE for p in pairs.values())
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["dpo"]["pairs"] = "human"
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    # -s: dpo alone; reward, which lists the same file, would retrain the same judge (its pairs are not human)
    proc = run(["dvc", "repro", "--single-item", "dpo"], cwd=ws)
    assert "Running stage 'dpo'" in proc.stdout
    dpo = json.loads((ws / "metrics/dpo.json").read_text())
    assert dpo["pairs"] == "human" and dpo["human_pairs"] == dpo["train_pairs"] == decisive
    assert dpo["fit_preference_accuracy"] > 60, "the judged answers gained on the rejected ones relative to SFT"
