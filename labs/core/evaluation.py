"""Measurements shared by the labs: exact-match of generated answers, perplexity and log-probabilities from
the model's loss, reward-model scores, and the KL divergence of a tuned policy from its reference.

The task world's answers are checkable: a completion is right when the text after its last "Answer:"
equals the gold answer (whitespace-normalised). Real instruction data (Alpaca's, Dolly's) has only a reference
reply: a completion matches when it is that reply, and ROUGE-L says how close it came. `evaluate.load(...)`
cannot load metrics offline, so perplexity comes from the model's own loss.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from pydantic import Field

from labs.core.config import Precision, Section
from labs.core.data import DataError, chat_prompt
from labs.core.run import read_metrics


class MeasureParams(Section):
    """The measurement settings every lab's held-out numbers share: the `evaluate` section's first keys, which
    other labs read through `view(MeasureParams, ...)`."""

    max_new_tokens: int = Field(48, gt=0)  # the longest gold answer (add, with worked steps) fits with room
    """tokens each held-out answer may have"""
    batch_size: int = Field(64, gt=0)  # prompts generated together
    """prompts generated together"""
    precision: Precision = "fp32"
    """weights' dtype when a lab loads a model to measure it"""
    speed_prompts: int = Field(64, gt=0)
    """held-out prompts each tokens/s measurement decodes (batch 1: the first 8)"""
    speed_rounds: int = Field(3, gt=0)  # interleaved rounds; the best of each model's rounds counts
    """interleaved rounds of each tokens/s measurement; each model's best round counts"""


def extract_answer(completion: str) -> str | None:
    marker = completion.rfind("Answer:")
    if marker < 0:
        return None
    return " ".join(completion[marker + len("Answer:"):].split())


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int,
             temperature: float | None = None, seed: int = 0) -> tuple[list[str], list[bool]]:
    """Completions of chat-formatted `prompts` (greedy, or sampled at `temperature`), and whether each ended
    its turn with EOS before `max_new_tokens` (RL labs sample from the SFT model and need it to stop).
    Sampling starts from `seed`: two models compared on the same prompts draw the same random numbers."""
    if temperature:
        torch.manual_seed(seed)
    completions, ended = [], []
    for start in range(0, len(prompts), batch_size):
        batch, new_tokens = _complete(model, tokenizer, prompts[start:start + batch_size], max_new_tokens,
                                      temperature)
        completions += tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        ended += (new_tokens == tokenizer.eos_token_id).any(dim=1).tolist()
    return completions, ended


def _complete(model, tokenizer, prompts: list[str], max_new_tokens: int, temperature: float | None):
    """One left-padded batch of chat prompts and the tokens the model appended to it."""
    tokenizer.padding_side = "left"  # decoder-only generation continues from the right edge
    model.eval()
    texts = [chat_prompt(tokenizer, p) for p in prompts]
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    # Sampling is from the model's own distribution: no top-k / top-p truncation (generation_config
    # defaults would otherwise apply), so KL estimates below are unbiased.
    sampling = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0} if temperature else {
        "do_sample": False}
    output = model.generate(**batch, max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id, **sampling)
    return batch, output[:, batch["input_ids"].shape[1]:]


def _token_logprobs(model, ids: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
    """log p(token_t | tokens_<t) for every position t >= 1 (shape: batch x length-1)."""
    positions = (attention.cumsum(-1) - 1).clamp(min=0)  # left padding: positions count real tokens only
    logits = model(input_ids=ids, attention_mask=attention, position_ids=positions).logits.float()
    return torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)


