"""objectives: its two pieces of our own (span corruption, the prefix LM's mask) on their own, ELECTRA's pair on
one batch, bad params, and the lab on the tiny project that `built` made."""

import contextlib
import hashlib
import json
import random
import subprocess
import sys
import time

import psutil
import pytest
import torch

from labs.core.config import ModelShape
from labs.objectives import (
    SENTINELS,
    Electra,
    PrefixLMCollator,
    SpanCorruptionCollator,
    causal,
    prefix_mask,
    table,
)
from tests.conftest import lab, lab_env


class Vocab:
    """The few tokenizer attributes the collators and models read: ids 0-1 special, 2-99 text, then the rest."""

    pad_token_id, eos_token_id, mask_token_id = 0, 1, 100

    def __len__(self):
        return 101 + len(SENTINELS)

    def convert_tokens_to_ids(self, tokens):
        return [101 + SENTINELS.index(token) for token in tokens]


SHAPE = ModelShape(hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=2, intermediate_size=64,
                   max_position_embeddings=64)


def test_span_corruption_hides_spans_behind_sentinels_and_the_target_restores_them():
    vocab, rng = Vocab(), random.Random(0)
    blocks = [[rng.randrange(2, 100) for _ in range(60)] for _ in range(4)]
    batch = SpanCorruptionCollator(vocab, density=0.15, mean_span=3.0, seed=1)([{"input_ids": b} for b in blocks])
    for block, inputs, labels in zip(blocks, batch["input_ids"].tolist(), batch["labels"].tolist(), strict=True):
        inputs = [t for t in inputs if t != vocab.pad_token_id]
        target = [t for t in labels if t != -100]
        assert inputs[-1] == target[-1] == vocab.eos_token_id
        hidden, span, restored = {}, None, []
        for token in target[:-1]:
            if token > 100:
                span = hidden.setdefault(token, [])
            else:
                span.append(token)
        for token in inputs[:-1]:
            restored += hidden[token] if token > 100 else [token]
        assert restored == block, "the input with each sentinel replaced by its span is the block"
        assert sum(map(len, hidden.values())) == 9, "15% of 60 tokens hidden"
        assert all(hidden.values()) and 1 < len(hidden) < 9, "in several non-empty spans, not one or all apart"
        assert len(inputs) == 60 - 9 + len(hidden) + 1


def test_prefix_lm_reads_its_prefix_both_ways_and_predicts_the_rest_left_to_right():
    collator = PrefixLMCollator(seed=3)
    ids = [[random.Random(i).randrange(2, 100) for _ in range(12)] for i in range(6)]
    batch = collator([{"input_ids": row} for row in ids])
    splits = [(row == -100).sum().item() for row in batch["labels"]]
    assert all(1 <= split <= 11 for split in splits) and len(set(splits)) > 1, "a random split per block"
    for split, labels, mask in zip(splits, batch["labels"], batch["attention_mask"][:, 0], strict=True):
        assert (labels[:split] == -100).all() and (labels[split:] != -100).all(), "loss on the suffix only"
        expected = torch.tensor([[j <= i or j < split for j in range(12)] for i in range(12)])
        assert torch.equal(mask, expected)
    torch.manual_seed(0)
    model = causal(SHAPE, Vocab()).eval()
    row = next(i for i, split in enumerate(splits) if 3 <= split <= 8)
    split, ids, mask = splits[row], batch["input_ids"][row:row + 1], batch["attention_mask"][row:row + 1]

    def logits_after_changing(position: int) -> tuple[torch.Tensor, torch.Tensor]:
        changed = ids.clone()
        changed[0, position] = 7 if changed[0, position] != 7 else 8
        with torch.no_grad():
            return model(input_ids=ids, attention_mask=mask).logits[0], \
                model(input_ids=changed, attention_mask=mask).logits[0]

    before, after = logits_after_changing(split - 1)  # the prefix's last token
    assert not torch.allclose(before[0], after[0]), "the prefix's first position sees its last token"
    before, after = logits_after_changing(split + 2)  # a token of the part predicted left to right
    assert torch.allclose(before[:split + 2], after[:split + 2]), "no position sees a later token of the rest"
    unmasked = prefix_mask(torch.ones(1, 12), torch.tensor([12]))
    assert unmasked.all(), "a split at the end is a bidirectional encoder (the probe's mask)"


