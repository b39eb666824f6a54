"""rag — retrieval-augmented generation: the `embeddings` model indexes the task world's document store in FAISS,
the top-k documents go into the prompt, and the SFT model, fine-tuned to read them, answers.

    just lab rag
    dvc exp run -S 'rag.top_k=[1,2,3]' rag
    just ask "When was Tamvel founded?"      # one question against models/rag, with the documents it read
    just serve transformers models/rag        # the OpenAI API with retrieval on

The documents are labs/core/documents.py's made-up towns: every fact is drawn at random, so no model knows an
answer it has not read. The index holds every town's document (the reader's practice towns and the held-out
ones); every measurement asks about held-out towns, which neither the retriever nor the reader trained on.
  * retriever — `embeddings`' encoder_supervised model (its recall@1 is the embeddings table's best), copied into
                models/rag with the index, since an index is only valid with the model that made its vectors;
  * index     — faiss.IndexFlatIP over normalized vectors (exact cosine search; a few thousand documents need no
                approximate index);
  * reader    — the SFT model fine-tuned with TRL's SFTTrainer on practice towns' questions, each prompt holding
                1 to `passages` documents: the question's own and the retriever's nearest others, in random order.
Rows: the closed book (the question alone), the top 1/3/5 retrieved documents, and the gold document alone (the
ceiling: a perfect retriever). Each row is answered by the reader, the closed book and the gold document also by
the SFT model it started from; the table adds the retriever's recall at each k and the latency of retrieval and
of answering, one query at a time.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import time
from pathlib import Path

import faiss
import numpy as np
from pydantic import Field
from sentence_transformers import SentenceTransformer
from trl import SFTConfig, SFTTrainer

from labs.core.config import SEED, Section, Seed, Tier, TrainParams, view
from labs.core.data import DataError, chat_prompt
from labs.core.documents import questions, store, towns
from labs.core.evaluation import MeasureParams, answer_logprobs, generate, is_correct, percent
from labs.core.models import load_model, load_tokenizer, require, trainer_kwargs
from labs.core.run import atomic_path, checkpoint_dir, run_card, save_model, write_card
from labs.core.train import as_chat, fit
from labs.embeddings import EmbeddingsParams

SFT, EMBEDDINGS, OUT = Path("models/sft"), Path("models/embeddings"), Path("models/rag")
INDEX, DOCUMENTS, RETRIEVER, READER = "index.faiss", "documents.jsonl", "retriever", "reader"


class ReaderParams(TrainParams):
    """Fine-tuning the SFT model to answer from the documents in its prompt."""

    max_length: int = Field(512, gt=0)  # five documents of at most 92 tokens, the question twice and the template
    batch_size: int = Field(16, gt=0)
    epochs: float = Field(1, gt=0)
    lr: float = Field(3e-3, gt=0)


class RagParams(Section):
    """Retrieval from the document store into the prompt of an SFT model fine-tuned to read."""

    retriever: str = "encoder_supervised"
    """the embeddings model, models/embeddings/<name>, that embeds documents and questions"""
    train_towns: int = Field(2400, gt=0)
    """practice towns: the reader's training questions ask about them (the first are the retriever's)"""
    train_questions: int = Field(4, ge=1, le=4)
    """training questions per practice town, each on another of its four facts"""
    test_questions: int = Field(2, ge=1, le=4)
    """questions per held-out town, each on another of its four facts"""
    passages: int = Field(1, ge=1)  # 1: the reader learned its own document alone far sooner (docs/decisions.md)
    """most documents a training prompt holds: its own and up to this many less one of the retriever's nearest"""
    top_k: list[int] = Field([1, 3, 5], min_length=1)
    """documents retrieved into the prompt, one row each"""
    max_new_tokens: int = Field(16, gt=0)
    """tokens of each answer (the longest, a mayor's name, is under 10)"""
    latency_queries: int = Field(32, gt=0)
    """held-out questions answered one at a time for each row's latency"""
    reader: ReaderParams = ReaderParams()
    """the reader's fine-tuning schedule"""


Measurement = view(MeasureParams, "batch_size")
Split = view(EmbeddingsParams, "test_towns")  # the held-out towns are embeddings': the retriever never saw them


class Params(Section):
    """What rag reads from params.yaml."""

    seed: Seed = SEED
    tier: Tier = "cpu"
    rag: RagParams = RagParams()
    embeddings: Split = Split()
    evaluate: Measurement = Measurement()


