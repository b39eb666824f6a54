"""distill — knowledge distillation of the SFT model (teacher) into a student with ~14x fewer parameters.

    just lab distill
    dvc exp run -S distill.alpha=0.9 -S distill.temperature=4
    dvc exp run -S distill.student.num_layers=1

Soft-label KD (Hinton et al., 2015): the student learns the teacher's whole next-token distribution, not
only the one right token. Per answer token,
    loss = alpha * T^2 * KL(p_teacher,T || p_student,T) + (1 - alpha) * CE(student, gold token)
where p_.,T is softmax(logits / T); T > 1 shows the student how the teacher ranks the wrong tokens too, and
T^2 keeps that term's gradients on the CE's scale. TRL's GKDTrainer computes a generalized JSD with no CE
term and no T^2 factor, and trl.DistillationTrainer is on-policy only, so this loss is a
short `compute_loss` on TRL's SFTTrainer (the same data, masking and schedule as `sft`).

The student (same tokenizer; `distill.student` shape, or `student_model` on GPU tiers) is first pretrained
on the corpus like the teacher was, then fine-tuned twice from that same start: with the loss above
(models/distill/student) and with alpha = 0, hard labels only (models/distill/hard_labels): the control.
Metrics: each model's parameters, held-out exact-match, validation loss, greedy tokens/s (measured side by
side in this process), and the student's share of the teacher's exact-match.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from pydantic import Field
from trl import SFTTrainer

from labs.core.config import SEED, ConfigError, ModelShape, Section, Seed, Tier, TrainParams, view
from labs.core.data import read_jsonl
from labs.core.evaluation import MeasureParams, decoding_speeds, exact_match, share_pct
from labs.core.models import build_llama, count_parameters, load_model, load_tokenizer, require
from labs.core.run import atomic_path, run_card, save_model
from labs.core.train import (
    PREPARED,
    chat_args,
    finetune,
    fit,
    held_out_answers,
    held_out_scores,
    sft_chats,
    train_on_corpus,
)


class StudentPretrainParams(TrainParams):
    """The distilled student's own pretraining on the corpus, before either fine-tune."""

    max_length: int = Field(256, gt=0)
    """tokens per packed pretraining row"""
    batch_size: int = Field(8, gt=0)  # the teacher's pretraining recipe
    """rows per pretraining step"""
    epochs: float = Field(5, gt=0)
    """passes over the corpus"""
    lr: float = Field(3e-3, gt=0)
    """peak pretraining learning rate"""


class StudentShape(ModelShape):
    """The student: 2 layers, 64 wide (a multiple of 64: bitsandbytes' CPU 4-bit blocks are 64 weights)."""

    hidden_size: int = Field(64, gt=0)
    num_layers: int = Field(2, gt=0)
    intermediate_size: int = Field(256, gt=0)


class DistillParams(TrainParams):
    """Knowledge distillation from the SFT model (teacher) into a smaller student of the same tokenizer."""

    # null: a Llama of `student` shape built here; a hub id or local directory: that model (same tokenizer)
    student_model: str | None = None
    """null: a Llama of `student` shape pretrained here; else a hub id or local directory"""
    student: StudentShape = StudentShape()
    """shape of the student built from scratch"""
    pretrain: StudentPretrainParams = StudentPretrainParams()
    """the student's own pretraining on the corpus, before distillation"""
    temperature: float = Field(2.0, gt=0)
    """softens both distributions; the soft term is scaled by T^2"""
    alpha: float = Field(0.5, ge=0, le=1)
    """weight of the soft-label term; 1 - alpha goes to the hard labels"""
    max_length: int = Field(128, gt=0)  # the fine-tune: sft's data and schedule
    batch_size: int = Field(16, gt=0)
    epochs: float = Field(4, gt=0)
    lr: float = Field(2e-3, gt=0)


# the keys of the evaluate section this lab's held-out measurements use
Measurement = view(MeasureParams, "max_new_tokens", "batch_size", "precision", "speed_prompts", "speed_rounds")


class Params(Section):
    """What distill reads from params.yaml."""

    seed: Seed = SEED
    tier: Tier = "cpu"
    distill: DistillParams = DistillParams()
    evaluate: Measurement = Measurement()


TEACHER, OUT = Path("models/sft"), Path("models/distill")


