"""Training-dynamics labs on the tiny project that `built` made: cpt and sft_variants."""

import json
from pathlib import Path

import pytest

from labs.sft import phrase

pytestmark = pytest.mark.slow


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def test_cpt_adapts_to_the_new_domain_and_replay_keeps_more_of_the_old(built):
    cpt = load(built / "metrics/cpt.json")
    rows = {row["model"]: row for row in cpt["variants"]}
    assert list(rows) == ["base", "replay-0", "replay-0.3"], "the base, then each replay share of params.yaml"
    base, alone, replayed = rows.values()
    for row in (alone, replayed):
        assert row["cpt"]["steps"] == cpt["cpt_steps"], "every share trains the same number of steps"
        assert row["domain_perplexity"] < base["domain_perplexity"] / 2, "continued pretraining learns the domain"
    assert alone["corpus_perplexity"] > base["corpus_perplexity"], "the domain alone makes the base forget"
    assert replayed["corpus_perplexity"] < alone["corpus_perplexity"], "replay keeps more of the main world"
    assert alone["domain_perplexity"] < replayed["domain_perplexity"], "at equal steps, replay sees less domain"
    assert alone["domain_sft_val_loss"] < base["domain_sft_val_loss"], "the adapted base fine-tunes further"
    assert (built / "plots/cpt/replay.csv").read_text().splitlines()[0] == \
        "model,domain_perplexity,corpus_perplexity,domain_sft_val_loss,domain_exact_match"


def test_sft_variants_train_each_variant_and_kl_keeps_the_model_nearer_the_base(built):
    variants = load(built / "metrics/sft_variants.json")
    rows = {row["variant"]: row for row in variants["variants"]}
    assert list(rows) == ["plain", "templates", "kl"]
    assert all(row["steps"] == variants["steps"] for row in rows.values())
    assert rows["kl"]["kl_to_base"] < rows["plain"]["kl_to_base"], "the KL term keeps the answers near the base"
    assert rows["kl"]["corpus_perplexity"] < rows["plain"]["corpus_perplexity"], "and forgets less of the corpus"
    assert rows["plain"]["exact_match"] > 0 and rows["templates"]["unseen_exact_match"] >= 0


def test_templates_rephrase_each_prompt_once_and_reproducibly():
    rows = [{"prompt": f"What is {i} + 1?", "completion": "Answer: x"} for i in range(200)]
    templates = ["{prompt}", "Question: {prompt}", "Solve: {prompt}"]
    once, again = phrase(rows, templates, seed=1), phrase(rows, templates, seed=1)
    assert once == again and once != phrase(rows, templates, seed=2)
    assert phrase(rows, ["{prompt}"], seed=1) == rows, "one template is plain SFT: the rows as they are"
    used = {row["prompt"].removesuffix(f"What is {i} + 1?") for i, row in enumerate(once)}
    assert used == {"", "Question: ", "Solve: "}, "every template is drawn"