def prompt(question: str, passages: list[str]) -> str:
    """The reader's user turn: the question, the documents numbered, the question again; with none, the question
    alone. Asked before the documents too, a causal model reads them knowing what it looks for (query-aware
    contextualization, Liu et al. 2023, "Lost in the Middle")."""
    if not passages:
        return question
    listed = "\n".join(f"[{i}] {text}" for i, text in enumerate(passages, start=1))
    return f"Question: {question}\nDocuments:\n{listed}\n\nQuestion: {question}"


class Retrieval:
    """A built models/rag: the retriever, its FAISS index and the documents the index's rows are, checked to agree;
    `ask` retrieves for a question and fits the documents into the reader's context."""

    def __init__(self, folder: Path = OUT):
        for name in (DOCUMENTS, INDEX):
            if not (folder / name).is_file():
                raise DataError(f"{folder / name}: missing (run `just lab rag` first)")
        self.documents = []
        for lineno, line in enumerate((folder / DOCUMENTS).read_text(encoding="utf-8").splitlines(), start=1):
            try:
                row = json.loads(line)
                self.documents.append((str(row["id"]), str(row["text"])))
            except (ValueError, KeyError, TypeError):
                raise DataError(f"{folder / DOCUMENTS}:{lineno}: expected {{\"id\", \"text\"}}") from None
        if not self.documents:
            raise DataError(f"{folder / DOCUMENTS}: the document store is empty")
        self.row_of = {name: row for row, (name, _) in enumerate(self.documents)}  # document id -> index row
        try:
            self.index = faiss.read_index(str(folder / INDEX))
        except RuntimeError as exc:
            reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unreadable"
            raise DataError(f"{folder / INDEX}: not a FAISS index ({reason})") from None
        if self.index.ntotal != len(self.documents):
            raise DataError(f"{folder / INDEX}: holds {self.index.ntotal} vectors, {folder / DOCUMENTS} "
                            f"{len(self.documents)} documents (rebuild both: `just lab rag`)")
        self.model = SentenceTransformer(str(require(folder / RETRIEVER, "config.json", "rag")), device="cpu",
                                         local_files_only=True)
        if self.model.get_embedding_dimension() != self.index.d:
            raise DataError(f"{folder / INDEX}: {self.index.d}-dimensional vectors, the retriever makes "
                            f"{self.model.get_embedding_dimension()} (rebuild both: `just lab rag`)")

    def search(self, texts: list[str], k: int) -> list[list[int]]:
        """The rows of the `k` documents nearest each text, nearest first."""
        if not texts:
            return []
        vectors = self.model.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
        _, rows = self.index.search(np.ascontiguousarray(vectors, dtype=np.float32), min(k, self.index.ntotal))
        return [[int(row) for row in found if row >= 0] for found in rows]

    def ask(self, question: str, k: int, tokenizer, context: int, max_new_tokens: int) -> tuple[str, list[str]]:
        """The reader's prompt for `question` with as many of its top `k` documents as fit in `context` tokens
        beside the answer, and those documents' ids; a question that does not fit alone is refused."""
        budget = context - max_new_tokens
        length = tokens(tokenizer, prompt(question, []))
        if length > budget:
            raise DataError(f"the question is {length} tokens; the reader's context holds {context}, "
                            f"{max_new_tokens} of them for the answer")
        kept = self.fitting(question, self.search([question], k)[0] if k else [], tokenizer, budget)
        return prompt(question, [self.documents[r][1] for r in kept]), [self.documents[r][0] for r in kept]

    def fitting(self, question: str, rows: list[int], tokenizer, budget: int) -> list[int]:
        """The first of `rows` (nearest first) whose documents fit in a prompt of `budget` tokens with `question`."""
        kept = []
        for row in rows:
            if tokens(tokenizer, prompt(question, [self.documents[r][1] for r in [*kept, row]])) > budget:
                break
            kept.append(row)
        return kept


def tokens(tokenizer, user_turn: str) -> int:
    """Tokens of `user_turn` as the reader sees it: in the chat template, up to the assistant's first token."""
    return len(tokenizer(chat_prompt(tokenizer, user_turn), add_special_tokens=False).input_ids)


