"""Training-dynamics labs on the tiny project that `built` made: cpt, sft_variants, cot, curriculum."""

import json
from pathlib import Path

import pytest

from labs.core.arith import target
from labs.curriculum import ordered
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


def test_templates_rephrase_each_prompt_once_and_reproducibly():
    rows = [{"prompt": f"What is {i} + 1?", "completion": "Answer: x"} for i in range(200)]
    templates = ["{prompt}", "Question: {prompt}", "Solve: {prompt}"]
    once, again = phrase(rows, templates, seed=1), phrase(rows, templates, seed=1)
    assert once == again and once != phrase(rows, templates, seed=2)
    assert phrase(rows, ["{prompt}"], seed=1) == rows, "one template is plain SFT: the rows as they are"
    used = {row["prompt"].removesuffix(f"What is {i} + 1?") for i, row in enumerate(once)}
    assert used == {"", "Question: ", "Solve: "}, "every template is drawn"


def test_cot_answers_with_the_working_and_answer_only_does_not(built):
    cot = load(built / "metrics/cot.json")
    rows = {row["target"]: row for row in cot["variants"]}
    steps, short = rows["steps"], rows["answer only"]
    assert cot["train_lengths"] == [2, 3]
    assert set(steps["exact_match"]) == {"2-digit", "3-digit", "4-digit", "overall"}, "every held-out length"
    assert steps["exact_match_beyond"] == steps["exact_match"]["4-digit"], "beyond the training lengths: 4 digits"
    assert steps["answer_tokens"] > 3 * short["answer_tokens"], "the working is most of the answer"
    assert steps["steps"] == short["steps"] == 150, "both targets train the same steps"


def test_cot_targets_keep_the_working_without_calculator_notes():
    gsm8k = {"prompt": "Tom has 3 apples and buys 4. How many?", "answer": "7", "solution": "3+4=<<3+4=7>>7"}
    assert target(gsm8k, steps=True)["completion"] == "3+4=7 Answer: 7"
    assert target(gsm8k, steps=False)["completion"] == "Answer: 7"


def test_curriculum_trains_each_ordering_on_the_same_rows_and_draws_a_curve(built):
    curriculum = load(built / "metrics/curriculum.json")
    rows = {row["ordering"]: row for row in curriculum["orderings"]}
    assert list(rows) == ["easy-to-hard", "random", "hard-to-easy"]
    for row in rows.values():
        assert [point["step"] for point in row["curve"]] == [10, 20, 30] and row["steps"] == 30
        reached = next((p["step"] for p in row["curve"] if p["exact_match"] >= curriculum["target_exact_match"]),
                       None)
        assert row["steps_to_target"] == reached
    assert (built / "plots/curriculum/easy-to-hard/metrics/exact_match.tsv").exists()


def test_orderings_hold_the_same_rows_sorted_by_length():
    rows = [{"prompt": str(i), "digits": 2 + i % 3} for i in range(30)]
    easy, mixed, hard = (ordered(rows, name, 12, seed=1) for name in ("easy-to-hard", "random", "hard-to-easy"))
    assert sorted(map(str, easy)) == sorted(map(str, mixed)) == sorted(map(str, hard)), "the same rows"
    assert [r["digits"] for r in easy] == sorted(r["digits"] for r in easy)
    assert [r["digits"] for r in hard] == sorted((r["digits"] for r in hard), reverse=True)
    assert [r["digits"] for r in mixed] != sorted(r["digits"] for r in mixed)


def test_mixing_trains_specialists_and_mixtures_at_equal_compute_per_family(built):
    mixing = load(built / "metrics/mixing.json")
    rows = {row["model"]: row for row in mixing["models"]}
    assert list(rows) == ["add only", "sort only", "uniform", "add_heavy"]
    assert rows["uniform"]["steps"] == rows["add_heavy"]["steps"] == 2 * rows["add only"]["steps"] == 120
    for family, other in (("add", "sort"), ("sort", "add")):
        own, others = rows[f"{family} only"]["val_loss"][family], rows[f"{other} only"]["val_loss"][family]
        assert own < others, f"{family}'s specialist fits {family} better than {other}'s does"
    assert mixing["transfer"]["uniform"]["add"] == round(
        rows["uniform"]["exact_match"]["add"] - rows["add only"]["exact_match"]["add"], 2)


def test_continual_forgets_without_replay_more_than_with_it(built):
    continual = load(built / "metrics/continual.json")
    assert continual["order"] == ["add", "sort"]
    plain, replayed = (continual[v]["families"]["add"] for v in ("sequential", "replay_variant"))
    assert plain["val_loss_rise"] > 0, "learning sort after add costs add"
    assert replayed["val_loss_rise"] < plain["val_loss_rise"], "replaying add while learning sort keeps more of it"
    assert set(continual["adapters"]) == {"add", "sort"}