class SoftLabelTrainer(SFTTrainer):
    """SFTTrainer whose training loss mixes the teacher's soft labels (at temperature T) with the gold ones.
    Evaluation returns the plain CE, so validation losses compare with the hard-label student's."""

    def __init__(self, *args, teacher, temperature: float, alpha: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.teacher = teacher.to(self.args.device).eval()
        self.temperature, self.alpha = temperature, alpha

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        ids, attention = inputs["input_ids"], inputs["attention_mask"]
        outputs = model(input_ids=ids, attention_mask=attention, use_cache=False)
        answer = inputs["labels"][:, 1:] != -100  # next-token positions inside the answers
        student = outputs.logits[:, :-1][answer]
        ce = F.cross_entropy(student, inputs["labels"][:, 1:][answer])
        if not model.training:
            return (ce, outputs) if return_outputs else ce
        with torch.no_grad():
            teacher = self.teacher(input_ids=ids, attention_mask=attention, use_cache=False).logits[:, :-1][answer]
        t = self.temperature
        soft = F.kl_div(F.log_softmax(student / t, -1), F.log_softmax(teacher / t, -1), log_target=True,
                        reduction="batchmean") * t * t
        loss = self.alpha * soft + (1 - self.alpha) * ce
        return (loss, outputs) if return_outputs else loss


def build_student(params: Params, tokenizer):
    cfg = params.distill
    if cfg.student_model:
        return load_model(cfg.student_model, cfg.precision, cfg.attn_implementation, training=True)
    return build_llama(cfg.student, tokenizer, cfg.attn_implementation)


def run(params: Params) -> dict:
    cfg = params.distill
    teacher_dir = require(TEACHER, "config.json", "sft")
    tokenizer = load_tokenizer(teacher_dir)
    teacher = load_model(teacher_dir, params.evaluate.precision)
    student = build_student(params, tokenizer)
    if student.config.vocab_size != teacher.config.vocab_size:
        raise ConfigError(f"params.yaml: distill.student_model: vocabulary of {student.config.vocab_size} tokens, "
                         f"expected the teacher's {teacher.config.vocab_size} (the same tokenizer)")
    print(f"distill: teacher {count_parameters(teacher):,} parameters, student {count_parameters(student):,}")

    metrics = {}
    with atomic_path(OUT) as tmp:
        # 1. The student's own pretraining on the corpus: both fine-tunes below start from it.
        trainer, pretrained, card = train_on_corpus(params, cfg.pretrain, "distill/pretrain", student, tokenizer,
                                                    [teacher_dir], cfg.pretrain.max_length)
        save_model(trainer.model, tokenizer, tmp / "pretrained", card)
        metrics["student_pretrain"] = pretrained
        # 2. Fine-tune on the sft task: with the teacher's soft labels, and on hard labels only (the control).
        runs = ("student", "hard_labels")
        for name in runs:
            model = load_model(tmp / "pretrained", cfg.precision, cfg.attn_implementation, training=True)
            if name == "student":  # the method: the teacher's softened distribution as the target
                train, val = sft_chats()
                # nll: TRL's default chunked loss computes no logits, which the soft-label loss needs
                args = chat_args(params, cfg, "distill/student", tmp / "pretrained", loss_type="nll")
                trainer = SoftLabelTrainer(model=model, args=args, train_dataset=train, eval_dataset=val,
                                           processing_class=tokenizer, teacher=teacher,
                                           temperature=cfg.temperature, alpha=cfg.alpha)
                card = run_card("distill/student", params, cfg)
                result = fit(trainer, card, "distill/student")
            else:  # the control: the same student and schedule on the gold tokens alone
                trainer, result, card = finetune(params, cfg, "distill/hard_labels", model, tokenizer,
                                                 tmp / "pretrained")
            result |= held_out_scores(trainer.model, tokenizer, params)[0]
            save_model(trainer.model, tokenizer, tmp / name, card)
            metrics[name] = result | {"parameters": count_parameters(model)}

    # Greedy decoding speed of teacher and students, side by side, from the saved weights.
    prompts = [r["prompt"] for r in read_jsonl(PREPARED / "sft_test.jsonl", "sft")][:params.evaluate.speed_prompts]
    models = {"teacher": teacher, **{name: load_model(OUT / name, params.evaluate.precision) for name in runs}}
    speeds = decoding_speeds(models, tokenizer, prompts, params.evaluate.max_new_tokens,
                             (1, params.evaluate.batch_size), params.evaluate.speed_rounds)
    teacher_em = exact_match(*held_out_answers(teacher, tokenizer, params))
    metrics["teacher"] = {"parameters": count_parameters(teacher), "exact_match": teacher_em,
                          "tokens_per_s": speeds["teacher"]}
    for name in runs:
        m = metrics[name]
        m["tokens_per_s"] = speeds[name]
        m["speedup"] = {k: round(v / speeds["teacher"][k], 2) for k, v in speeds[name].items()}
        m["parameter_ratio"] = round(metrics["teacher"]["parameters"] / m["parameters"], 2)
        m["quality_pct"] = share_pct(m["exact_match"]["overall"], teacher_em["overall"])
    metrics["kd_minus_hard_labels"] = round(metrics["student"]["exact_match"]["overall"]
                                            - metrics["hard_labels"]["exact_match"]["overall"], 2)
    metrics["loss"] = {"temperature": cfg.temperature, "alpha": cfg.alpha}
    s = metrics["student"]
    print(f"distill: student {s['parameter_ratio']}x fewer parameters, {s['speedup']} x faster, exact-match "
          f"{s['exact_match']['overall']} ({s['quality_pct']}% of the teacher's {teacher_em['overall']}); "
          f"hard labels only: {metrics['hard_labels']['exact_match']['overall']}")
    return metrics

