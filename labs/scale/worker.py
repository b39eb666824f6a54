"""One process of a data-parallel run of the sft task: what `torchrun` starts on every rank.

    torchrun --standalone --nproc-per-node 2 -m labs.scale.worker --strategy zero3 --out OUT --reports DIR
    just scale-node 2 0 127.0.0.1:29500     # node 0 of 2; `just scale-node 2 1 127.0.0.1:29500` on node 1

Every strategy runs the same loop on the same data: step s takes global batch s of one seeded order and rank r
its r-th slice, so `procs` processes of `batch_size` rows see exactly the rows one process of procs x batch_size
rows sees. Each process's loss is its answer tokens' summed loss over the global batch's answer-token count
(times the world size, which the gradient averaging divides out), so the gradient does not depend on how the
rows were split. What differs is where the model's state lives (see `engine`).

The loop calls the engines directly (torch's DistributedDataParallel and fully_shard, DeepSpeed's engine):
accelerate, through which TRL's trainers reach them, enables FSDP and DeepSpeed only on GPU-class devices. On
CPU it runs an FSDP config as plain DDP without a word, and a ZeRO config fails DeepSpeed's batch-size check
(accelerate counts one process). The saved model is a plain transformers directory whatever the strategy.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
import warnings
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import get_scheduler
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from labs.core.config import ConfigError, load_params
from labs.core.data import DataError, read_jsonl
from labs.core.models import load_model, load_tokenizer, require
from labs.core.run import (
    checkpoint_dir,
    finish_checkpoints,
    process_peak_mb,
    run_card,
    save_model,
    seed_everything,
    write_json,
)
from labs.core.train import PREPARED
from labs.scale import BASE, STRATEGIES, Params


def tokenized_chats(tokenizer, max_length: int) -> list[dict]:
    """The sft task's training chats as input ids and labels, -100 outside the answer: the chat template's
    generation marks say which tokens are the assistant's (TRL's assistant-only loss reads the same marks)."""
    rows = []
    for row in read_jsonl(PREPARED / "sft_train.jsonl", "sft"):
        chat = [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["completion"]}]
        encoded = tokenizer.apply_chat_template(chat, return_dict=True, return_assistant_tokens_mask=True)
        ids, answer = encoded["input_ids"][:max_length], encoded["assistant_masks"][:max_length]
        rows.append({"input_ids": ids, "labels": [t if a else -100 for t, a in zip(ids, answer, strict=True)]})
    return rows


def global_batches(n_rows: int, batch: int, steps: int, seed: int):
    """Row indices of each step's global batch: a seeded shuffle per pass over the rows."""
    generator = torch.Generator().manual_seed(seed)
    order: list[int] = []
    for _ in range(steps):
        if len(order) < batch:
            order += torch.randperm(n_rows, generator=generator).tolist()
        yield order[:batch]
        order = order[batch:]


def deepspeed_config(stage: int, batch: int, max_grad_norm: float) -> dict:
    """ZeRO-2 shards gradients and optimizer state over the processes; ZeRO-3 the parameters as well. The buckets
    are sized for a small model: with DeepSpeed's defaults (5e8 elements) a ZeRO-2 process on the tiny model peaked
    at 2.6 GB resident, with these at 0.67 GB. A persistence threshold of 0 shards every parameter, the small norms
    included."""
    zero = {"stage": stage, "reduce_bucket_size": 2**20, "allgather_bucket_size": 2**20}
    if stage == 3:
        zero |= {"stage3_param_persistence_threshold": 0, "stage3_prefetch_bucket_size": 2**20}
    return {"train_micro_batch_size_per_gpu": batch, "gradient_accumulation_steps": 1, "zero_optimization": zero,
            "gradient_clipping": max_grad_norm,  # DeepSpeed's default is 1.0 whatever the other strategies do
            "zero_allow_untested_optimizer": True,  # torch's AdamW: the optimizer every strategy steps with
            "steps_per_print": 10**9}


