"""Compression labs on the tiny project that `built` made through `dvc repro`: distill, prune, quantize (and
the compression table it measures). Each asserts the direction of its effect; the soft-label loss itself is
unit-tested on a tiny random model."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from tests.conftest import lab

ROWS = ["fp32", "int8", "nf4", "dynamic_int8", "torchao_int8", "torchao_int4", "qat_int4", "gguf_f16", "gguf_q8_0",
        "gguf_q4_0", "pruned 70pct", "distilled", "distilled + int8", "distilled + nf4"]


def load(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.mark.slow
def test_distilled_student_is_smaller_and_learns_the_task(built):
    distill = load(built / "metrics/distill.json")
    teacher, student, hard = distill["teacher"], distill["student"], distill["hard_labels"]
    assert student["parameters"] == hard["parameters"] and student["parameter_ratio"] >= 3
    for run in (student, hard):
        assert run["val_loss"] < 0.5 * run["val_loss_before"], run
        # measured here: both students ~half the teacher's 41 after 4 epochs (the base scores 0)
        assert run["exact_match"]["overall"] >= 0.3 * teacher["exact_match"]["overall"], "it answers, not only shrinks"
        assert set(run["tokens_per_s"]) == {"batch_1", "batch_64"} and run["tokens_per_s"]["batch_1"] > 0
    assert distill["kd_minus_hard_labels"] == pytest.approx(
        student["exact_match"]["overall"] - hard["exact_match"]["overall"], abs=0.01)
    assert student["quality_pct"] == pytest.approx(
        100 * student["exact_match"]["overall"] / teacher["exact_match"]["overall"], abs=0.1)
    for name in ("pretrained", "student", "hard_labels"):
        assert (built / "models/distill" / name / "model.safetensors").exists()


def test_soft_label_loss_is_ce_at_alpha_0_and_zero_kl_against_itself(tmp_path):
    """The distill lab's loss: alpha = 0 is the plain CE on answer tokens; a student identical to its teacher
    has zero soft-label term, so alpha = 1 gives 0."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from labs.distill import SoftLabelTrainer

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                         num_key_value_heads=2, intermediate_size=32))
    ids = torch.randint(0, 32, (2, 10))
    labels = ids.clone()
    labels[:, :4] = -100  # the prompt
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    ce = model(input_ids=ids, labels=labels).loss

    def loss(alpha, teacher):
        trainer = SoftLabelTrainer.__new__(SoftLabelTrainer)  # compute_loss alone: no data, no Trainer setup
        trainer.teacher, trainer.temperature, trainer.alpha = teacher, 2.0, alpha
        model.train()
        return trainer.compute_loss(model, dict(inputs)).item()

    assert loss(0.0, model) == pytest.approx(ce.item(), rel=1e-5)
    assert loss(1.0, model) == pytest.approx(0.0, abs=1e-6)
    other = LlamaForCausalLM(model.config)
    assert loss(1.0, other) > 1e-4, "a different teacher: a positive soft-label term"


@pytest.mark.slow
def test_pruning_reaches_its_sparsity_and_recovery_helps(built):
    prune = load(built / "metrics/prune.json")
    assert prune["kind"] == "unstructured" and list(prune["sparsities"]) == ["70pct"]
    pruned = prune["sparsities"]["70pct"]
    assert pruned["sparsity_pct"] == pytest.approx(70, abs=0.5)
    assert pruned["exact_match"]["overall"] >= pruned["exact_match_before_recovery"]["overall"] + 5
    from safetensors.torch import load_file

    weights = load_file(built / "models/prune/70pct/model.safetensors")
    linear = weights["model.layers.0.mlp.up_proj.weight"]
    assert 0.3 < float((linear == 0).float().mean()) < 1, "the zeros are in the saved weights"