def test_electra_replaces_only_masked_tokens_and_trains_generator_and_discriminator_on_one_loss():
    vocab = Vocab()
    torch.manual_seed(0)
    model = Electra(SHAPE, vocab, generator_layers=1, weight=50.0)
    assert model.generator.model.embeddings.tok_embeddings is model.discriminator.model.embeddings.tok_embeddings
    ids = torch.randint(2, 100, (8, 40), generator=torch.Generator().manual_seed(0))
    chosen = torch.rand(ids.shape, generator=torch.Generator().manual_seed(1)) < 0.15
    batch = {"input_ids": torch.where(chosen, vocab.mask_token_id, ids), "labels": torch.where(chosen, ids, -100)}
    masked = (batch["labels"] != -100).float().mean().item()
    out = model(batch["input_ids"], torch.ones_like(batch["input_ids"]), batch["labels"])
    assert 0 < model.last["replaced"] <= masked, "only masked positions can be replaced"
    assert out["loss"].item() == pytest.approx(out["generator_loss"].item() + 50 * out["discriminator_loss"].item(),
                                               rel=1e-5)
    out["loss"].backward()
    assert model.generator.model.layers[0].attn.Wqkv.weight.grad.abs().sum() > 0
    assert model.discriminator.model.layers[0].attn.Wqkv.weight.grad.abs().sum() > 0


def test_a_budget_under_one_batch_is_one_line_and_writes_nothing(workspace):
    proc = lab("objectives", "-S", "objectives.tokens=100", cwd=workspace, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: params.yaml: objectives.tokens: 100 is less than one batch of 16 x 128 tokens"
    assert not (workspace / "models/objectives").exists() and not (workspace / "metrics/objectives.json").exists()


@pytest.mark.slow
def test_every_objective_pretrains_on_the_same_tokens_then_the_same_probe(built):
    metrics = json.loads((built / "metrics/objectives.json").read_text())
    rows = metrics["objectives"]
    assert sorted(rows) == ["clm", "electra", "mlm", "prefix", "scratch_llama", "scratch_modernbert", "scratch_t5",
                            "span"], "every objective, and each model family's untrained floor"
    trained = {name: row for name, row in rows.items() if not name.startswith("scratch")}
    assert {row["tokens"] for row in trained.values()} == {metrics["tokens"]} and metrics["tokens"] > 0
    for name, row in trained.items():
        assert row["last_loss"] < 0.8 * row["first_loss"], f"{name} learns"
    electra = rows["electra"]["electra"]
    assert 0 < electra["replaced"] <= electra["masked"], "a masked token the generator got right is not replaced"
    assert electra["discriminator_loss"] < electra["prior_loss"], "the discriminator learns more than the share"
    for name, row in rows.items():
        assert set(row["accuracy"]) == {str(share) for share in metrics["label_shares"]}
        assert all(len(seeds) == len(metrics["seeds"]) for seeds in row["accuracy"].values()), name
        assert (built / "models/objectives" / name / "model.safetensors").exists()
    head, table_rows = table(metrics)
    assert [row[:2] for row in table_rows] == [
        ["scratch_llama", "Llama"], ["scratch_modernbert", "ModernBERT"], ["scratch_t5", "T5"], ["clm", "Llama"],
        ["prefix", "Llama"], ["mlm", "ModernBERT"], ["span", "T5"], ["electra", "ModernBERT"]]
    assert all(rows[name]["tokens"] == 0 for name in rows if name.startswith("scratch"))


def comparable(metrics: dict) -> dict:
    """A metrics file without what depends on the clock or the host."""
    metrics = {key: value for key, value in metrics.items() if key != "run"}
    metrics["objectives"] = {name: {k: v for k, v in row.items() if k != "pretrain_s"}
                             for name, row in metrics["objectives"].items()}
    return metrics


@pytest.mark.slow
def test_at_two_threads_the_objectives_run_side_by_side_to_the_one_thread_results_and_die_with_the_lab(built_copy):
    """At two threads each objective is a job in one of two one-thread processes (`side_by_side`): every number and
    every saved body is what the one-thread build computed with the jobs one after another in the lab's process.
    A kill -9 of the lab while its workers run leaves none of them behind."""
    def digests() -> dict:
        return {path.parent.name: hashlib.sha256(path.read_bytes()).hexdigest()
                for path in (built_copy / "models/objectives").glob("*/model.safetensors")}

    one_thread, bodies = json.loads((built_copy / "metrics/objectives.json").read_text()), digests()
    two = {"LAB_THREADS": "2"}
    killed = subprocess.Popen([sys.executable, "-m", "labs", "objectives"], cwd=built_copy, env=lab_env(two),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lab_process, deadline = psutil.Process(killed.pid), time.time() + 120

    def workers() -> int:
        count = 0
        for child in lab_process.children():
            with contextlib.suppress(psutil.Error):  # a short-lived child (git, for the run block) may be gone
                count += "spawn_main" in " ".join(child.cmdline())
        return count

    while workers() < 2:
        assert killed.poll() is None and time.time() < deadline, "the lab started no two workers"
        time.sleep(0.2)
    children = lab_process.children(recursive=True)
    killed.kill()
    killed.wait()
    assert not psutil.wait_procs(children, timeout=30)[1], "a worker outlived the lab"
    assert digests() == bodies, "a killed run leaves the outputs as they were"

    lab("objectives", cwd=built_copy, env=two)
    assert comparable(json.loads((built_copy / "metrics/objectives.json").read_text())) == comparable(one_thread)
    assert digests() == bodies