@torch.no_grad()
def kl_to_reference(policy, reference, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int,
                    seed: int) -> float:
    """KL(policy || reference) per completion, in nats: a Monte-Carlo estimate over completions sampled
    from the policy at temperature 1, summing log pi(y_t) - log pi_ref(y_t) over each completion's tokens
    (up to and including its EOS). This is the sequence-level KL that RLHF's penalty bounds."""
    torch.manual_seed(seed)  # the same samples whenever the same policy is measured
    reference.eval()
    total = []
    for start in range(0, len(prompts), batch_size):
        batch, new = _complete(policy, tokenizer, prompts[start:start + batch_size], max_new_tokens, 1.0)
        ids = torch.cat([batch["input_ids"], new], dim=1)
        attention = torch.cat([batch["attention_mask"], torch.ones_like(new)], dim=1)
        is_eos = (new == tokenizer.eos_token_id).long()
        in_completion = (is_eos.cumsum(1) - is_eos) == 0  # tokens up to and including the first EOS
        width = new.shape[1]
        log_ratio = (_token_logprobs(policy, ids, attention)[:, -width:]
                     - _token_logprobs(reference, ids.to(reference.device), attention.to(reference.device))[:, -width:])
        total += (log_ratio * in_completion).sum(1).tolist()
    return round(float(np.mean(total)), 4)


