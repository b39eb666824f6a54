"""`just report` on the tiny curriculum: every number on the page is the metrics file's, and the page renders
with its charts in headless Chromium (a real screenshot, looked at pixel by pixel)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from labs.core.evaluation import peft_comparison
from tests.conftest import run

# the colours the charts draw with: the bar charts' blue and matplotlib's first line colour
BAR, LINE = (0x4C, 0x72, 0xB0), (0x1F, 0x77, 0xB4)


def table_rows_list(page: str, title_start: str) -> list[list[str]]:
    table = page.split(f"<h2>{title_start}", 1)[1].split("</table>", 1)[0]
    rows = re.findall(r"<tr><td>(.*?)</td>(.*?)</tr>", table)
    return [[name, *re.findall(r"<td>(.*?)</td>", rest)] for name, rest in rows]


def table_rows(page: str, title: str) -> dict[str, list[str]]:
    return {row[0]: row[1:] for row in table_rows_list(page, f"{title}</h2>")}


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("needs Debian's chromium (apt-get install -y chromium); .ci/run installs it")
    return path


def pixels_of(image: np.ndarray, rgb: tuple[int, int, int]) -> int:
    return int(np.all(np.abs(image[..., :3] * 255 - np.array(rgb)) < 3, axis=-1).sum())


@pytest.fixture(scope="module")
def report(built, tmp_path_factory) -> Path:
    ws = Path(shutil.copytree(built, tmp_path_factory.mktemp("report") / "ws", symlinks=True))
    run(["just", "report"], cwd=ws)
    return ws / "report"


def test_report_numbers_are_the_metrics(report, built):
    page = (report / "index.html").read_text()
    evaluate = json.loads((built / "metrics" / "evaluate.json").read_text())["models"]
    rows = table_rows(page, "Every model on the held-out tasks (`evaluate`)")
    assert set(rows) == set(evaluate)
    for name, m in evaluate.items():
        cells = rows[name]
        assert cells[:2] == [str(m["parameters"]), str(m["exact_match"]["overall"])], (name, cells)
        assert str(m["answer_perplexity"]) in cells and str(m["reward"]) in cells
    quantize = json.loads((built / "metrics" / "quantize.json").read_text())["rows"]
    rows = table_rows(page, "Compression: memory, quality and speed (`quantize`)")
    for r in quantize:
        assert rows[r["name"]][:2] == [str(r["memory_mb"]), str(r["memory_ratio"])], r["name"]
        assert rows[r["name"]][3] == str(r["exact_match"]["overall"])
    peft = peft_comparison(built / "metrics")
    rows = table_rows(page, "Parameter-efficient fine-tuning (`peft_methods`)")
    assert [rows[r["method"]][2] for r in peft] == [str(r["exact_match"]) for r in peft]
    # the Markdown summary carries the same tables
    summary = (report / "summary.md").read_text()
    assert f"| sft | {evaluate['sft']['parameters']} | {evaluate['sft']['exact_match']['overall']} |" in summary
    # self-contained: every chart is embedded, nothing is fetched
    charts = re.findall(r'<img alt="(\w+)" src="data:image/png;base64,', page)
    assert set(charts) >= {"loss_curves", "reward_curves", "exact_match", "compression", "peft", "decoding",
                           "serving", "cpt", "curriculum", "objectives"}
    objectives = json.loads((built / "metrics" / "objectives.json").read_text())["accuracy"]
    rows = table_rows(page, "Pretraining objectives at one token budget, one probe (`objectives`)")
    assert [rows[name][-1] for name in objectives] == [f"{a['1.0']['mean']:.1f} ± {a['1.0']['sd']:.1f}"
                                                       for a in objectives.values()]
    embeddings = json.loads((built / "metrics" / "embeddings.json").read_text())["rows"]
    rows = table_rows(page, "Contrastive embeddings: retrieval recall and MRR (`embeddings`)")
    assert {name: rows[name][3] for name in embeddings} == {  # an untrained row has no spread
        name: f"{row['recall@1']['mean']:.1f}" + (f" ± {row['recall@1']['sd']:.1f}" if row["train_s"] else "")
        for name, row in embeddings.items()}
    cpt = json.loads((built / "metrics" / "cpt.json").read_text())["variants"]
    rows = table_rows(page, "Continued pretraining on a new domain, with replay (`cpt`)")
    assert [rows[r["model"]][0] for r in cpt] == [str(r["domain_perplexity"]) for r in cpt]
    cot = json.loads((built / "metrics" / "cot.json").read_text())["variants"]
    rows = table_rows(page, "Chain-of-thought supervision (`cot`)")
    assert [rows[r["target"]][2] for r in cot] == [str(r["answer_tokens"]) for r in cot]
    serve = json.loads((built / "metrics" / "serve.json").read_text())["engines"]
    assert [r[0] for r in table_rows_list(page, "Serving engines")] == [
        row["engine"] for row in serve for _ in row["levels"]]
    assert "http://" not in page and "https://" not in page


def test_evaluation_table_has_every_column_for_every_model(built):
    models = json.loads((built / "metrics" / "evaluate.json").read_text())["models"]
    for name, m in models.items():
        for key in ("exact_match", "answer_perplexity", "corpus_perplexity", "rouge_l", "bleu", "chrf", "similarity",
                    "reward", "safety"):
            assert m.get(key) is not None, f"{name}: {key}"
        assert set(m["win_rate"]) == set(models) - {name}
    sft, base = models["sft"], models["pretrain"]
    # the safety probe: sft learned the boundary (its refusals are the task world's, which the base never read),
    # and refuses harmful requests far more often than their benign look-alikes
    assert base["safety"]["refusal"] == base["safety"]["over_refusal"] == 0, base["safety"]
    assert sft["safety"]["refusal"] >= sft["safety"]["over_refusal"] + 50, sft["safety"]  # 87.5 and 2.5 here
    # SFT's answers are the gold ones: every similarity measure and the judge prefer them to the base's
    for key in ("rouge_l", "bleu", "chrf", "similarity"):
        assert sft[key] > base[key] + 20, (key, sft[key], base[key])
    assert sft["win_rate"]["pretrain"] > 80 and abs(sft["win_rate"]["pretrain"] + base["win_rate"]["sft"] - 100) < 0.02
    # the LLM judge (rlaif's): asked in both orders about every two models' differing answers
    judge = json.loads((built / "metrics" / "evaluate.json").read_text())["llm_judge"]
    assert judge["pairs"] > 0 and judge["checkable"] > 0, judge
    for name, m in models.items():
        assert set(m["judge_win_rate"]) == set(models) - {name}
        for other, rate in m["judge_win_rate"].items():
            assert abs(rate + models[other]["judge_win_rate"][name] - 100) < 0.02, (name, other)


def test_report_renders_with_its_charts_in_headless_chromium(report, tmp_path):
    shot = tmp_path / "report.png"
    subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", "--hide-scrollbars", "--window-size=1280,2400",
                    f"--screenshot={shot}", (report / "index.html").as_uri()],
                   check=True, capture_output=True, timeout=120)
    image = matplotlib.image.imread(shot)
    assert image.shape[:2] == (2400, 1280)
    # the charts are drawn: their colours cover real areas of the page, not a broken-image icon
    bars, lines = pixels_of(image, BAR), pixels_of(image, LINE)
    assert bars > 5000 and lines > 300, (bars, lines)
    shutil.copy(shot, report / "screenshot.png")  # kept beside the report for a human to look at
