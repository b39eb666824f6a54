"""The two training recipes several labs share, over TRL's SFTTrainer: causal-LM training on the packed
corpus (pretrain; a distilled student's own pretraining) and fine-tuning on the sft task's chats (sft, the
PEFT labs, prune's recovery, QAT, distill). A lab brings the model, the adapter or the trainer; the data,
the trainer's arguments, checkpointing and the held-out battery stay here, so their rows compare.
"""

from __future__ import annotations

from pathlib import Path

from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from labs.core.config import Section, TrainParams
from labs.core.data import assistant_turn, read_jsonl, user_turn
from labs.core.evaluation import generate, percent, perplexity, reference_scores
from labs.core.models import trainer_kwargs
from labs.core.run import (
    checkpoint_dir,
    finish_checkpoints,
    lab_processes,
    parameters_per_process,
    run_card,
    save_curves,
    show_progress,
    train_resumable,
    whole_model,
)

PREPARED = Path("data/prepared")


def as_chat(rows: list[dict]) -> Dataset:
    """Contract rows -> TRL's conversational prompt-completion format (so the chat template applies)."""
    def turn(row):
        if "messages" in row:
            return {"prompt": row["messages"][:-1], "completion": row["messages"][-1:]}
        return {"prompt": user_turn(row["prompt"]), "completion": assistant_turn(row["completion"])}
    return Dataset.from_list([turn(row) for row in rows])


def train_on_corpus(params: Section, cfg: TrainParams, lab: str, model, tokenizer, inputs: list[Path],
                    max_length: int, train: bool = True) -> tuple[SFTTrainer, dict, dict]:
    """Next-token training on the corpus, documents packed end to end into `max_length` blocks (TRL's
    "wrapped" packing: the default "bfd" is 2-3x slower on this kind of CPU and truncates long documents).
    `inputs` are what the run's checkpoints depend on besides the corpus; `train`
    False only measures (a hub base used as it is)."""
    train_rows = Dataset.from_list(read_jsonl(PREPARED / "corpus_train.jsonl", "text"))
    val = Dataset.from_list(read_jsonl(PREPARED / "corpus_val.jsonl", "text"))
    checkpoints = checkpoint_dir(lab, {"seed": params.seed, "tier": params.tier, lab: cfg.model_dump()},
                                 [PREPARED / "corpus_train.jsonl", PREPARED / "corpus_val.jsonl", *inputs])
    args = SFTConfig(
        **trainer_kwargs(params, cfg, checkpoints),
        max_length=max_length,
        packing=True,
        packing_strategy="wrapped",
        dataset_text_field="text",
        completion_only_loss=False,  # plain text: every token is a target
    )
    card = run_card(lab, params, cfg)  # saved with every checkpoint and with the final model
    trainer = SFTTrainer(model=model, args=args, train_dataset=train_rows, eval_dataset=val,
                         processing_class=tokenizer)
    show_progress(trainer, lab)
    metrics = {"val_loss_before": loss_before_training(trainer)}
    if train:
        metrics |= train_resumable(trainer, checkpoints, card)
    metrics["val_loss"] = round(trainer.evaluate()["eval_loss"], 4)
    if train:
        metrics |= gather_trained(trainer)
    save_curves(lab, trainer.state.log_history)
    finish_checkpoints(checkpoints)
    return trainer, metrics, card


def sft_chats() -> tuple[Dataset, Dataset]:
    """The sft task's training and validation chats."""
    return (as_chat(read_jsonl(PREPARED / "sft_train.jsonl", "sft")),
            as_chat(read_jsonl(PREPARED / "sft_val.jsonl", "sft")))


def chat_args(params: Section, cfg: TrainParams, lab: str, base: Path, **overrides) -> SFTConfig:
    """SFTConfig for training on the sft task's chats, loss on the answers only, one chat per row; its
    output_dir is the run's checkpoint directory (resumed when the run's inputs are the same)."""
    checkpoints = checkpoint_dir(lab, {"seed": params.seed, "tier": params.tier, lab: cfg.model_dump()},
                                 [PREPARED / "sft_train.jsonl", PREPARED / "sft_val.jsonl", base])
    return SFTConfig(
        **trainer_kwargs(params, cfg, checkpoints),
        max_length=cfg.max_length,
        completion_only_loss=True,  # prompt tokens -> -100
        packing=False,  # one short chat per row; padding-free packing is 2-3x slower on CPU
        **overrides,
    )