def engine(strategy: str, model, cfg, batch: int):
    """(the module to run, its optimizer and schedule, backward-and-step) for `strategy`; the optimizer is torch's
    AdamW under every strategy, built over the parameters as the strategy holds them, with gradients clipped to a
    norm of `max_grad_norm` over the whole model:
    single: one process holds the whole model state;
    ddp: every process holds the whole state; gradients are averaged (all-reduce) after backward;
    fsdp2: each decoder layer's parameters, gradients and moments are sharded; a layer's parameters are gathered
           for its forward and backward, its gradients reduce-scattered after;
    zero2 / zero3: DeepSpeed's ZeRO stages (deepspeed_config)."""
    def adamw(parameters):
        optimizer = torch.optim.AdamW(parameters, lr=cfg.lr, weight_decay=0.0)
        schedule = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.warmup_steps,
                                 num_training_steps=cfg.max_steps)
        return optimizer, schedule

    if strategy.startswith("zero"):
        import deepspeed

        # At start-up DeepSpeed compiles a shared-memory all-reduce for CPU inference (g++, once per machine);
        # training never calls it, and the cpu image ships no compiler
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        optimizer, schedule = adamw(model.parameters())
        ds, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=schedule,
                                           config=deepspeed_config(int(strategy[-1]), batch, cfg.max_grad_norm))

        def ds_step(loss):
            ds.backward(loss)
            ds.step()  # clips, steps the optimizer and the schedule
        return ds, optimizer, schedule, ds_step
    if strategy == "ddp":
        model = torch.nn.parallel.DistributedDataParallel(model)
    elif strategy == "fsdp2":
        from torch.distributed.fsdp import fully_shard

        for layer in model.model.layers:
            fully_shard(layer)
        fully_shard(model)  # the rest: embeddings (tied to the output layer) and the final norm
    optimizer, schedule = adamw(model.parameters())  # after fully_shard, which replaces them with shards

    def step(loss):
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
    return model, optimizer, schedule, step


def full_state_dict(strategy: str, module) -> dict:
    """The whole model's weights on rank 0 (a collective: every rank calls it)."""
    if strategy == "fsdp2":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if strategy == "zero3":
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
            return {name: tensor.detach().clone() for name, tensor in module.state_dict().items()}
    return module.state_dict()


def local_mb(tensors) -> float:
    return round(sum(t.numel() * t.element_size() for t in tensors) / 2**20, 3)


def state_mb(module, optimizer) -> dict:
    """This process's share of the model state: the parameter storage it holds (its ZeRO-3 partition or FSDP2 shard,
    else the whole) and the optimizer's moments (over the parameters it updates)."""
    def local(tensor):
        if hasattr(tensor, "ds_tensor"):
            return tensor.ds_tensor
        return tensor.to_local() if hasattr(tensor, "to_local") else tensor  # an FSDP2 shard is a DTensor
    moments = [t for state in optimizer.state.values() for t in state.values() if torch.is_tensor(t) and t.dim()]
    return {"parameters_mb": local_mb(local(p) for p in module.parameters()),
            "optimizer_state_mb": local_mb(local(t) for t in moments)}


def checkpoints_of(params: Params, strategy: str, world: int, rank: int) -> Path:
    """`.checkpoints/scale/<strategy>/<fingerprint>`: resumed only by a run of the same params, processes and data
    (made by rank 0 first, which drops other fingerprints'). Several machines need it on storage they share."""
    config = {"seed": params.seed, "tier": params.tier, "scale": params.scale.model_dump(), "world_size": world}
    make = partial(checkpoint_dir, f"scale/{strategy}", config, [PREPARED / "sft_train.jsonl", BASE])
    if rank == 0:
        make()
    if world > 1:
        dist.barrier()
    return make()


def save_checkpoint(strategy: str, module, optimizer, schedule, folder: Path, progress: dict, rank: int) -> None:
    """Every process writes its own share: DeepSpeed's engine its partitions, torch's distributed checkpoint (DCP)
    the shards of FSDP2's DTensors (DDP's replicas once). progress.json, written last by rank 0 once every process
    is done, marks the checkpoint whole; the one before it is then dropped."""
    step = folder / f"step-{progress['step']}"
    if strategy.startswith("zero"):
        module.save_checkpoint(str(folder), tag=step.name)  # optimizer and schedule included
    else:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        weights, moments = get_state_dict(module, optimizer)
        dcp.save({"model": weights, "optimizer": moments}, checkpoint_id=step)
    if dist.is_initialized():
        dist.barrier()
    if rank == 0:
        write_json(step / "progress.json", progress | {"schedule": schedule.state_dict()})
        for older in folder.glob("step-*"):
            if older != step:
                shutil.rmtree(older)


