"""A language model as judge: which of two answers to a question is right, asked twice with the answers swapped.

The judge reads `PROMPT` (a question and answers A and B), works the question out and ends with the answer it finds
right, "Answer: X"; the side whose final answer is X is its verdict (a judge that names a side, "Answer: B", is read
as naming that side). A verdict counts only when it names the same answer in both orders; when it names the same
position instead, the judge followed the position, not the answer (position bias), and the pair stays undecided.
`rlaif` teaches the SFT model this prompt and uses it to label a policy's samples; `evaluate` uses the same judge on
the evaluated models' answers. The task world's checker only measures the judge: how often its verdicts agree with
the checker, and how often they flip with the order.

Why the judge names the answer and not the letter: the SFT model, fine-tuned to end with "Answer: A" or "Answer: B",
solved the questions but did not learn to tie its solution to a letter, and followed the position (docs/decisions.md).
"""

from __future__ import annotations

import random
import re

from labs.core.evaluation import extract_answer, generate, percent

# the question last, next to where the answer starts, as in the SFT chats: with it first the judge named the right
# answer of 77% of held-out pairs in both orders, with it last 98.5% (docs/decisions.md)
PROMPT = "Two answers to one question:\nA: {a}\nB: {b}\nWhich is right? Question: {question}"
SIDES = ("A", "B")
VERDICT = re.compile(r"\b([AB])\b")


def prompt(question: str, a: str, b: str) -> str:
    return PROMPT.format(question=question, a=a, b=b)


def judging_chats(pairs: list[dict], seed: str) -> list[dict]:
    """SFT rows that teach judging from preference pairs {prompt, chosen, rejected}: the chosen answer shown as A
    or B at random (half each, so no position is the safe guess), the reference completion the chosen answer
    itself, working and all: the judge solves the question with both answers in view and names the right one."""
    rng = random.Random(seed)
    rows = []
    for pair in pairs:
        a, b = (pair["chosen"], pair["rejected"]) if rng.random() < 0.5 else (pair["rejected"], pair["chosen"])
        rows.append({"prompt": prompt(pair["prompt"], a, b), "completion": pair["chosen"]})
    return rows


def side_named(verdict: str, a: str, b: str) -> str | None:
    """The side a verdict names: the one whose final answer it ends with, or a letter it names ("Answer: B", or a
    hub instruct model's own words, "B is right"); None when neither (or both: answers with one final answer)."""
    named, answers = extract_answer(verdict), (extract_answer(a), extract_answer(b))
    if named is not None and named in answers and answers[0] != answers[1]:
        return SIDES[answers.index(named)]
    if named in SIDES:
        return named
    found = VERDICT.search(verdict) if named is None else None
    return found.group(1) if found else None


def decide(in_order: str | None, swapped: str | None) -> str | None:
    """The answer a judge prefers from its verdicts on (first, second) and on (second, first): "first", "second",
    or None when the two verdicts name the same position (or either is not a side)."""
    if (in_order, swapped) == ("A", "B"):
        return "first"
    if (in_order, swapped) == ("B", "A"):
        return "second"
    return None


def verdicts(model, tokenizer, pairs: list[tuple[str, str, str]], max_new_tokens: int,
             batch_size: int) -> list[tuple[str | None, ...]]:
    """Per (question, first, second): the side the judge's greedy verdict names in order and swapped (None when it
    names neither). `max_new_tokens` bounds its working and its answer, as for any answer."""
    asked = list(pairs) + [(q, b, a) for q, a, b in pairs]
    said, _ = generate(model, tokenizer, [prompt(*ask) for ask in asked], max_new_tokens, batch_size)
    side = [side_named(text, a, b) for text, (_, a, b) in zip(said, asked, strict=True)]
    return list(zip(side[:len(pairs)], side[len(pairs):], strict=True))


def judge(model, tokenizer, pairs: list[tuple[str, str, str]], max_new_tokens: int,
          batch_size: int) -> tuple[list[str | None], dict]:
    """Each pair's decision (`decide`) and how the judge behaved over all of them: the share decided, the share
    whose verdict flipped with the order (it named the same position twice), and of those the share where that
    position was A (which side a biased judge favours)."""
    sides = verdicts(model, tokenizer, pairs, max_new_tokens, batch_size)
    decisions = [decide(*s) for s in sides]
    followed = [s[0] for s in sides if s[0] is not None and s[0] == s[1]]
    stats = {"pairs": len(pairs), "decided": percent([d is not None for d in decisions]),
             "position_flips": percent([s[0] is not None and s[0] == s[1] for s in sides]),
             "flips_to_a": percent([side == "A" for side in followed])}
    return decisions, stats


def agreement(decisions: list[str | None], first_right: list[bool], second_right: list[bool]) -> dict:
    """How a judge's decisions compare with the checker's on the pairs the checker can decide (one answer right,
    the other wrong): percent agreeing (an undecided pair counts as a disagreement) and how many pairs those were."""
    checked = [(d, f) for d, f, s in zip(decisions, first_right, second_right, strict=True) if f != s]
    return {"agreement": percent([d == ("first" if f else "second") for d, f in checked]), "checkable": len(checked)}
