"""embeddings: the document store it searches, its errors, and the lab on the tiny project that `built` made."""

import json

import pytest
from sentence_transformers import SentenceTransformer

from labs.core.documents import QUESTIONS, questions, store, towns
from labs.embeddings import ROWS, table
from tests.conftest import lab


def test_the_store_holds_one_document_per_town_and_every_answer_is_in_its_town_s_document_only():
    train, held_out = towns(7, 300, 100)
    assert (train, held_out) == towns(7, 300, 100), "a pure function of the seed"
    names = [town.name for town in train + held_out]
    assert len(set(names)) == 400
    documents = store(train + held_out, 7)
    asked = questions(held_out, 7, "test", per_town=4)
    assert len(asked) == 400 and {q["attribute"] for q in asked} == set(QUESTIONS)
    for q in asked:
        assert q["town"] in q["question"] and q["answer"] in documents[q["town"]]
    founded = [q for q in asked if q["attribute"] == "founded"]
    unique = [q for q in founded if sum(q["answer"] in text for text in documents.values()) == 1]
    assert len(unique) > 0.5 * len(founded), "most years are in one document only: the store is needed to answer"
    phrasings = {documents[name].split(name)[0] for name in names}
    assert len(phrasings) > 2, "documents come in several phrasings"


def test_a_missing_body_is_one_line_and_writes_nothing(workspace):
    proc = lab("embeddings", cwd=workspace, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == \
        "error: models/objectives/clm: missing config.json (run `just lab objectives` first)"
    assert not (workspace / "models/embeddings").exists() and not (workspace / "metrics/embeddings.json").exists()


@pytest.mark.slow
def test_contrastive_training_beats_mean_pooled_states_on_held_out_retrieval(built):
    metrics = json.loads((built / "metrics/embeddings.json").read_text())
    rows = metrics["rows"]
    assert sorted(rows) == sorted(ROWS)
    recall = {name: row["recall@1"]["mean"] for name, row in rows.items()}
    assert recall["encoder_supervised"] > recall["causal_mean"] + 10, recall
    assert recall["encoder_supervised"] > recall["encoder_mean"], recall
    for name, row in rows.items():
        assert row["recall@1"]["mean"] <= row["recall@10"]["mean"], name
        assert len(row["recall@1"]["runs"]) == len(metrics["seeds"])
    model = SentenceTransformer(str(built / "models/embeddings/encoder_supervised"), device="cpu")
    tamvel, rulo = "Tamvel lies on the river Oskadu. It was founded in 1432.", \
        "Rulo lies on the river Benmir. It was founded in 1711."
    when, who, *documents = model.encode(["When was Tamvel founded?", "Who is the mayor of Rulo?", tamvel, rulo],
                                         normalize_embeddings=True)
    assert when.shape == (rows["encoder_supervised"]["dimension"],)
    assert when @ documents[0] > when @ documents[1] and who @ documents[1] > who @ documents[0], \
        "the saved model finds the town each question names"
    head, table_rows = table(metrics)
    assert [row[0] for row in table_rows] == ROWS and len(head) == len(table_rows[0])