def chat_batch(tokenizer, prompts: list[str], answers: list[str], max_length: int = 512):
    """Right-padded chats (user: prompt, assistant: answer + EOS) with labels on the answer tokens only."""
    encoded, masks = [], []
    for prompt, answer in zip(prompts, answers, strict=True):
        chat = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
        out = tokenizer.apply_chat_template(chat, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        encoded.append(out["input_ids"][:max_length])
        masks.append(out["assistant_masks"][:max_length])
    return _pad_right(tokenizer, encoded, masks)


def _pad_right(tokenizer, encoded: list[list[int]], masks: list[list[int]]):
    width = max(map(len, encoded))
    ids = torch.full((len(encoded), width), tokenizer.pad_token_id)
    attention = torch.zeros((len(encoded), width), dtype=torch.long)
    labels = torch.full((len(encoded), width), -100)
    for i, (row, mask) in enumerate(zip(encoded, masks, strict=True)):
        ids[i, :len(row)] = torch.tensor(row)
        attention[i, :len(row)] = 1
        labels[i, :len(row)] = torch.where(torch.tensor(mask, dtype=torch.bool), torch.tensor(row), -100)
    return ids, attention, labels


@torch.no_grad()
def answer_logprobs(model, tokenizer, prompts: list[str], answers: list[str], batch_size: int = 64) -> list[float]:
    """log p(answer + EOS | chat prompt) for each pair, summed over the answer's tokens."""
    model.eval()
    out = []
    for start in range(0, len(prompts), batch_size):
        ids, attention, labels = chat_batch(tokenizer, prompts[start:start + batch_size],
                                            answers[start:start + batch_size])
        ids, attention, labels = ids.to(model.device), attention.to(model.device), labels.to(model.device)
        logprobs = _token_logprobs(model, ids, attention)
        out += (logprobs * (labels[:, 1:] != -100)).sum(1).tolist()
    return out


@torch.no_grad()
def reward_scores(reward_model, tokenizer, prompts: list[str], completions: list[str], batch_size: int = 64
                  ) -> list[float]:
    """The reward model's scalar for each (prompt, completion), chat-formatted as it was trained."""
    reward_model.eval()
    scores = []
    for start in range(0, len(prompts), batch_size):
        ids, attention, _ = chat_batch(tokenizer, prompts[start:start + batch_size],
                                       completions[start:start + batch_size])
        device = reward_model.device
        logits = reward_model(input_ids=ids.to(device), attention_mask=attention.to(device)).logits
        scores += logits[:, 0].float().tolist()
    return scores


def correlation(xs: list[float], ys: list[float]) -> float | None:
    """Pearson correlation; None when either side is constant (it is undefined there)."""
    xs, ys = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
    if xs.std() == 0 or ys.std() == 0:
        return None
    return round(float(np.corrcoef(xs, ys)[0, 1]), 4)


def is_correct(completion: str, answer: str) -> bool:
    return extract_answer(completion) == " ".join(answer.split())


def repetition(completions: list[str]) -> float:
    """Percent of word 3-grams that repeat an earlier 3-gram of the same completion: a reward-hacking sign
    (a policy that found the reward model likes some phrase says it again and again)."""
    repeated = total = 0
    for text in completions:
        words = text.split()
        grams = [tuple(words[i:i + 3]) for i in range(len(words) - 2)]
        repeated += len(grams) - len(set(grams))
        total += len(grams)
    return round(100 * repeated / max(total, 1), 2)


def mean_words(completions: list[str]) -> float:
    return round(float(np.mean([len(c.split()) for c in completions])), 2)


def on_policy_pairs(model, tokenizer, rows: list[dict], samples_per_prompt: int, temperature: float,
                    max_new_tokens: int, batch_size: int, seed: int, lab: str) -> list[dict]:
    """Preference pairs from a model's own mistakes: for each preference row's prompt, sample answers; each
    distinct wrong one (checked against the chosen answer's "Answer: X") becomes the rejected side of a pair
    with the chosen answer. This is how RLHF collects comparisons (on the policy's samples), with the task
    world's answer checker as the labeller; the file's curated slips are often ones the model would not make."""

    for row in rows:  # before sampling: a file without answers to check fails at once, not after the sampling
        if extract_answer(row["chosen"]) is None:
            raise DataError(f"on-policy pairs need checkable answers: chosen {row['chosen'][:60]!r} has no 'Answer:' "
                            f"(real preference data has none: train on its own pairs, -S {lab}.pairs=dataset)")
    repeated = [r for r in rows for _ in range(samples_per_prompt)]
    samples, _ = generate(model, tokenizer, [r["prompt"] for r in repeated], max_new_tokens, batch_size,
                          temperature=temperature, seed=seed)
    pairs, seen = [], set()
    for row, sample in zip(repeated, samples, strict=True):
        gold = extract_answer(row["chosen"])
        if not is_correct(sample, gold) and (row["prompt"], sample) not in seen:
            seen.add((row["prompt"], sample))
            pairs.append(row | {"rejected": sample})
    if not pairs:
        raise DataError("on-policy pairs: the model answered every sampled prompt right; nothing to prefer")
    return pairs


def ranks_own_samples(prompts: list[str], scores: list[float], correct: list[bool]) -> dict:
    """What PPO needs from its judge: among samples of the same prompt, does a right answer outscore a wrong
    one? Percent of such (right, wrong) pairs ranked right first, and how many there were."""
    by_prompt = defaultdict(lambda: ([], []))
    for prompt, score, ok in zip(prompts, scores, correct, strict=True):
        by_prompt[prompt][0 if ok else 1].append(score)
    ranked = [r > w for right, wrong in by_prompt.values() for r in right for w in wrong]
    return {"accuracy": round(100 * float(np.mean(ranked)), 2) if ranked else None, "pairs": len(ranked)}


def share_pct(value: float, reference: float) -> float | None:
    """`value` as a percent of `reference`; None where the reference scored 0 (real data can leave it there)."""
    return round(100 * value / reference, 1) if reference else None


def percent(flags: list[bool]) -> float:
    return round(100 * sum(flags) / max(len(flags), 1), 2)


def reference_reply(row: dict) -> str:
    """An sft row's reference reply: its completion, or its last (the assistant's) message."""
    return row["completion"] if "completion" in row else row["messages"][-1]["content"]


def final_answer(completion: str, row: dict) -> str | None:
    """What a completion is checked on: for a row with an answer to check (the task world's, GSM8K's), its text
    after the last "Answer:"; for a row with only a reference reply (instruction data such as Alpaca's), all of
    it (whitespace-normalised, as SQuAD's exact match)."""
    return extract_answer(completion) if "answer" in row else " ".join(completion.split())


def matches(completion: str, row: dict) -> bool:
    """Whether a completion's final answer is the row's answer, or its reference reply where it has no answer."""
    gold = row["answer"] if "answer" in row else reference_reply(row)
    return final_answer(completion, row) == " ".join(gold.split())


def per_family(rows: list[dict], values: list[float]) -> dict[str, float]:
    """The mean of `values` (one per row) in percent, per family and overall."""
    sums, total = defaultdict(float), defaultdict(int)
    for row, value in zip(rows, values, strict=True):
        for key in (row.get("family", "all"), "overall"):
            sums[key] += value
            total[key] += 1
    return {key: round(100 * sums[key] / total[key], 2) for key in sorted(total)}


def exact_match(rows: list[dict], completions: list[str]) -> dict[str, float]:
    """Percent of rows whose completion matches (`matches`), per family and overall."""
    return per_family(rows, [float(matches(c, r)) for r, c in zip(rows, completions, strict=True)])


def rouge_l(rows: list[dict], completions: list[str]) -> dict[str, float]:
    """Mean ROUGE-L F1 (percent) of each completion against its row's reference reply, per family and overall:
    what instruction data with free-text references is scored by (rouge-score's own scorer and tokenizer)."""
    from rouge_score import rouge_scorer  # here, not at the top: nltk's import would slow every lab's start

    scorer = rouge_scorer.RougeScorer(["rougeL"])
    return per_family(rows, [scorer.score(reference_reply(r), c)["rougeL"].fmeasure
                             for r, c in zip(rows, completions, strict=True)])


def checkable(rows: list[dict]) -> bool:
    """Whether every row has an answer to check (the task world's, GSM8K's), not only a reference reply."""
    return all("answer" in r for r in rows)


def reference_scores(rows: list[dict], completions: list[str]) -> dict[str, dict[str, float]]:
    """Held-out scores against the references: exact match, and ROUGE-L where the rows have no answer to check."""
    scores = {"exact_match": exact_match(rows, completions)}
    if not checkable(rows):
        scores["rouge_l"] = rouge_l(rows, completions)
    return scores


def rouge_change(metrics: dict) -> str:
    """`; ROUGE-L a -> b` for a lab's printed summary when it scored reference replies (real instruction data)."""
    if "rouge_l" not in metrics:
        return ""
    return f"; ROUGE-L {metrics['rouge_l_before']['overall']} -> {metrics['rouge_l']['overall']}"


@torch.no_grad()
def perplexity(model, tokenizer, texts: list[str], prompts: list[str] | None = None, batch_size: int = 32,
               max_length: int = 512) -> float:
    """exp(mean token loss) over `texts`; with `prompts`, chat-formatted and scored on the answers only."""
    model.eval()
    total_loss, total_tokens = 0.0, 0
    for start in range(0, len(texts), batch_size):
        chunk = texts[start:start + batch_size]
        if prompts is None:
            encoded = [tokenizer(t, add_special_tokens=False)["input_ids"][:max_length] for t in chunk]
            ids, attention, labels = _pad_right(tokenizer, encoded, [[1] * len(row) for row in encoded])
        else:
            ids, attention, labels = chat_batch(tokenizer, prompts[start:start + batch_size], chunk, max_length)
        width = ids.shape[1]
        logits = model(input_ids=ids.to(model.device), attention_mask=attention.to(model.device)).logits
        logits = logits[:, -width:]  # prompt tuning returns logits for its virtual tokens first
        shift_logits, shift_labels = logits[:, :-1].float(), labels[:, 1:].to(model.device)
        loss = torch.nn.functional.cross_entropy(
            shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1),
            ignore_index=-100, reduction="sum",
        )
        total_loss += loss.item()
        total_tokens += int((shift_labels != -100).sum())
    return round(math.exp(total_loss / max(total_tokens, 1)), 4)


