"""Measurements shared by the labs: exact-match of generated answers and perplexity from the model's loss.

The task world's answers are checkable: a completion is right when the text after its last "Answer:"
equals the gold answer (whitespace-normalised). `evaluate.load(...)` cannot load metrics offline, so
perplexity comes from the model's own loss.
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch


def extract_answer(completion: str) -> str | None:
    marker = completion.rfind("Answer:")
    if marker < 0:
        return None
    return " ".join(completion[marker + len("Answer:"):].split())


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int
             ) -> tuple[list[str], list[bool]]:
    """Greedy completions of chat-formatted `prompts`, and whether each ended its turn with EOS before
    `max_new_tokens` (RL labs sample from the SFT model and need it to stop by itself)."""
    tokenizer.padding_side = "left"  # decoder-only generation continues from the right edge
    model.eval()
    completions, ended = [], []
    for start in range(0, len(prompts), batch_size):
        chats = [[{"role": "user", "content": p}] for p in prompts[start:start + batch_size]]
        texts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chats]
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        output = model.generate(
            **batch, max_new_tokens=max_new_tokens, do_sample=False,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        )
        new_tokens = output[:, batch["input_ids"].shape[1]:]
        completions += tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        ended += (new_tokens == tokenizer.eos_token_id).any(dim=1).tolist()
    return completions, ended


def percent(flags: list[bool]) -> float:
    return round(100 * sum(flags) / max(len(flags), 1), 2)


def exact_match(rows: list[dict], completions: list[str]) -> dict[str, float]:
    """Percent of rows whose extracted answer equals row["answer"], per family and overall."""
    right, total = defaultdict(int), defaultdict(int)
    for row, completion in zip(rows, completions, strict=True):
        family = row.get("family", "all")
        hit = extract_answer(completion) == " ".join(row["answer"].split())
        for key in (family, "overall"):
            right[key] += hit
            total[key] += 1
    return {key: round(100 * right[key] / total[key], 2) for key in sorted(total)}


@torch.no_grad()
def perplexity(model, tokenizer, texts: list[str], prompts: list[str] | None = None, batch_size: int = 32,
               max_length: int = 512) -> float:
    """exp(mean token loss) over `texts`; with `prompts`, chat-formatted and scored on the answers only."""
    tokenizer.padding_side = "right"
    model.eval()
    total_loss, total_tokens = 0.0, 0
    for start in range(0, len(texts), batch_size):
        chunk = texts[start:start + batch_size]
        if prompts is None:
            encoded = [tokenizer(t, add_special_tokens=False)["input_ids"][:max_length] for t in chunk]
            masks = [[1] * len(ids) for ids in encoded]
        else:
            encoded, masks = [], []
            for prompt, answer in zip(prompts[start:start + batch_size], chunk, strict=True):
                chat = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
                out = tokenizer.apply_chat_template(chat, tokenize=True, return_dict=True,
                                                    return_assistant_tokens_mask=True)
                encoded.append(out["input_ids"][:max_length])
                masks.append(out["assistant_masks"][:max_length])
        width = max(map(len, encoded))
        ids = torch.full((len(encoded), width), tokenizer.pad_token_id)
        attention = torch.zeros((len(encoded), width), dtype=torch.long)
        labels = torch.full((len(encoded), width), -100)
        for i, (row, mask) in enumerate(zip(encoded, masks, strict=True)):
            ids[i, :len(row)] = torch.tensor(row)
            attention[i, :len(row)] = 1
            labels[i, :len(row)] = torch.where(torch.tensor(mask, dtype=torch.bool), torch.tensor(row), -100)
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
    head = ["model", "params", *[f"EM {f} %" for f in families], "EM overall %", "EOS %", "answer ppl", "corpus ppl"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in results.items():
        em = r["exact_match"]
        cells = [f"`{name}`", f"{r['parameters'] / 1e6:.2f}M", *[f"{em.get(f, float('nan')):.1f}" for f in families],
                 f"**{em['overall']:.1f}**", f"{r['eos_rate']:.1f}",
                 f"{r['answer_perplexity']:.3f}", f"{r['corpus_perplexity']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def peft_table(rows: list[dict]) -> str:
    """Markdown table of the PEFT comparison (metrics/peft_methods.json's "table")."""
    gpu = any(r["peak_gpu_mb"] is not None for r in rows)
    head = ["method", "trainable params", "trainable %", "peak RSS MB", *(["peak GPU MB"] if gpu else []),
            "train s", "adapter MB", "EM overall %", "val loss", "corpus ppl"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        ppl = "–" if r["corpus_perplexity"] is None else f"{r['corpus_perplexity']:.2f}"
        cells = [f"`{r['method']}`", f"{r['trainable_parameters']:,}", f"{r['trainable_pct']:.2f}",
                 f"{r['peak_rss_mb']:.0f}", *([f"{r['peak_gpu_mb'] or 0:.0f}"] if gpu else []),
                 f"{r['train_time_s']:.0f}", f"{r['adapter_mb']:.3f}", f"**{r['exact_match']:.1f}**",
                 f"{r['val_loss']:.4f}", ppl]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
