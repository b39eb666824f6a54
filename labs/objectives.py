"""objectives — what a pretraining objective buys: causal LM, prefix LM, masked LM, span corruption and ELECTRA on
the same corpus at the same token budget, then one downstream probe for all of them.

    just lab objectives
    dvc exp run -S objectives.tokens=800000 objectives

Each objective pretrains a model of one shape (`model`: width, depth, heads, MLP) from scratch on the task world's
corpus, documents packed end to end into `max_length` blocks, the same blocks in the same order, for `tokens`
corpus tokens. Every body is pre-norm with rotary positions, a gated MLP and no dropout, so the objective is what
differs:
  * clm     — next-token prediction, a causal Llama (what `pretrain` does);
  * prefix  — prefix LM: the same Llama reads a random prefix of each block both ways and predicts the rest left
              to right (`PrefixLMCollator`: transformers has none);
  * mlm     — masked LM: `mask_probability` of the tokens chosen (80% masked, 10% random, 10% kept) and
              predicted by a ModernBERT encoder (transformers' DataCollatorForLanguageModeling);
  * span    — T5's span corruption: as many tokens hidden, in spans of `mean_span`, each behind one sentinel; a T5
              encoder-decoder (half the layers each) writes them back (`SpanCorruptionCollator`: transformers has
              none);
  * electra — replaced-token detection: a `generator_layers`-deep ModernBERT fills the masked positions (its
              masked-LM loss) and the discriminator, the body kept, tells for every token whether it was replaced
              (loss weight `discriminator_weight`). They share the token embeddings, as in the paper. No library
              trains the pair, so `Electra` below joins two transformers models with our sampling and loss.
Then the probe, the same for every body: a fresh two-class head (each family's transformers classifier: Llama's
last token, ModernBERT's first, T5's decoder EOS), fine-tuned with the body on a share of labelled pairs from the
task world's compare family ("Which is larger: 49 or 27?" -> first or second) for `probe.max_steps` steps
whatever the share, once per seed; accuracy on held-out pairs. Each family's body as initialised,
`scratch_<family>`, is the floor its objectives are read against. The table: accuracy per objective and label
share (mean ± sd over seeds), pretraining time, tokens and the objective's own loss. Each objective, its
pretraining and its probes, is one job at one thread, and the lab's threads run that many jobs side by side
(`side_by_side`): the times compare objectives at one thread each.
"""

from __future__ import annotations

import math
import random
import tempfile
import time
from pathlib import Path
from typing import Literal, get_args

import torch
from datasets import Dataset
from pydantic import Field
from torch import nn
from transformers import (
    DataCollatorForLanguageModeling,
    DataCollatorWithPadding,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    ModernBertConfig,
    ModernBertForMaskedLM,
    ModernBertForSequenceClassification,
    ModernBertForTokenClassification,
    ModernBertModel,
    T5Config,
    T5ForConditionalGeneration,
    T5ForSequenceClassification,
    Trainer,
    TrainingArguments,
)

from labs.core.config import SEED, ConfigError, ModelShape, Section, Seed
from labs.core.data import read_jsonl
from labs.core.models import count_parameters, load_tokenizer, require
from labs.core.run import atomic_path, save_curves, seed_everything, side_by_side, write_card
from labs.core.spread import over_seeds
from labs.core.train import PREPARED

OUT = Path("models/objectives")
MASK = "<|mask|>"  # added to a copy of the project's tokenizer: masked LM and ELECTRA need a mask token
SENTINELS = [f"<|span_{i}|>" for i in range(32)]  # and span corruption its sentinels (enough for 128 tokens)
Objective = Literal["clm", "prefix", "mlm", "span", "electra"]
Family = Literal["llama", "modernbert", "t5"]
FAMILY: dict[str, Family] = {"clm": "llama", "prefix": "llama", "mlm": "modernbert", "electra": "modernbert",
                             "span": "t5"}