def build_index(folder: Path, retriever: Path, documents: dict[str, str]) -> None:
    """models/rag's retrieval half: the retriever copied in, its vectors of every document in a flat
    inner-product index (normalized: cosine), and the documents in the index's row order."""
    shutil.copytree(retriever, folder / RETRIEVER)
    model = SentenceTransformer(str(folder / RETRIEVER), device="cpu", local_files_only=True)
    vectors = model.encode(list(documents.values()), batch_size=64, normalize_embeddings=True,
                           convert_to_numpy=True)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    faiss.write_index(index, str(folder / INDEX))
    with open(folder / DOCUMENTS, "w", encoding="utf-8") as handle:
        for name, text in documents.items():
            handle.write(json.dumps({"id": name, "text": text}, ensure_ascii=False) + "\n")


def reading_practice(retrieval: Retrieval, asked: list[dict], passages: int, seed: int, tokenizer,
                     budget: int) -> list[dict]:
    """Training chats: each question with its own town's document among 0 to `passages` - 1 of the retriever's
    nearest others (the confusable ones a real top-k holds), as many as fit in `budget` tokens, in random order;
    the completion is the answer."""
    rng = random.Random(f"{seed}:rag:practice")
    nearest = retrieval.search([q["question"] for q in asked], passages + 1)
    rows = []
    for question, found in zip(asked, nearest, strict=True):
        gold = retrieval.row_of[question["town"]]
        others = [row for row in found if row != gold][:rng.randint(1, passages) - 1]
        shown = retrieval.fitting(question["question"], [gold, *others], tokenizer, budget)
        rng.shuffle(shown)
        rows.append({"prompt": prompt(question["question"], [retrieval.documents[r][1] for r in shown]),
                     "completion": f"Answer: {question['answer']}"})
    return rows


