"""Unit tests of the shared measurements the alignment labs rely on, on a tiny random model built here."""

import random

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from labs.core.evaluation import (
    correlation,
    exact_match,
    kl_to_reference,
    mean_words,
    reference_scores,
    repetition,
)
from labs.core.models import CHAT_TEMPLATE, SPECIAL_TOKENS
from labs.data import FAMILIES, Task, copy_slip


@pytest.fixture(scope="module")
def tokenizer():
    words = ["a", "b", "c", "1", "2", "Answer:", "\n"]
    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS + words + ["<unk>"])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<|pad|>", eos_token="<|end|>",
                                  unk_token="<unk>")
    tok.chat_template = CHAT_TEMPLATE
    return tok


def tiny_model(tokenizer, seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=2, intermediate_size=32, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    return LlamaForCausalLM(config).eval()


def test_kl_of_a_model_to_itself_is_zero_and_to_another_is_positive(tokenizer):
    prompts = ["a b", "c 1 2", "a", "b c a b"]
    policy, other = tiny_model(tokenizer, 0), tiny_model(tokenizer, 1)
    assert kl_to_reference(policy, policy, tokenizer, prompts, 6, 2, seed=0) == pytest.approx(0, abs=1e-5)
    kl = kl_to_reference(policy, other, tokenizer, prompts * 8, 6, 8, seed=0)
    assert kl > 0.01, "a different random model is not the same distribution"
    assert kl == kl_to_reference(policy, other, tokenizer, prompts * 8, 6, 8, seed=0), "seeded: same samples"


def test_repetition_length_and_correlation():
    assert repetition(["a b c d"]) == 0
    assert repetition(["a b c a b c a b c"]) == pytest.approx(100 * 4 / 7, abs=0.01)
    assert mean_words(["a b", "a b c d"]) == 3
    assert correlation([1, 2, 3], [2, 4, 6]) == 1
    assert correlation([1, 2, 3], [5, 5, 5]) is None, "undefined for a constant side"


@pytest.mark.parametrize("family", list(FAMILIES))
def test_copy_slip_is_always_wrong_and_keeps_the_form(family):
    rng = random.Random(0)
    for _ in range(200):
        task: Task = FAMILIES[family](rng)
        slip = copy_slip(task, rng)
        answer = slip.rpartition("Answer: ")[2]
        assert answer != task.answer and len(answer.split()) == len(task.answer.split())
        assert slip.startswith(task.steps)


def test_ranks_own_samples_compares_right_and_wrong_answers_to_the_same_prompt_only():
    from labs.core.evaluation import ranks_own_samples

    prompts = ["p", "p", "p", "q", "q", "r"]
    scores = [3.0, 1.0, 5.0, 9.0, 0.0, 7.0]
    correct = [True, False, False, False, True, True]
    # p: right 3 vs wrong 1 (ranked) and 5 (not); q: right 0 vs wrong 9 (not); r has no wrong answer.
    # Across prompts the wrong 9 would beat every right answer: it must not be compared with them.
    assert ranks_own_samples(prompts, scores, correct) == {"accuracy": 33.33, "pairs": 3}
    assert ranks_own_samples(["p"], [1.0], [True]) == {"accuracy": None, "pairs": 0}


def test_win_rate_counts_a_tie_half_whether_the_answers_or_only_their_scores_agree():
    from labs.core.evaluation import win_rate

    # a win, a loss, the same answer scored a hair apart (batch padding), and two answers scored alike
    result = win_rate([0.9, 0.1, 0.5000001, 0.3], [0.2, 0.8, 0.5, 0.3], ["a", "b", "c", "d"], ["x", "y", "c", "z"])
    assert result == {"win_rate": 50.0, "wins": 1, "losses": 1, "ties": 2}
    assert win_rate([1.0], [0.0], ["same"], ["same"])["ties"] == 1, "an identical answer is a tie whatever its score"


def test_answers_are_checked_after_answer_and_reference_replies_whole_with_rouge_l_beside():
    checkable = [{"prompt": "What is 3 + 4?", "answer": "7", "family": "add"},
                 {"prompt": "What is 1 + 1?", "answer": "2", "family": "add"}]
    assert exact_match(checkable, ["So: Answer: 7", "Answer: 3"]) == {"add": 50.0, "overall": 50.0}
    assert reference_scores(checkable, ["Answer: 7", "Answer: 2"]) == {"exact_match": {"add": 100.0,
                                                                                       "overall": 100.0}}
    replies = [{"prompt": "Describe it.", "completion": "The cat sat on the mat.", "family": "open_qa"},
               {"prompt": "Name one.", "messages": [{"role": "user", "content": "Name one."},
                                                    {"role": "assistant", "content": "A dog"}]}]
    scores = reference_scores(replies, ["The cat  sat on\nthe mat.", "A cat"])
    assert scores["exact_match"] == {"all": 0.0, "open_qa": 100.0, "overall": 50.0}, "whitespace aside, whole"
    assert scores["rouge_l"] == {"all": 50.0, "open_qa": 100.0, "overall": 75.0}, "'A cat' has 1 of 2 words"
    assert exact_match(replies, ["Answer: The cat sat on the mat.", "A dog."])["overall"] == 0.0