def results_table(results: dict[str, dict]) -> str:
    """Markdown table of per-model evaluation results (metrics/evaluate.json's "models")."""
    families = sorted({f for r in results.values() for f in r["exact_match"]} - {"overall"})
    judged = any("reward" in r for r in results.values())
    head = ["model", "params", *[f"EM {f} %" for f in families], "EM overall %", "EOS %", "answer ppl", "corpus ppl",
            *(["reward"] if judged else [])]
    if real := all("rl_exact_match" in r for r in results.values()):  # real data: GSM8K's test split
        head += ["rl EM %", "rl format %"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in results.items():
        em = r["exact_match"]
        cells = [f"`{name}`", f"{r['parameters'] / 1e6:.2f}M", *[f"{em.get(f, float('nan')):.1f}" for f in families],
                 f"**{em['overall']:.1f}**", f"{r['eos_rate']:.1f}",
                 f"{r['answer_perplexity']:.3f}", f"{r['corpus_perplexity']:.3f}",
                 *([f"{r['reward']:.3f}" if "reward" in r else "–"] if judged else []),
                 *([f"{r['rl_exact_match']:.1f}", f"{r['rl_format_rate']:.1f}"] if real else [])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def peft_row(name: str, m: dict) -> dict:
    """One row of the PEFT comparison from a lab's metrics (full SFT ships the whole model as its 'adapter')."""
    return {
        "method": name,
        "trainable_parameters": m["trainable_parameters"],
        "trainable_pct": round(100 * m["trainable_parameters"] / m["parameters"], 3),
        "peak_rss_mb": m["run"]["peak_rss_mb"],
        "peak_gpu_mb": m["run"].get("peak_gpu_mb"),
        "train_time_s": m["train_time_s"],
        "wall_time_s": m["run"]["wall_time_s"],
        "adapter_mb": m.get("adapter_mb", m.get("weights_mb")),
        "exact_match": m["exact_match"]["overall"],
        # over every seed the method was trained with (the single run's included); absent: one seed only
        "exact_match_seeds": {key: m["seed_spread"][key] for key in ("seeds", "overall_mean", "overall_sd",
                                                                       "overall_min", "overall_max")}
        if "seed_spread" in m else None,
        "val_loss": m["val_loss"],
        "corpus_perplexity": m.get("corpus_perplexity"),
    }


def peft_comparison(metrics_dir: str | Path = "metrics") -> list[dict]:
    """The PEFT table's rows: full SFT, lora and qlora from their labs' metrics, then every method of
    peft_methods (a lab that has not run has no row)."""
    rows = []
    for lab in ("sft", "lora", "qlora"):
        if m := read_metrics(lab, metrics_dir):
            rows.append(peft_row({"sft": "full SFT", "lora": m.get("method"), "qlora": f"q{m.get('method')}"}[lab], m))
    methods = (read_metrics("peft_methods", metrics_dir) or {}).get("methods", {})
    # metrics files sort their keys; the table lists the methods in the order `lora.method` names them
    order = ["lora", "dora", "prefix", "prompt", "ia3"]
    return rows + [peft_row(name, methods[name]) for name in sorted(methods, key=order.index)]


def peft_table(rows: list[dict]) -> str:
    """Markdown table of the PEFT comparison (`peft_comparison`'s rows)."""
    gpu = any(r["peak_gpu_mb"] is not None for r in rows)
    head = ["method", "trainable params", "trainable %", "peak RSS MB", *(["peak GPU MB"] if gpu else []),
            "train s", "adapter MB", "EM overall %", "EM over seeds: mean ± sd (min-max, n)", "val loss",
            "corpus ppl"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        ppl = "–" if r["corpus_perplexity"] is None else f"{r['corpus_perplexity']:.2f}"
        spread = "–"
        if seeds := r.get("exact_match_seeds"):
            spread = (f"{seeds['overall_mean']:.1f} ± {seeds['overall_sd']:.1f} "
                      f"({seeds['overall_min']:.1f}-{seeds['overall_max']:.1f}, {len(seeds['seeds'])})")
        cells = [f"`{r['method']}`", f"{r['trainable_parameters']:,}", f"{r['trainable_pct']:.2f}",
                 f"{r['peak_rss_mb']:.0f}", *([f"{r['peak_gpu_mb'] or 0:.0f}"] if gpu else []),
                 f"{r['train_time_s']:.0f}", f"{r['adapter_mb']:.3f}", f"**{r['exact_match']:.1f}**", spread,
                 f"{r['val_loss']:.4f}", ppl]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def tensor_bytes(model) -> int:
    """Bytes of every tensor a model holds: its memory footprint, counted the same way for every format.

    `get_memory_footprint()` counts a tensor subclass (torchao) or packed parameters (torch.ao dynamic
    quantization) wrongly, so this walks the state dict: tensor subclasses through their
    inner tensors, packed parameters through their tuples, and tied weights once.
    """
    seen: set[int] = set()

    def size(value) -> int:
        if isinstance(value, (tuple, list)):
            return sum(size(v) for v in value)
        if not isinstance(value, torch.Tensor):
            return 0
        if type(value) not in (torch.Tensor, torch.nn.Parameter) and hasattr(value, "__tensor_flatten__"):
            names, _ = value.__tensor_flatten__()
            return sum(size(getattr(value, name)) for name in names)
        if value.is_quantized:  # torch.ao's packed int8 weights: never tied, one byte per value
            return value.numel() * value.element_size()
        pointer = value.untyped_storage().data_ptr()
        if pointer in seen and value.numel():
            return 0
        seen.add(pointer)
        return value.numel() * value.element_size()

    return sum(size(v) for v in model.state_dict(keep_vars=True).values())


SINGLE_PROMPTS = 8  # batch-1 speed: prompts decoded one after another


@torch.no_grad()
def decoding_speeds(models: dict, tokenizer, prompts: list[str], new_tokens: int, batch_sizes: tuple[int, ...],
                    rounds: int = 3) -> dict[str, dict[str, float]]:
    """Greedy tokens/s of each model at each batch size, measured side by side in this process.

    Every model decodes exactly `new_tokens` per prompt (EOS ignored), so all do the same work whatever they
    answer. A batch size decodes its first batch of prompts, and batch 1 the first SINGLE_PROMPTS one after
    another (one short prompt alone is timed too briefly to be stable). Rounds interleave the models, and each
    keeps its best round: load from other processes on the machine then hits every model alike, and a ratio
    of two columns is a fair speedup.
    """
    tokenizer.padding_side = "left"
    texts = [chat_prompt(tokenizer, p) for p in prompts]
    best: dict[str, dict[str, float]] = {name: {} for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            model.eval()
            for size in batch_sizes:
                chunks = [[text] for text in texts[:SINGLE_PROMPTS]] if size == 1 else [texts[:size]]
                started = time.perf_counter()
                for chunk in chunks:
                    batch = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False)
                    batch = batch.to(model.device)
                    model.generate(**batch, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                                   use_cache=True, pad_token_id=tokenizer.pad_token_id)
                rate = sum(map(len, chunks)) * new_tokens / (time.perf_counter() - started)
                key = f"batch_{size}"
                best[name][key] = round(max(best[name].get(key, 0.0), rate), 1)
    return best


def compression_table(rows: list[dict]) -> str:
    """Markdown table of the compression comparison (metrics/quantize.json's "rows")."""
    head = ["model", "params", "nonzero", "disk MB", "memory MB", "× fp32 memory", "tok/s (batch 1)",
            "tok/s (batch 64)", "perplexity", "EM %", "quality % of fp32"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        disk = f"{r['disk_mb']:.2f}" if r["disk_mb"] is not None else "– (pickle only)"
        speeds = [f"{v:.0f}" if v is not None else "–" for v in r["tokens_per_s"].values()]
        cells = [f"`{r['name']}`", f"{r['parameters'] / 1e6:.2f}M", f"{r['nonzero_parameters'] / 1e6:.2f}M", disk,
                 f"{r['memory_mb']:.2f}", f"{r['memory_ratio']:.2f}", *speeds, f"{r['perplexity']:.3f}",
                 f"{r['exact_match']['overall']:.1f}", f"**{r['quality_pct']:.1f}**"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def win_rate(mine: list[float], theirs: list[float], my_answers: list[str], their_answers: list[str]) -> dict:
    """How often a judge scored my answer above theirs to the same prompt, in percent. A tie counts half: the
    same answer, or scores equal to float precision (one answer's score moves in its last bits with the batch's
    padding, so an exact == would split identical answers into wins and losses)."""
    a, b = np.asarray(mine, dtype=float), np.asarray(theirs, dtype=float)
    same = np.array([x == y for x, y in zip(my_answers, their_answers, strict=True)]) | np.isclose(a, b)
    wins, losses = int(((a > b) & ~same).sum()), int(((a < b) & ~same).sum())
    return {"win_rate": round(100 * (wins + 0.5 * int(same.sum())) / len(a), 2),
            "wins": wins, "losses": losses, "ties": int(same.sum())}