def run(params: Params) -> dict:
    cfg = params.rag
    sft = require(SFT, "config.json", "sft")
    retriever = require(EMBEDDINGS / cfg.retriever, "config.json", "embeddings")
    practice, held_out = towns(params.seed, cfg.train_towns, params.embeddings.test_towns)
    documents = store(practice + held_out, params.seed)
    asked = questions(practice, params.seed, "rag-train", cfg.train_questions)
    queries = questions(held_out, params.seed, "rag-test", cfg.test_questions)
    tokenizer = load_tokenizer(sft)
    base = load_model(sft, cfg.reader.precision, cfg.reader.attn_implementation)
    context = base.config.max_position_embeddings

    with atomic_path(OUT) as out:
        out.mkdir()
        build_index(out, retriever, documents)
        retrieval = Retrieval(out)
        chats = reading_practice(retrieval, asked, cfg.passages, params.seed, tokenizer,
                                 min(cfg.reader.max_length, context) - cfg.max_new_tokens)
        held = max(1, len(chats) // 20)  # a twentieth of the practice questions for the validation loss
        checkpoints = checkpoint_dir("rag", {"seed": params.seed, "tier": params.tier, "rag": cfg.model_dump()},
                                     [sft, retriever])
        args = SFTConfig(**trainer_kwargs(params, cfg.reader, checkpoints), max_length=cfg.reader.max_length,
                         completion_only_loss=True, packing=False)
        model = load_model(sft, cfg.reader.precision, cfg.reader.attn_implementation, training=True)
        trainer = SFTTrainer(model=model, args=args, train_dataset=as_chat(chats[held:]),
                             eval_dataset=as_chat(chats[:held]), processing_class=tokenizer)
        card = run_card("rag", params, cfg)
        metrics = fit(trainer, card, "rag")
        reader = trainer.model.eval()
        save_model(reader, tokenizer, out / READER, card)
        write_card(out, card | {"index": "faiss.IndexFlatIP, normalized vectors", "documents": len(documents)})

        ranked = retrieval.search([q["question"] for q in queries], max(cfg.top_k))
        gold = [retrieval.row_of[q["town"]] for q in queries]
        conditions = {"closed book": [[] for _ in queries],
                      **{f"top {k}": [found[:k] for found in ranked] for k in cfg.top_k},
                      "gold document": [[row] for row in gold]}
        rows, budget = {}, context - cfg.max_new_tokens
        for name, candidates in conditions.items():  # as many of each row's documents as fit, as `ask` does
            shown = [retrieval.fitting(q["question"], found, tokenizer, budget)
                     for q, found in zip(queries, candidates, strict=True)]
            prompts = [prompt(q["question"], [retrieval.documents[r][1] for r in rows_shown])
                       for q, rows_shown in zip(queries, shown, strict=True)]
            lengths = [tokens(tokenizer, p) for p in prompts]
            row = {"prompt_tokens": round(statistics.mean(lengths), 1),
                   "documents_shown": round(statistics.mean(len(rows_shown) for rows_shown in shown), 2),
                   "gold_shown": percent([g in s for g, s in zip(gold, shown, strict=True)])}
            golds = [f"Answer: {q['answer']}" for q in queries]
            # the SFT model never read a document: the closed book and the gold one say all it can, at half the cost
            measured = [("reader", reader), ("sft", base)] if name in ("closed book", "gold document") else \
                [("reader", reader)]
            row |= {"exact_match_sft": None, "answer_nats_sft": None}
            for label, model_ in measured:
                completions, _ = generate(model_, tokenizer, prompts, cfg.max_new_tokens, params.evaluate.batch_size)
                row[f"exact_match_{label}"] = percent([is_correct(c, q["answer"])
                                                       for c, q in zip(completions, queries, strict=True)])
                # what the right answer costs the model, in nats: it falls as reading works, before EM moves
                logprobs = answer_logprobs(model_, tokenizer, prompts, golds, params.evaluate.batch_size)
                row[f"answer_nats_{label}"] = round(-statistics.mean(logprobs), 3)
            timed = queries[:cfg.latency_queries]
            k = int(name.split()[-1]) if name.startswith("top ") else 0
            row["retrieve_ms"] = median_ms(lambda q, k=k: retrieval.search([q["question"]], k), timed) if k else None
            row["answer_ms"] = median_ms(lambda p: generate(reader, tokenizer, [p], cfg.max_new_tokens, 1),
                                         prompts[:len(timed)])
            rows[name] = row
            sft_em = "" if row["exact_match_sft"] is None else f" (sft {row['exact_match_sft']})"
            print(f"rag {name}: exact-match {row['exact_match_reader']}{sft_em}, gold document shown "
                  f"{row['gold_shown']}%")
    return metrics | {"rows": rows, "queries": len(queries), "documents": len(documents),
                      "practice_questions": len(chats) - held, "context_tokens": context}


def median_ms(step, items: list) -> float:
    """Median milliseconds of `step(item)` over `items`, one at a time."""
    times = []
    for item in items:
        start = time.perf_counter()
        step(item)
        times.append(time.perf_counter() - start)
    return round(1000 * statistics.median(times), 2)


def table(metrics: dict) -> tuple[list[str], list[list]]:
    """metrics/rag.json as a table: one row per prompt, the reader's and the SFT model's exact-match on it."""
    header = ["prompt", "documents in it", "holds the gold document %", "exact-match reader %",
              "exact-match sft (not trained to read) %", "answer nats reader", "answer nats sft", "prompt tokens",
              "retrieve ms", "answer ms"]
    def cell(value):
        return "–" if value is None else value

    rows = [[name, row["documents_shown"], row["gold_shown"], row["exact_match_reader"], cell(row["exact_match_sft"]),
             row["answer_nats_reader"], cell(row["answer_nats_sft"]), row["prompt_tokens"], cell(row["retrieve_ms"]),
             row["answer_ms"]] for name, row in metrics["rows"].items()]
    order = ["closed book", *sorted((n for n in metrics["rows"] if n.startswith("top ")), key=lambda n: int(n[4:])),
             "gold document"]
    return header, sorted(rows, key=lambda row: order.index(row[0]))  # the metrics file sorts its keys


def main(argv: list[str] | None = None) -> int:
    """`python -m labs.rag QUESTION`: the reader's answer from the top-k documents of a built models/rag."""
    parser = argparse.ArgumentParser(prog="python -m labs.rag", description=main.__doc__)
    parser.add_argument("question")
    parser.add_argument("-k", type=int, default=3, help="documents retrieved into the prompt (default: %(default)s)")
    parser.add_argument("--model", default=str(OUT), help="a built rag folder (default: %(default)s)")
    parser.add_argument("--max-new-tokens", type=int, default=16, help="tokens of the answer (default: %(default)s)")
    args = parser.parse_args(argv)
    import transformers

    transformers.utils.logging.disable_progress_bar()  # stderr is for the one-line error, if any
    try:
        if not args.question.strip():
            raise DataError("the question is empty")
        folder = Path(args.model)
        retrieval = Retrieval(folder)
        reader = require(folder / READER, "config.json", "rag")
        tokenizer, model = load_tokenizer(reader), load_model(reader)
        text, found = retrieval.ask(args.question, args.k, tokenizer, model.config.max_position_embeddings,
                                    args.max_new_tokens)
        completion = generate(model, tokenizer, [text], args.max_new_tokens, 1)[0][0]
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(completion)
    print(f"documents read: {', '.join(found) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
