"""scale — the sft task trained by several processes at once: DDP, FSDP2 and DeepSpeed ZeRO-2 / ZeRO-3 against one
process, on the same rows in the same order.

    just lab scale                                  # dvc repro scale
    dvc exp run -S scale.procs=4 -S 'scale.strategies=[ddp,zero3]'
    just scale-node 2 0 127.0.0.1:29500             # one of two nodes (a second shell: node rank 1)

Each strategy runs as `torchrun --nproc-per-node procs -m labs.scale.worker` (processes on CPU, talking over gloo;
placing them on GPUs with NCCL is not wired yet). Every process takes `batch_size` rows of each step's global
batch; the one-process run takes all procs x batch_size. Same rows, same summed token loss, same optimizer: the
loss curves agree to float rounding (the same sums in another order) until training amplifies it (`agree_steps`,
then the runs go their own ways), and the table shows what differs, which is where the model's state lives: per
process, the parameter storage and the optimizer's moments it holds (ZeRO-2 shards the moments, FSDP2 and ZeRO-3
the parameters too) and its peak resident memory. Each run's model is saved whole on rank 0 as a plain transformers
directory (models/scale/<strategy>) and evaluated here in one process: held-out exact-match and the share of
answers identical to the one-process model's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Literal

from pydantic import Field

from labs.core.config import SEED, Section, Seed, Tier, view
from labs.core.evaluation import MeasureParams, exact_match
from labs.core.models import load_model, load_tokenizer, require
from labs.core.run import atomic_path, default_threads, save_curves
from labs.core.train import held_out_answers, identical

BASE, OUT = Path("models/pretrain"), Path("models/scale")
STRATEGIES = ("single", "ddp", "fsdp2", "zero2", "zero3")  # single: the one-process run the others compare with
LOSS_AGREEMENT = 1e-3  # a loss gap above this is more than the rounding of one step's sums


class ScaleParams(Section):
    """Data-parallel training of the sft task, each strategy against one process on the same rows."""

    procs: int = Field(2, ge=2)
    """processes of each data-parallel run (this machine's two cores: one thread each)"""
    strategies: list[Literal["ddp", "fsdp2", "zero2", "zero3"]] = Field(["ddp", "fsdp2", "zero2", "zero3"],
                                                                         min_length=1)
    """the data-parallel strategies, each run against the one-process run"""
    batch_size: int = Field(8, gt=0)
    """rows per process per step; the one-process run takes procs x batch_size"""
    max_steps: int = Field(300, gt=0)
    """optimizer steps of every run (a sixth of sft's schedule: enough for exact-match to compare)"""
    lr: float = Field(2e-3, gt=0)
    """peak learning rate (sft's)"""
    lr_scheduler: str = "cosine"
    """transformers' schedule name"""
    warmup_steps: int = Field(20, ge=0)
    """steps of linear warm-up"""
    max_grad_norm: float = Field(1.0, gt=0)
    """gradients clipped to this norm over the whole model (the Trainer's default, and DeepSpeed's)"""
    max_length: int = Field(128, gt=0)
    """tokens per chat at most (the longest is 49)"""
    logging_steps: int = Field(25, gt=0)
    """steps between progress lines"""
    save_steps: int = Field(100, gt=0)
    """steps between checkpoints, from which a killed run resumes under the same strategy and processes"""
    timeout_s: int = Field(1800, gt=0)
    """a run that takes longer is stopped (a peer that died leaves the others waiting on it)"""


# the keys of the evaluate section the held-out answers use
Measurement = view(MeasureParams, "max_new_tokens", "batch_size")


class Params(Section):
    """What scale reads from params.yaml."""

    seed: Seed = SEED
    tier: Tier = "cpu"
    scale: ScaleParams = ScaleParams()
    evaluate: Measurement = Measurement()


def launch(params: Params, strategy: str, out: Path, reports: Path) -> list[dict]:
    """Train with `strategy` in its own processes; each rank's report (losses, memory, speed)."""
    from labs.scale import worker  # here, not at the top: `python -m labs.scale.worker` imports this package first

    procs = 1 if strategy == "single" else params.scale.procs
    # torchrun: a rendezvous on a free local port, one process per rank
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}"] if procs > 1 else []
    run = [sys.executable, *launcher, "-m", worker.__name__, "--strategy", strategy, "--out", str(out),
           "--reports", str(reports), "--config", params.model_dump_json()]
    threads = str(max(1, default_threads() // procs))  # the cores shared out, not oversubscribed
    env = os.environ | {"LAB_THREADS": threads, "OMP_NUM_THREADS": threads}
    try:
        done = subprocess.run(run, env=env, timeout=params.scale.timeout_s)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"scale: the {strategy} run took over scale.timeout_s={params.scale.timeout_s}") from None
    if done.returncode != 0:
        raise RuntimeError(f"scale: the {strategy} run exited {done.returncode} (its output is above)")
    return [json.loads(path.read_text()) for path in sorted(reports.glob("rank*.json"))]


def summarize(ranks: list[dict], baseline: list[float]) -> dict:
    """One strategy's row: world size, the loss curve against the one-process run's, memory and speed per rank.
    The curves part by float rounding at first (the same sums in another order); training amplifies that, so
    `agree_steps` counts the steps before they first part by more than LOSS_AGREEMENT."""
    losses = ranks[0]["losses"]
    gaps = [abs(a - b) for a, b in zip(losses, baseline, strict=True)]
    return {
        "world_size": ranks[0]["world_size"],
        "final_loss": losses[-1],
        "max_loss_gap": round(max(gaps), 6),
        "agree_steps": next((step for step, gap in enumerate(gaps) if gap > LOSS_AGREEMENT), len(gaps)),
        "tokens_per_s": round(sum(rank["tokens_per_s"] for rank in ranks), 1),
        "train_time_s": max(rank["train_time_s"] for rank in ranks),
        **{key: [rank[key] for rank in ranks] for key in ("peak_rss_mb", "parameters_mb", "optimizer_state_mb")},
    }


def run(params: Params) -> dict:
    cfg = params.scale
    tokenizer = load_tokenizer(require(BASE, "config.json", "pretrain"))
    table, curves, answers = {}, {}, {}
    with atomic_path(OUT) as models, tempfile.TemporaryDirectory() as scratch:
        for strategy in ["single", *cfg.strategies]:
            ranks = launch(params, strategy, models / strategy, Path(scratch) / strategy)
            curves[strategy] = ranks[0]["losses"]
            table[strategy] = summarize(ranks, curves["single"])
            test, answers[strategy] = held_out_answers(load_model(models / strategy), tokenizer, params)
            table[strategy] |= {"exact_match": exact_match(test, answers[strategy])["overall"],
                                "same_answers": identical(answers[strategy], answers["single"])}
    history = [{"step": step, **{name: curve[step - 1] for name, curve in curves.items()}}
               for step in range(1, cfg.max_steps + 1)]
    save_curves("scale", history, {name: f"loss/{name}" for name in curves})

    print(f"scale: {cfg.procs} processes x {cfg.batch_size} rows against 1 x {cfg.procs * cfg.batch_size}, "
          f"{cfg.max_steps} steps")
    print(f"{'strategy':<8} {'procs':>5} {'agree':>5} {'loss gap':>9} {'EM':>6} {'same':>6} {'params MB':>10}"
          f" {'moments MB':>11} {'peak RSS MB':>12} {'tok/s':>7}")
    for name, row in table.items():
        print(f"{name:<8} {row['world_size']:>5} {row['agree_steps']:>5} {row['max_loss_gap']:>9.2g} "
              f"{row['exact_match']:>6} {row['same_answers']:>6} {max(row['parameters_mb']):>10} "
              f"{max(row['optimizer_state_mb']):>11} {max(row['peak_rss_mb']):>12} {row['tokens_per_s']:>7}")
    return {"procs": cfg.procs, "batch_size_per_process": cfg.batch_size, "steps": cfg.max_steps,
            "strategies": table}