def loss_before_training(trainer) -> float:
    """Validation loss of the model as training starts.

    On several processes the trainer's own evaluation would set the model up for the strategy before training
    does, which FSDP2 refuses (it shards a model and its optimizer together) and ZeRO-2 too (DeepSpeed's engine
    for evaluation is ZeRO-3's). So each process evaluates its share of the rows on the model as it was loaded,
    and train() sets the model up (train_resumable)."""
    if lab_processes() == 1:
        return round(trainer.evaluate()["eval_loss"], 4)
    from transformers.integrations.deepspeed import set_hf_deepspeed_config, unset_hf_deepspeed_config

    trainer.accelerator.prepare_model(trainer.model, evaluation_mode=True)  # marked ready as it is
    deepspeed, trainer.is_deepspeed_enabled = trainer.is_deepspeed_enabled, False
    if deepspeed:
        unset_hf_deepspeed_config()  # nothing is partitioned yet: TRL's loss must not gather ZeRO-3's shards
    try:
        return round(trainer.evaluate()["eval_loss"], 4)
    finally:
        trainer.is_deepspeed_enabled = deepspeed
        if deepspeed:
            set_hf_deepspeed_config(trainer.args.hf_deepspeed_config)


def gather_trained(trainer) -> dict:
    """Make `trainer.model` the whole trained model, which the lab measures and saves, gathered from the processes'
    shards; on several processes, report how many parameter values each held (a shard under fsdp2 and zero3)."""
    held = {"parameters_per_process": parameters_per_process(trainer)} if lab_processes() > 1 else {}
    trainer.model = whole_model(trainer)
    return held


def fit(trainer, card: dict, lab: str) -> dict:
    """Train (resuming from the last checkpoint of the same run); validation loss before and after, the
    training stats, the loss curves in plots/."""
    checkpoints = Path(trainer.args.output_dir)
    show_progress(trainer, lab)
    metrics = {"val_loss_before": loss_before_training(trainer)}
    metrics |= train_resumable(trainer, checkpoints, card)
    metrics["val_loss"] = round(trainer.evaluate()["eval_loss"], 4)
    metrics |= gather_trained(trainer)
    save_curves(lab, trainer.state.log_history)
    finish_checkpoints(checkpoints)
    return metrics


def finetune(params: Section, cfg: TrainParams, lab: str, model, tokenizer, base: Path, peft_config=None,
             **overrides) -> tuple[SFTTrainer, dict, dict]:
    """Plain SFT of `model` on the sft task (through `peft_config` when given), for the labs whose method is
    something else (pruning's recovery, QAT, the adapters, distillation's hard-label control): the trainer,
    the metrics of `fit` and the run card."""
    train, val = sft_chats()
    trainer = SFTTrainer(model=model, args=chat_args(params, cfg, lab, base, **overrides), train_dataset=train,
                         eval_dataset=val, processing_class=tokenizer, peft_config=peft_config)
    card = run_card(lab, params, cfg)
    return trainer, fit(trainer, card, lab), card


def held_out_scores(model, tokenizer, params: Section) -> tuple[dict, list[str]]:
    """The fine-tuning labs' battery: held-out exact-match (and ROUGE-L on reference replies) and EOS rate of
    greedy answers, and what tuning cost the model's prose (perplexity on held-out pretraining text); with the
    answers themselves."""
    test = read_jsonl(PREPARED / "sft_test.jsonl", "sft")
    completions, ended = generate(model, tokenizer, [r["prompt"] for r in test],
                                  params.evaluate.max_new_tokens, params.evaluate.batch_size)
    corpus = [r["text"] for r in read_jsonl(PREPARED / "corpus_val.jsonl", "text")]
    scores = reference_scores(test, completions) | {"eos_rate": percent(ended),
                                                    "corpus_perplexity": perplexity(model, tokenizer, corpus)}
    return scores, completions


def held_out_answers(model, tokenizer, params: Section, name: str = "sft_test") -> tuple[list[dict], list[str]]:
    """The held-out test rows (data/prepared/`name`.jsonl) and `model`'s greedy completions of their prompts."""
    test = read_jsonl(PREPARED / f"{name}.jsonl", "sft")
    completions, _ = generate(model, tokenizer, [r["prompt"] for r in test],
                              params.evaluate.max_new_tokens, params.evaluate.batch_size)
    return test, completions


def identical(a: list[str], b: list[str]) -> float:
    """Percent of positions where two models gave the same answer."""
    return percent([x == y for x, y in zip(a, b, strict=True)])