FLOORS = {f"scratch_{family}": family for family in get_args(Family)}  # each family's body, never pretrained


class ProbeLR(Section):
    """The probe's peak learning rate per model family: each family's own, the same for its floor and its
    objectives (at one rate for all, some fine-tunes of one family or another stayed at chance)."""

    llama: float = Field(5e-4, gt=0)
    """for clm, prefix and the untrained Llama"""
    modernbert: float = Field(1e-3, gt=0)
    """for mlm, electra and the untrained ModernBERT"""
    t5: float = Field(3e-4, gt=0)
    """for span and the untrained T5"""


class ProbeParams(Section):
    """The downstream probe every pretrained body is fine-tuned on."""

    train_pairs: int = Field(2000, gt=0)
    """labelled compare pairs the shares are taken from"""
    test_pairs: int = Field(500, gt=0)
    """held-out pairs accuracy is measured on"""
    label_shares: list[float] = Field([0.01, 0.1, 1.0], min_length=1)
    """shares of the training pairs each body is fine-tuned on (nested: a smaller share is a prefix)"""
    max_steps: int = Field(150, gt=0)
    """optimizer steps of every fine-tune, whatever the share (a small share is seen many times)"""
    batch_size: int = Field(16, gt=0)
    """labelled pairs per fine-tuning step"""
    lr: ProbeLR = ProbeLR()
    """peak learning rate per model family (docs/decisions.md)"""
    seeds: list[int] = Field([1337, 1, 2], min_length=1)
    """each fine-tune once per seed (head initialisation and row order): the table gives mean and spread"""


class ObjectivesParams(Section):
    """Pretraining objectives compared at one token budget, and the probe that compares them."""

    objectives: list[Objective] = Field(["clm", "prefix", "mlm", "span", "electra"], min_length=1)
    """objectives to pretrain (each against its model family's untrained floor, `scratch_<family>`)"""
    model: ModelShape = ModelShape(num_layers=4)
    """the shape every objective's model takes (4 layers: the probe fine-tunes each body many times)"""
    tokens: int = Field(400_000, gt=0)
    """corpus tokens each objective pretrains on (rounded down to whole batches of blocks)"""
    max_length: int = Field(128, gt=0)
    """packed block length"""
    batch_size: int = Field(16, gt=0)
    """blocks per pretraining step"""
    lr: float = Field(1e-3, gt=0)
    """peak learning rate of every objective's pretraining (cosine decay)"""
    warmup_steps: int = Field(20, ge=0)
    """linear warmup steps of every objective's pretraining"""
    mask_probability: float = Field(0.15, gt=0, lt=1)
    """share of tokens masked LM, span corruption and ELECTRA's generator hide and predict (BERT's and T5's 15%)"""
    mean_span: float = Field(3.0, ge=1)
    """span corruption's mean span length (T5's 3)"""
    generator_layers: int = Field(1, gt=0)
    """ELECTRA's generator depth: a quarter of the discriminator's, as in the paper (by depth, to share one width)"""
    discriminator_weight: float = Field(50.0, gt=0)
    """ELECTRA's weight of the discriminator loss against the generator's (the paper: 50)"""
    probe: ProbeParams = ProbeParams()


class Params(Section):
    """What objectives reads from params.yaml."""

    seed: Seed = SEED
    objectives: ObjectivesParams = ObjectivesParams()


def encoder_config(shape: ModelShape, tokenizer, layers: int | None = None, **extra) -> ModernBertConfig:
    """The Llama shape as a ModernBERT encoder: pre-norm, rotary positions, a gated MLP and no dropout, like the
    causal model, so the objective is what differs; `layers` shortens it (ELECTRA's generator)."""
    return ModernBertConfig(
        vocab_size=len(tokenizer), hidden_size=shape.hidden_size, num_hidden_layers=layers or shape.num_layers,
        num_attention_heads=shape.num_heads, intermediate_size=shape.intermediate_size,
        max_position_embeddings=shape.max_position_embeddings,
        layer_types=["full_attention"] * (layers or shape.num_layers), pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
        cls_token_id=tokenizer.eos_token_id, sep_token_id=tokenizer.eos_token_id, classifier_pooling="cls",
        **extra)


