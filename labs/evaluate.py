"""evaluate — one table comparing every model of the curriculum on held-out data.

    just lab evaluate    # dvc repro evaluate

For each model in `evaluate.models` (a directory under models/):
  * exact-match per task family on the held-out SFT prompts (greedy, chat-formatted, answer after
    "Answer:" must equal the gold answer),
  * EOS rate: the share of those completions that ended their turn before `max_new_tokens`,
  * perplexity of the held-out answers given their prompts (chat-formatted, answer tokens only),
  * perplexity of held-out corpus text (plain language modelling; shows what fine-tuning costs there),
  * with `evaluate.reward_model` set, the mean score the reward model gives its held-out answers: what
    DPO and PPO optimise, beside the exact-match that says whether the answers are right.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from labs.core.config import Params
from labs.core.data import read_jsonl
from labs.core.evaluation import exact_match, generate, percent, perplexity, results_table, reward_scores
from labs.core.models import count_parameters, load_model, load_reward_model, load_tokenizer, require

PREPARED, MODELS = Path("data/prepared"), Path("models")


def evaluate_model(path: Path, params: Params, test: list[dict], corpus: list[str], judge=None) -> dict:
    cfg = params.evaluate
    tokenizer = load_tokenizer(path)
    model = load_model(path, cfg.precision)
    prompts = [r["prompt"] for r in test]
    completions, ended = generate(model, tokenizer, prompts, cfg.max_new_tokens, cfg.batch_size)
    scores = {} if judge is None else {
        "reward": round(float(np.mean(reward_scores(judge, tokenizer, prompts, completions))), 4)}
    return scores | {
        "parameters": count_parameters(model),
        "exact_match": exact_match(test, completions),
        "eos_rate": percent(ended),
        "answer_perplexity": perplexity(model, tokenizer, [r["completion"] for r in test],
                                        prompts=[r["prompt"] for r in test]),
        "corpus_perplexity": perplexity(model, tokenizer, corpus),
        "sample": {"prompt": test[0]["prompt"], "completion": completions[0]},
    }


def run(params: Params) -> dict:
    test = read_jsonl(PREPARED / "sft_test.jsonl", "sft")
    corpus = [r["text"] for r in read_jsonl(PREPARED / "corpus_val.jsonl", "text")]
    paths = {name: require(MODELS / name, "config.json", name) for name in params.evaluate.models}
    judge = None
    if params.evaluate.reward_model:
        judge = load_reward_model(require(MODELS / params.evaluate.reward_model, "config.json",
                                          params.evaluate.reward_model), params.evaluate.precision)
    results = {name: evaluate_model(path, params, test, corpus, judge) for name, path in paths.items()}
    print(results_table(results))
    return {"models": results}