def resume(strategy: str, module, optimizer, schedule, folder: Path) -> dict:
    """The newest whole checkpoint in `folder` loaded into the engine: {"step", "losses"} so far ({} if none)."""
    whole = sorted((p for p in folder.glob("step-*") if (p / "progress.json").exists()),
                   key=lambda p: int(p.name.removeprefix("step-")))
    if not whole:
        return {}
    step, progress = whole[-1], json.loads((whole[-1] / "progress.json").read_text())
    if strategy.startswith("zero"):
        module.load_checkpoint(str(folder), tag=step.name)
    else:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        weights, moments = get_state_dict(module, optimizer)
        state = {"model": weights, "optimizer": moments}
        dcp.load(state, checkpoint_id=step)
        set_state_dict(module, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
        schedule.load_state_dict(progress["schedule"])
    return progress


def train(params: Params, strategy: str, out: Path, reports: Path) -> None:
    cfg = params.scale
    world = int(os.environ.get("WORLD_SIZE", 1))
    batch = cfg.batch_size if world > 1 else cfg.batch_size * cfg.procs  # rows per process per step
    if (strategy == "single") != (world == 1):
        raise ConfigError(f"--strategy {strategy} in {world} process(es): single runs alone, the others under torchrun "
                          "with several processes")
    # DeepSpeed calls collectives torch has renamed: a warning per call, nothing for a user to do
    warnings.filterwarnings("ignore", message=r"`torch\.distributed\.\w+` is deprecated", category=FutureWarning)
    # the one-process run saves its checkpoints through the same DCP call, which says it noticed
    warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
    if strategy != "single":
        dist.init_process_group("gloo")
    rank = dist.get_rank() if world > 1 else 0
    seed_everything(params.seed)
    tokenizer = load_tokenizer(require(BASE, "config.json", "pretrain"))
    rows = tokenized_chats(tokenizer, cfg.max_length)
    collate = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id)
    module, optimizer, schedule, backward_and_step = engine(strategy, load_model(BASE, training=True).train(), cfg,
                                                            batch)
    checkpoints = checkpoints_of(params, strategy, world, rank)
    done = resume(strategy, module, optimizer, schedule, checkpoints)
    if rank == 0 and done:
        print(f"scale {strategy}: resuming from step {done['step']} ({checkpoints})", flush=True)

    losses, tokens, started = done.get("losses", []), 0, time.perf_counter()
    for step, rows_of_step in enumerate(global_batches(len(rows), batch * world, cfg.max_steps, params.seed), 1):
        if step <= done.get("step", 0):
            continue  # the order is drawn again, the rows already trained on skipped
        local = collate([rows[i] for i in rows_of_step[rank * batch:(rank + 1) * batch]])
        targets = torch.tensor(float((local["labels"][:, 1:] != -100).sum()))  # the shifted labels the loss sees
        if world > 1:
            dist.all_reduce(targets)
        # the model sums its tokens' losses and divides by the global count (transformers' num_items_in_batch)
        loss = module(**local, num_items_in_batch=targets).loss
        backward_and_step(loss * world)
        logged = loss.detach().clone()
        if world > 1:
            dist.all_reduce(logged)
        losses.append(round(logged.item(), 6))
        tokens += int(local["attention_mask"].sum())
        if rank == 0 and step % cfg.logging_steps == 0:
            print(f"scale {strategy}: step {step}/{cfg.max_steps}  loss {losses[-1]:.4f}", flush=True)
        if step % cfg.save_steps == 0 and step < cfg.max_steps:
            save_checkpoint(strategy, module, optimizer, schedule, checkpoints, {"step": step, "losses": losses}, rank)
    seconds = time.perf_counter() - started

    model = getattr(module, "module", module)  # the transformers model inside DDP's or DeepSpeed's wrapper
    weights = full_state_dict(strategy, model)
    if rank == 0:
        plain = load_model(BASE)  # the same transformers model whatever the strategy trained it with
        plain.load_state_dict(weights, strict=True)
        card = run_card("scale", params, cfg) | {"strategy": strategy, "world_size": world}
        save_model(plain, tokenizer, out, card)
    report = {"rank": rank, "world_size": world, "node_rank": int(os.environ.get("GROUP_RANK", 0)),
              "strategy": strategy, "losses": losses, "resumed_from_step": done.get("step", 0),
              "train_time_s": round(seconds, 1),
              "tokens_per_s": round(tokens / seconds, 1), "peak_rss_mb": process_peak_mb(),
              **state_mb(model, optimizer)}
    write_json(reports / f"rank{rank}.json", report)
    if rank == 0:
        finish_checkpoints(checkpoints)  # a finished run resumes nothing
    # DDP's reducer and DeepSpeed's engine hold the process group: freed while every peer is still connected (freed
    # after destroy_process_group, gloo's destructor waited forever on a peer that had gone)
    del module, model, backward_and_step
    if world > 1:
        dist.barrier()  # the model is written before any launcher reports success
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m labs.scale.worker", description=__doc__.splitlines()[0])
    parser.add_argument("--strategy", choices=STRATEGIES, required=True)
    parser.add_argument("--out", type=Path, required=True, help="where rank 0 saves the trained model")
    parser.add_argument("--reports", type=Path, required=True, help="where each rank writes its report")
    parser.add_argument("--config", help="the scale lab's params as JSON (default: params.yaml's, with -S)")
    parser.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a param of params.yaml, e.g. -S scale.max_steps=20")
    args = parser.parse_args(argv)
    for assignment in args.set:  # params.yaml's other sections are not this worker's: a key there is a typo
        if (section := assignment.partition("=")[0].partition(".")[0]) not in Params.model_fields:
            parser.error(f"-S {assignment}: {section} is not a section scale reads ({', '.join(Params.model_fields)})")
    try:
        params = (Params.model_validate(json.loads(args.config)) if args.config
                  else load_params(Params, overrides=args.set))
        train(params, args.strategy, args.out, args.reports)
    except (ConfigError, DataError) as exc:
        raise SystemExit(f"error: {exc}") from None


if __name__ == "__main__":
    main()