def seq2seq(shape: ModelShape, tokenizer) -> T5ForConditionalGeneration:
    """Span corruption's model: T5 (v1.1's gated MLP, no dropout) with the shape's layers split between encoder
    and decoder, so it runs as many layers per token as the others."""
    return T5ForConditionalGeneration(T5Config(
        vocab_size=len(tokenizer), d_model=shape.hidden_size, d_kv=shape.hidden_size // shape.num_heads,
        d_ff=shape.intermediate_size, num_layers=max(1, shape.num_layers // 2),
        num_decoder_layers=max(1, shape.num_layers // 2), num_heads=shape.num_heads, dropout_rate=0.0,
        feed_forward_proj="gated-silu", tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id))


def causal(shape: ModelShape, tokenizer) -> LlamaForCausalLM:
    """The causal objective's model (and the untrained floor): `pretrain`'s Llama at this shape."""
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=shape.hidden_size, num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads, num_key_value_heads=shape.num_kv_heads,
        intermediate_size=shape.intermediate_size, max_position_embeddings=shape.max_position_embeddings,
        tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id))


class Electra(nn.Module):
    """ELECTRA's generator and discriminator trained together (no library trains the pair). The batch comes from
    the masked-LM collator with every chosen token masked; the generator's loss is its masked-LM loss, and its
    samples, detached, replace the masked tokens the discriminator then judges token by token. Both are the same
    ModernBERT body as `mlm` (the generator shallower) and share the token embeddings, as in the paper."""

    def __init__(self, shape: ModelShape, tokenizer, generator_layers: int, weight: float):
        super().__init__()
        self.discriminator = ModernBertForTokenClassification(encoder_config(shape, tokenizer, num_labels=1))
        self.generator = ModernBertForMaskedLM(encoder_config(shape, tokenizer, layers=generator_layers))
        shared = self.discriminator.model.embeddings.tok_embeddings
        self.generator.model.embeddings.tok_embeddings = shared
        self.generator.decoder.weight = shared.weight
        self.weight = weight
        self.history: list[dict] = []  # each training step's losses, share replaced and discriminator recall

    def summary(self, steps: int) -> dict:
        """The last `steps` steps' means, and the loss of a discriminator that only knew the share replaced."""
        window = self.history[-steps:]
        mean = {key: round(sum(step[key] for step in window) / len(window), 4) for key in window[0]}
        share = mean["replaced"]
        prior = -(share * math.log(share) + (1 - share) * math.log(1 - share)) if 0 < share < 1 else 0.0
        return mean | {"prior_loss": round(prior, 4)}

    def forward(self, input_ids, attention_mask, labels):
        generated = self.generator(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
        chosen = labels != -100
        original = torch.where(chosen, labels, input_ids)
        with torch.no_grad():
            samples = torch.distributions.Categorical(logits=generated.logits[chosen].float()).sample()
        corrupted = original.clone()
        corrupted[chosen] = samples
        replaced = (corrupted != original).float()
        logits = self.discriminator(input_ids=corrupted, attention_mask=attention_mask).logits.squeeze(-1)
        judged = nn.functional.binary_cross_entropy_with_logits(logits[attention_mask.bool()],
                                                                replaced[attention_mask.bool()])
        self.last = {"generator_loss": generated.loss.item(), "discriminator_loss": judged.item(),
                     "masked": chosen.float().mean().item(), "replaced": replaced.mean().item(),
                     "recall": ((logits > 0) & replaced.bool()).sum().item() / max(1, replaced.sum().item())}
        if self.training:
            self.history.append(self.last)
        return {"loss": generated.loss + self.weight * judged, "generator_loss": generated.loss.detach(),
                "discriminator_loss": judged.detach()}


class PrefixLMCollator:
    """Prefix LM (T5's and UniLM's): each block splits at a random point; the prefix is read bidirectionally and
    only the rest is predicted, left to right. transformers has no prefix-LM collator, so this one builds the
    custom 4D mask a Llama takes as-is (True = may attend): causal, plus every position may see the prefix."""

    def __init__(self, seed: int):
        self.rng = random.Random(f"{seed}:prefix")

    def __call__(self, rows: list[dict]) -> dict:
        ids = torch.tensor([row["input_ids"] for row in rows])
        length = ids.shape[1]
        split = torch.tensor([self.rng.randint(1, length - 1) for _ in rows])
        labels = ids.clone()
        labels[torch.arange(length)[None, :] < split[:, None]] = -100  # the prefix is context, not a target
        return {"input_ids": ids, "labels": labels, "attention_mask": prefix_mask(torch.ones_like(ids), split)}


def prefix_mask(padding: torch.Tensor, split: torch.Tensor) -> torch.Tensor:
    """(batch, 1, L, L) bool: position i sees position j when j <= i or j is in the first `split` positions, and
    j is not padding. A split of L is a fully bidirectional encoder (how the prefix LM reads a probe's input)."""
    position = torch.arange(padding.shape[1])
    sees = (position[None, :] <= position[:, None])[None] | (position[None, None, :] < split[:, None, None])
    return (sees & padding.bool()[:, None, :])[:, None]


class SpanCorruptionCollator:
    """T5's span corruption: `density` of each block's tokens, in spans of `mean_span` on average, each replaced
    by one sentinel in the input; the target lists every sentinel followed by the tokens it hides. transformers
    has no span-corruption collator (only a TF/Flax example script), so this one follows T5's
    random_spans_noise_mask: the noise and kept lengths are random partitions, interleaved kept-first."""

    def __init__(self, tokenizer, density: float, mean_span: float, seed: int):
        self.sentinels = tokenizer.convert_tokens_to_ids(SENTINELS)
        self.eos, self.pad = tokenizer.eos_token_id, tokenizer.pad_token_id
        self.density, self.mean_span = density, mean_span
        self.rng = random.Random(f"{seed}:span")

    def partition(self, total: int, parts: int) -> list[int]:
        """`total` split into `parts` positive lengths, uniformly at random."""
        cuts = sorted(self.rng.sample(range(1, total), parts - 1))
        return [b - a for a, b in zip([0, *cuts], [*cuts, total], strict=True)]

    def corrupt(self, ids: list[int]) -> tuple[list[int], list[int]]:
        noise = min(len(ids) - 1, max(1, round(len(ids) * self.density)))
        spans = min(len(self.sentinels), noise, len(ids) - noise, max(1, round(noise / self.mean_span)))
        inputs, target, at = [], [], 0
        for sentinel, kept, hidden in zip(self.sentinels, self.partition(len(ids) - noise, spans),
                                          self.partition(noise, spans), strict=False):
            inputs += ids[at:at + kept] + [sentinel]
            target += [sentinel] + ids[at + kept:at + kept + hidden]
            at += kept + hidden
        return inputs + [self.eos], target + [self.eos]

    def __call__(self, rows: list[dict]) -> dict:
        pairs = [self.corrupt(row["input_ids"]) for row in rows]
        inputs, targets = (max(len(pair[i]) for pair in pairs) for i in (0, 1))
        ids = torch.tensor([p[0] + [self.pad] * (inputs - len(p[0])) for p in pairs])
        labels = torch.tensor([p[1] + [-100] * (targets - len(p[1])) for p in pairs])
        return {"input_ids": ids, "attention_mask": (ids != self.pad).long(), "labels": labels}


def blocks(tokenizer, length: int) -> list[list[int]]:
    """The corpus's documents tokenized and packed end to end (EOS between them) into blocks of `length`."""
    stream: list[int] = []
    for row in read_jsonl(PREPARED / "corpus_train.jsonl", "text"):
        stream += tokenizer(row["text"]).input_ids + [tokenizer.eos_token_id]
    return [stream[i:i + length] for i in range(0, len(stream) - length + 1, length)]


def args(out: Path, seed: int, steps: int, batch: int, lr: float, warmup: int, logging: int) -> TrainingArguments:
    """The Trainer's arguments for pretraining and probe alike: seeded and deterministic, nothing saved or reported."""
    return TrainingArguments(output_dir=str(out), seed=seed, data_seed=seed, full_determinism=True, use_cpu=True,
                             max_steps=steps, per_device_train_batch_size=batch, learning_rate=lr,
                             warmup_steps=warmup, lr_scheduler_type="cosine", weight_decay=0.01,
                             logging_steps=logging, save_strategy="no", report_to="none", disable_tqdm=True,
                             remove_unused_columns=False, dataloader_num_workers=0)


def untrained(family: Family, shape: ModelShape, tokenizer):
    """A family's model as initialised: the floor its pretrained bodies are read against."""
    if family == "llama":
        return causal(shape, tokenizer)
    return ModernBertModel(encoder_config(shape, tokenizer)) if family == "modernbert" else seq2seq(shape, tokenizer)


def pretrain(objective: str, cfg: ObjectivesParams, tokenizer, rows: list[list[int]], seed: int, scratch: Path):
    """One objective's model, trained on the first `steps` batches of `rows`: its body, its loss history, seconds,
    steps, and for ELECTRA the last tenth's losses and shares replaced."""
    seed_everything(seed)
    steps = cfg.tokens // (cfg.batch_size * cfg.max_length)
    data = Dataset.from_dict({"input_ids": rows})
    if objective == "clm":
        model = causal(cfg.model, tokenizer)
        collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
    elif objective == "prefix":
        model, collator = causal(cfg.model, tokenizer), PrefixLMCollator(seed)
    elif objective == "span":
        model = seq2seq(cfg.model, tokenizer)
        collator = SpanCorruptionCollator(tokenizer, cfg.mask_probability, cfg.mean_span, seed)
    elif objective == "mlm":
        model = ModernBertForMaskedLM(encoder_config(cfg.model, tokenizer))
        collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=cfg.mask_probability)
    else:
        model = Electra(cfg.model, tokenizer, cfg.generator_layers, cfg.discriminator_weight)
        collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=cfg.mask_probability,
                                                   mask_replace_prob=1.0, random_replace_prob=0.0)
    trainer = Trainer(model=model, args=args(scratch / objective, seed, steps, cfg.batch_size, cfg.lr,
                                             cfg.warmup_steps, max(1, steps // 20)),
                      train_dataset=data, data_collator=collator)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    body = model.discriminator.model if objective == "electra" else model  # the probe puts its own head on
    extra = {"electra": model.summary(max(1, steps // 10))} if objective == "electra" else {}
    return body, trainer.state.log_history, seconds, steps, extra


def compare_pairs(count: int, rng: random.Random, exclude: set[tuple[int, int]]) -> list[dict]:
    """Labelled pairs of the compare family: label 0 when the first number is the larger."""
    pairs = []
    while len(pairs) < count:
        a, b = rng.sample(range(10, 100), 2)
        if (a, b) not in exclude:
            exclude.add((a, b))
            pairs.append({"text": f"Which is larger: {a} or {b}?", "label": int(b > a)})
    return pairs


CLASSIFIERS = {"llama": LlamaForSequenceClassification, "modernbert": ModernBertForSequenceClassification,
               "t5": T5ForSequenceClassification}


class BidirectionalCollator(DataCollatorWithPadding):
    """The prefix LM's probe reads its whole input as the prefix: the padded batch with a bidirectional mask."""

    def __call__(self, features):
        batch = super().__call__(features)
        padding = batch["attention_mask"]
        batch["attention_mask"] = prefix_mask(padding, torch.full((len(padding),), padding.shape[1]))
        return batch


def probe(objective: str, body_dir: Path, cfg: ObjectivesParams, tokenizer, train: list[dict], test: list[dict],
          share: float, seed: int, scratch: Path) -> float:
    """Accuracy on `test` after fine-tuning the body in `body_dir` with a fresh head on `share` of `train`."""
    seed_everything(seed)
    family = FAMILY.get(objective) or FLOORS[objective]
    model = CLASSIFIERS[family].from_pretrained(body_dir, num_labels=2)
    rows = train[:max(1, math.ceil(share * len(train)))]
    # every input starts with EOS, as every document after the first does in the packed pretraining blocks;
    # ModernBERT's head reads that position ("cls": with mean pooling it stayed near chance), T5's its
    # last EOS, so T5's inputs end with one too
    eos = [tokenizer.eos_token_id]
    end = eos if family == "t5" else []

    def encode(batch):
        return {"input_ids": [eos + ids + end for ids in tokenizer(batch["text"]).input_ids]}

    data = Dataset.from_list(rows).map(encode, batched=True, remove_columns=["text"])
    collator = (BidirectionalCollator if objective == "prefix" else DataCollatorWithPadding)(tokenizer)
    p = cfg.probe
    trainer = Trainer(model=model, args=args(scratch / "probe", seed, p.max_steps, p.batch_size, getattr(p.lr, family),
                                             p.max_steps // 10, p.max_steps),
                      train_dataset=data, data_collator=collator)
    trainer.train()
    held_out = Dataset.from_list(test).map(encode, batched=True, remove_columns=["text"])
    predictions = trainer.predict(held_out).predictions
    logits = predictions[0] if isinstance(predictions, tuple) else predictions
    right = sum(int(row.argmax() == label) for row, label in zip(logits, held_out["label"], strict=True))
    return round(100 * right / len(test), 2)


def objective_row(objective: str, cfg: ObjectivesParams, tokenizer, rows: list[list[int]], train: list[dict],
                  test: list[dict], seed: int, out: Path, card: dict) -> tuple[dict, list[dict]]:
    """One row of the table and its loss history: the objective's body pretrained (a floor's as initialised),
    saved to out/<objective>, and probed at every label share once per probe seed."""
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)  # the trainers' output_dir: they save nothing there (save_strategy "no")
        if objective in FLOORS:  # the family's body as initialised, to tell what pretraining added
            seed_everything(seed)
            body = untrained(FLOORS[objective], cfg.model, tokenizer)
            log, seconds, trained, extra = [], 0.0, 0, {}
        else:
            body, log, seconds, trained, extra = pretrain(objective, cfg, tokenizer, rows, seed, scratch)
        tokenizer.save_pretrained(out / objective)
        body.save_pretrained(out / objective)
        write_card(out / objective, card | {"objective": objective})
        accuracy = {str(share): [probe(objective, out / objective, cfg, tokenizer, train, test, share, probe_seed,
                                       scratch) for probe_seed in cfg.probe.seeds]
                    for share in cfg.probe.label_shares}
    losses = [entry["loss"] for entry in log if "loss" in entry]
    body_only = getattr(body, "model", body)  # without a pretraining head, as the floors and ELECTRA's
    row = {"parameters": count_parameters(body_only), "steps": trained,
           "tokens": trained * cfg.batch_size * cfg.max_length, "pretrain_s": round(seconds, 1),
           "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
           "accuracy": accuracy} | extra
    print(f"objectives {objective}: {trained} steps, accuracy by share " +
          ", ".join(f"{share}: {sum(a) / len(a):.1f}" for share, a in accuracy.items()), flush=True)
    return row, [{"step": entry["step"], objective: entry["loss"]} for entry in log if "loss" in entry]


def run(params: Params) -> dict:
    cfg = params.objectives
    steps = cfg.tokens // (cfg.batch_size * cfg.max_length)
    if steps == 0:
        raise ConfigError(f"params.yaml: objectives.tokens: {cfg.tokens} is less than one batch of "
                         f"{cfg.batch_size} x {cfg.max_length} tokens")
    tokenizer = load_tokenizer(require(Path("models/tokenizer"), "tokenizer.json", "tokenizer"))
    tokenizer.add_special_tokens({"mask_token": MASK, "additional_special_tokens": SENTINELS})
    rows = blocks(tokenizer, cfg.max_length)
    if not rows:
        raise ConfigError(f"params.yaml: objectives.max_length: {cfg.max_length} is longer than the whole corpus "
                          f"({PREPARED / 'corpus_train.jsonl'})")
    rows = [rows[i % len(rows)] for i in range(steps * cfg.batch_size)]  # the same blocks, in order, for all
    rng = random.Random(f"{params.seed}:objectives:probe")
    seen: set[tuple[int, int]] = set()
    test = compare_pairs(cfg.probe.test_pairs, rng, seen)
    train = compare_pairs(cfg.probe.train_pairs, rng, seen)

    card = {"lab": "objectives", "seed": params.seed, "config": cfg.model_dump()}
    families = {FAMILY[objective] for objective in cfg.objectives}
    floors = [floor for floor, family in FLOORS.items() if family in families]
    with atomic_path(OUT) as out:
        out.mkdir()
        jobs = [*cfg.objectives, *floors]  # the floors, the shortest jobs, last: no long one ends alone
        done = dict(zip(jobs, side_by_side(objective_row, [(objective, cfg, tokenizer, rows, train, test,
                                                            params.seed, out, card) for objective in jobs]),
                        strict=True))
    table = {objective: done[objective][0] for objective in [*floors, *cfg.objectives]}
    history = [entry for objective in cfg.objectives for entry in done[objective][1]]
    save_curves("objectives", history, {name: f"loss/{name}" for name in cfg.objectives})
    spread = {name: over_seeds([[{"share": share, "accuracy": row["accuracy"][share][i]}
                                 for share in row["accuracy"]] for i in range(len(cfg.probe.seeds))],
                               "share", ("accuracy",)) for name, row in table.items()}
    labels = sum(row["label"] for row in test)
    return {"objectives": table, "tokens": steps * cfg.batch_size * cfg.max_length,
            "accuracy": {name: {r["share"]: r["accuracy"] for r in rows_} for name, rows_ in spread.items()},
            "seeds": cfg.probe.seeds, "label_shares": cfg.probe.label_shares, "test_pairs": len(test),
            "train_pairs": len(train), "majority_pct": round(100 * max(labels, len(test) - labels) / len(test), 2)}


MODEL = {"llama": "Llama", "modernbert": "ModernBERT", "t5": "T5"}
ORDER = [*FLOORS, *get_args(Objective)]  # the table's rows: the floors, then the objectives by family


def table(metrics: dict) -> tuple[list[str], list[list]]:
    """metrics/objectives.json as a table: one row per objective, probe accuracy as mean ± sd over its seeds."""
    shares = [str(share) for share in metrics["label_shares"]]
    header = ["objective", "model", "parameters", "pretraining tokens", "pretraining s", "own loss first → last",
              *(f"accuracy % at {float(share):.0%} labels ({len(metrics['seeds'])} seeds)" for share in shares)]
    rows = []
    for name in sorted(metrics["objectives"], key=ORDER.index):
        row = metrics["objectives"][name]
        loss = f"{row['first_loss']:.3f} → {row['last_loss']:.3f}" if row["first_loss"] is not None else "–"
        accuracy = metrics["accuracy"][name]
        rows.append([name, MODEL[FAMILY.get(name) or FLOORS[name]], f"{row['parameters']:,}", f"{row['tokens']:,}",
                     row["pretrain_s"], loss,
                     *(f"{accuracy[share]['mean']:.1f} ± {accuracy[share]['sd']:.1f}" for share in shares)])
    return header, rows
