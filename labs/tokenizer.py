"""tokenizer — train a byte-level BPE tokenizer on the training text and save it as a transformers tokenizer.

    just lab tokenizer   # dvc repro tokenizer

Trained with the `tokenizers` library (the Rust BPE behind every fast HF tokenizer). Digits are split
one per token so numbers are spelled digit by digit, which is what makes arithmetic learnable for a small
model. Templated text reaches far fewer merges than asked (here 396 tokens of 512: metrics/tokenizer.json),
so the model's embedding takes `len(tokenizer)`, not `vocab_size`. The chat template
(labs/core/models.py) is saved alongside, as chat_template.jinja.
GPU tiers use the hub model's own tokenizer (see `pretrain`); this stage is then unused but cheap.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from labs.core.config import Section
from labs.core.data import read_jsonl
from labs.core.models import CHAT_TEMPLATE, END_OF_TURN, SPECIAL_TOKENS
from labs.core.run import atomic_path


class TokenizerParams(Section):
    vocab_size: int = Field(512, ge=64)
    """most tokens the BPE may have (special tokens included)"""
    min_frequency: int = Field(2, ge=1)
    """fewest occurrences a pair needs to be merged"""


class Params(Section):
    """What tokenizer reads from params.yaml."""

    tokenizer: TokenizerParams = TokenizerParams()


PREPARED, OUT = Path("data/prepared"), Path("models/tokenizer")


def training_text():
    for row in read_jsonl(PREPARED / "corpus_train.jsonl", "text"):
        yield row["text"]
    for row in read_jsonl(PREPARED / "sft_train.jsonl", "sft"):
        yield row["prompt"] + "\n" + row["completion"]


def run(params: Params) -> dict:
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=params.tokenizer.vocab_size,
        min_frequency=params.tokenizer.min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte encodable: no unknown token
        show_progress=False,
    )
    bpe.train_from_iterator(training_text(), trainer)

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token=END_OF_TURN, pad_token="<|pad|>",
        additional_special_tokens=SPECIAL_TOKENS[2:], model_max_length=4096,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    with atomic_path(OUT) as tmp:
        tokenizer.save_pretrained(tmp)
    sample = tokenizer("What is 23 + 58?")["input_ids"]
    print(f"tokenizer: {len(tokenizer)} tokens (asked {params.tokenizer.vocab_size}); "
          f"'What is 23 + 58?' -> {len(sample)} tokens")
    return {"vocab_size": len(tokenizer), "requested_vocab_size": params.tokenizer.vocab_size}