@pytest.mark.slow
def test_compression_table_measures_every_row(built):
    quantize = load(built / "metrics/quantize.json")
    rows = {row["name"]: row for row in quantize["rows"]}
    assert [row["name"] for row in quantize["rows"]] == ROWS
    fp32 = rows["fp32"]
    assert fp32["quality_pct"] == 100 and fp32["memory_ratio"] == 1
    assert rows["int8"]["memory_ratio"] <= 0.5 and rows["int8"]["perplexity_change_pct"] <= 2
    assert rows["nf4"]["memory_ratio"] <= 0.3 and rows["nf4"]["perplexity_change_pct"] <= 5
    assert rows["torchao_int8"]["memory_ratio"] <= 0.5 and rows["dynamic_int8"]["memory_ratio"] <= 0.5
    assert rows["int8"]["disk_mb"] < 0.5 * fp32["disk_mb"] and rows["dynamic_int8"]["disk_mb"] is None
    assert rows["distilled"]["parameters"] * 3 <= fp32["parameters"]
    assert rows["distilled + nf4"]["memory_mb"] < rows["distilled"]["memory_mb"] < fp32["memory_mb"]
    assert rows["pruned 70pct"]["nonzero_parameters"] < 0.5 * fp32["nonzero_parameters"]
    for name, row in rows.items():
        assert row["tokens_per_s"]["batch_1"] > 0 and row["exact_match"]["overall"] > 0, f"{name} still answers"
    assert quantize["qat"]["train_time_s"] > 0
    # GGUF in llama.cpp's runtime: its tokenizer splits every prompt as ours, q4_0 < q8_0 < f16 on disk, and the
    # answers survive (measured here: 92.5 / 92.5 / 92.25 EM against fp32's 92.5 on the full curriculum)
    gguf = [rows[f"gguf_{kind}"] for kind in ("f16", "q8_0", "q4_0")]
    assert all(row["tokenizer_agreement_pct"] == 100 for row in gguf)
    assert gguf[2]["disk_mb"] < gguf[1]["disk_mb"] < gguf[0]["disk_mb"] < fp32["disk_mb"]
    assert gguf[0]["perplexity_change_pct"] <= 1 and gguf[1]["perplexity_change_pct"] <= 2
    for row in gguf:
        assert row["quality_pct"] >= 90 and row["tokens_per_s"]["batch_64"] is None, row
        assert (built / "models/quantize" / row["method"] / f"model-{row['method'][5:]}.gguf").exists()
    table = (built / "plots/quantize/table.csv").read_text().splitlines()
    assert len(table) == 1 + len(ROWS) and table[1].startswith("fp32,")


@pytest.mark.slow
@pytest.mark.long(28)
def test_one_method_is_one_param_and_gpu_methods_fail_clearly_on_cpu(built, tmp_path):
    for part in ("labs", "params.yaml", "data/prepared", "models/sft", "models/distill", "metrics"):
        copy = shutil.copytree if (built / part).is_dir() else shutil.copy
        (tmp_path / part).parent.mkdir(parents=True, exist_ok=True)
        copy(built / part, tmp_path / part)
    lab("quantize", "-S", "quantize.method=nf4", "-S", "quantize.models=[sft]", "-S", "evaluate.speed_rounds=1",
        cwd=tmp_path)
    assert [row["name"] for row in load(tmp_path / "metrics/quantize.json")["rows"]] == ["fp32", "nf4"]
    before = (tmp_path / "metrics/quantize.json").read_bytes()
    gptq = lab("quantize", "-S", "quantize.method=gptq", cwd=tmp_path, check=False)
    assert gptq.returncode == 2 and "quantize.method: gptq needs a CUDA GPU" in gptq.stderr
    assert len(gptq.stderr.strip().splitlines()) == 1, gptq.stderr
    assert (tmp_path / "metrics/quantize.json").read_bytes() == before
    assert (tmp_path / "models/quantize/nf4/model.safetensors").exists()
    no_converter = lab("quantize", "-S", "quantize.method=gguf_q8_0", cwd=tmp_path, check=False,
                       env={"LLAMA_CPP_DIR": str(tmp_path / "absent")})
    assert no_converter.returncode == 2 and "converter is missing; `just llama-cpp`" in no_converter.stderr
    assert (tmp_path / "metrics/quantize.json").read_bytes() == before
