"""sft — supervised fine-tuning of the pretrained model with TRL's SFTTrainer, loss on completions only.

    just lab sft         # dvc repro sft  (runs data -> prepare -> tokenizer -> pretrain first if needed)
    dvc exp run -S sft.lr=3e-4

Each task-world pair becomes a one-turn chat (user: prompt, assistant: completion). The prompt's
tokens get label -100, so the model learns to answer and to end its turn with the EOS token, not to
predict questions. Full fine-tune: every weight trains (the PEFT labs train a few). The effect is
measured as validation loss before/after here and as held-out exact-match in `evaluate`.
"""

from __future__ import annotations

from pathlib import Path

from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from labs.core.config import Params
from labs.core.data import read_jsonl
from labs.core.evaluation import exact_match, generate, percent
from labs.core.models import load_model, load_tokenizer, require, trainer_kwargs
from labs.core.run import checkpoint_dir, finish_checkpoints, run_card, save_curves, save_model, train_resumable

PREPARED, BASE, OUT = Path("data/prepared"), Path("models/pretrain"), Path("models/sft")


def as_chat(rows: list[dict]) -> Dataset:
    """Contract rows -> TRL's conversational prompt-completion format (so the chat template applies)."""
    def turn(row):
        if "messages" in row:
            return {"prompt": row["messages"][:-1], "completion": row["messages"][-1:]}
        return {"prompt": [{"role": "user", "content": row["prompt"]}],
                "completion": [{"role": "assistant", "content": row["completion"]}]}
    return Dataset.from_list([turn(row) for row in rows])


def run(params: Params) -> dict:
    cfg = params.sft
    base = require(BASE, "config.json", "pretrain")
    tokenizer = load_tokenizer(base)
    model = load_model(base, cfg.precision, cfg.attn_implementation, training=True)

    train = as_chat(read_jsonl(PREPARED / "sft_train.jsonl", "sft"))
    val = as_chat(read_jsonl(PREPARED / "sft_val.jsonl", "sft"))
    checkpoints = checkpoint_dir("sft", params.model_dump(include={"seed", "tier", "sft"}),
                                 [PREPARED / "sft_train.jsonl", PREPARED / "sft_val.jsonl", base])
    args = SFTConfig(
        **trainer_kwargs(params, cfg, checkpoints),
        max_length=cfg.max_length,
        completion_only_loss=True,  # prompt tokens -> -100
        packing=False,  # one short chat per row; padding-free packing is 2-3x slower on CPU (shared/facts.md)
    )
    card = run_card("sft", params, cfg)  # saved with every checkpoint and with the final model
    trainer = SFTTrainer(model=model, args=args, train_dataset=train, eval_dataset=val,
                         processing_class=tokenizer)

    metrics = {"val_loss_before": round(trainer.evaluate()["eval_loss"], 4)}
    metrics |= train_resumable(trainer, checkpoints, card)
    metrics["val_loss"] = round(trainer.evaluate()["eval_loss"], 4)

    test = read_jsonl(PREPARED / "sft_test.jsonl", "sft")
    completions, ended = generate(trainer.model, tokenizer, [r["prompt"] for r in test],
                                  params.evaluate.max_new_tokens, params.evaluate.batch_size)
    metrics["exact_match"] = exact_match(test, completions)
    metrics["eos_rate"] = percent(ended)

    save_model(trainer.model, tokenizer, OUT, card)
    save_curves("sft", trainer.state.log_history)
    finish_checkpoints(checkpoints)
    print(f"sft: val loss {metrics['val_loss_before']} -> {metrics['val_loss']}; "
          f"held-out exact-match {metrics['exact_match']}")
    return metrics
