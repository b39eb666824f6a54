"""What every run needs: seeds and determinism, atomic outputs, the run card, resumable checkpoints."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import platform
import random
import re
import resource
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from labs.core import kernels
from labs.core.config import PARAMS_FILE, ConfigError, Processes

CHECKPOINT_ROOT = Path(".checkpoints")  # git-ignored, outside DVC outs: DVC deletes outs before a stage runs
PACKAGES = ("torch", "transformers", "trl", "peft", "bitsandbytes", "datasets", "accelerate", "tokenizers", "dvc",
            "llm-lab")


def default_threads() -> int:
    # Two threads: this project's reference machine. Checkpoints record the count (checkpoint_dir).
    return int(os.environ.get("LAB_THREADS", min(2, os.cpu_count() or 1)))


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed python, numpy and torch; on CPU also force deterministic kernels and a fixed thread count."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(default_threads())
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def device_name(tier: str) -> str:
    """What a run of this tier computes on: the GPU's name on a GPU tier with a GPU, else "cpu"."""
    import torch

    return torch.cuda.get_device_name(0) if tier != "cpu" and torch.cuda.is_available() else "cpu"


def lab_processes() -> int:
    """Processes running one lab's trainer together, as `launch` started them (LAB_PROCESSES in each); 1 otherwise.
    The scale worker's processes, which torchrun starts too, are not counted: each writes files of its own."""
    return int(os.environ.get("LAB_PROCESSES", 1))


def is_main_process() -> bool:
    return lab_processes() == 1 or int(os.environ.get("RANK", 0)) == 0


def barrier() -> None:
    """Wait for every process `launch` started (none to wait for otherwise, or before the trainer joined them into
    a process group)."""
    import torch.distributed as dist

    if lab_processes() > 1 and dist.is_available() and dist.is_initialized():
        dist.barrier()


def deepspeed_config(stage: int) -> dict:
    """DeepSpeed ZeRO at `stage`; "auto" takes batch, clipping and precision from the trainer's own arguments, so
    one config serves every tier. The trainer's own AdamW and schedule train, as under ddp and fsdp2."""
    # buckets sized to the model ("auto": from its hidden size): DeepSpeed's defaults (5e8 values) cost a tiny
    # model gigabytes and four times the time per step
    zero = {"stage": stage, "reduce_bucket_size": "auto"}
    if stage == 3:
        zero |= {"stage3_prefetch_bucket_size": "auto", "stage3_param_persistence_threshold": "auto",
                 "stage3_gather_16bit_weights_on_model_save": True}
    return {"zero_optimization": zero,
            "train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto",
            "gradient_accumulation_steps": "auto", "gradient_clipping": "auto",
            "bf16": {"enabled": "auto"}, "fp16": {"enabled": "auto"},
            "zero_allow_untested_optimizer": True}  # torch's AdamW, which DeepSpeed has not certified


# What each strategy adds to the trainer's arguments (TrainingArguments' `fsdp`, `fsdp_config`, `deepspeed`).
STRATEGIES = {
    "ddp": {},  # accelerate's default for several processes
    # FSDP2 (`fully_shard`) on each decoder layer: parameters, gradients and optimizer state sharded
    "fsdp2": {"fsdp": True, "fsdp_config": {"version": 2, "reshard_after_forward": True,
                                             "auto_wrap_policy": "TRANSFORMER_BASED_WRAP"}},
    "zero2": {"deepspeed": deepspeed_config(2)},  # optimizer state and gradients sharded
    "zero3": {"deepspeed": deepspeed_config(3)},  # parameters too
}


def strategy_kwargs(strategy: str, gpu: bool) -> dict:
    """The trainer's arguments for `strategy` when `launch` started several processes.

    On GPUs accelerate sets FSDP and DeepSpeed up from these arguments alone. On CPU it enables neither: an FSDP
    config trains plain DDP without a word, and under DeepSpeed it counts one process (DeepSpeed then stops at
    its batch check). So on CPU this sets accelerate's process state up first, over gloo, the way its GPU path
    would, and the trainer takes it as configured."""
    kwargs = dict(STRATEGIES[strategy])
    if gpu or strategy == "ddp":
        return kwargs
    from accelerate import PartialState
    from accelerate.utils import DistributedType

    if strategy.startswith("zero"):
        os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"  # DeepSpeed joins the processes (its comm, over gloo)
        try:
            PartialState(backend="gloo")
        finally:
            del os.environ["ACCELERATE_USE_DEEPSPEED"]
    else:
        state = PartialState(cpu=True, backend="gloo")
        state.distributed_type = DistributedType.MULTI_GPU  # the kind accelerate's FSDP path takes; tensors stay on CPU
    # use_cpu would make accelerate skip DeepSpeed; the device is the CPU either way (no GPU here)
    return kwargs | {"use_cpu": False, "accelerator_config": {"use_configured_state": True}}


def whole_model(trainer):
    """The trained model, every weight in place, as a plain transformers model on every process.

    Under ddp (or one process) that is `trainer.model`. Under fsdp2 and zero3 each process holds a shard of
    each weight (under zero2 the whole weights, wrapped in DeepSpeed's engine): accelerate gathers them on rank 0,
    which shares them with the other processes, and each loads them into a fresh model of the same config."""
    import torch.distributed as dist
    from transformers import AutoModelForCausalLM
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    if lab_processes() == 1 or not (trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled):
        return trainer.model
    state = trainer.accelerator.get_state_dict(trainer.model_wrapped)  # a collective: every process calls it
    shared = [state if is_main_process() else None]
    dist.broadcast_object_list(shared, src=0)
    trained = trainer.accelerator.unwrap_model(trainer.model)
    unset_hf_deepspeed_config()  # else transformers would build the fresh model partitioned, as ZeRO-3 does
    model = AutoModelForCausalLM.from_config(trained.config, dtype=next(iter(shared[0].values())).dtype)
    model.load_state_dict(shared[0])
    model.generation_config = copy.deepcopy(trained.generation_config)  # from_config would derive its own
    return model.to(trainer.args.device).eval()


def parameters_per_process(trainer) -> list[int]:
    """How many parameter values each process holds after training: all of them under ddp and zero2, its shard
    under fsdp2 (a DTensor's local part) and zero3 (DeepSpeed's partition). A collective: every process calls it."""
    import torch.distributed as dist

    held = 0
    for parameter in trainer.model_wrapped.parameters():
        if hasattr(parameter, "ds_tensor"):
            held += parameter.ds_tensor.numel()
        elif hasattr(parameter, "to_local"):
            held += parameter.to_local().numel()
        else:
            held += parameter.numel()
    counts = [None] * dist.get_world_size()
    dist.all_gather_object(counts, held)
    return counts


@contextlib.contextmanager
def atomic_path(dest: str | Path):
    """Yield a temporary sibling of `dest`; on success it replaces `dest`, on failure it is removed.

    Works for files and directories; an existing `dest` is untouched unless the block succeeds. In a run of
    several processes every process writes, rank 0's output is kept and the others' dropped, and all of them wait
    until it is in place (one may read it next).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    _remove(tmp)
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    if not is_main_process():
        _remove(tmp)
    elif dest.is_dir() and not dest.is_symlink():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        os.replace(dest, old)
        os.replace(tmp, dest)
        _remove(old)
    else:
        os.replace(tmp, dest)
    barrier()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=lab_processes() > 1)  # several processes may clear the same stale folder
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


def write_json(path: str | Path, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_metrics(lab: str, metrics_dir: str | Path = "metrics") -> dict | None:
    """metrics/<lab>.json as written by the lab's last run; None when it has not run."""
    path = Path(metrics_dir) / f"{lab}.json"
    return json.loads(path.read_text()) if path.exists() else None


def write_csv(path: str | Path, header: list[str], rows: list[list]) -> None:
    """A table for `dvc plots` and the report's charts; None becomes an empty cell."""
    lines = [",".join(header)] + [",".join("" if v is None else str(v) for v in row) for row in rows]
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


def package_versions() -> dict[str, str]:
    # major.minor: a patch release changes no arithmetic, and the image's patch differs from a venv's
    versions = {"python": ".".join(platform.python_version_tuple()[:2])}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def git_revision() -> str:
    """HEAD, with '-dirty' when the code (labs/, pyproject.toml) differs from it.

    Only code counts: dvc.lock and metrics change after every run and would make the card differ.
    """
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "labs", "pyproject.toml"], capture_output=True, text=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev.strip() + ("-dirty" if dirty.strip() else "")


def process_peak_mb(pid: int | str = "self") -> float | None:
    """A process's peak resident memory in MiB (Linux's VmHWM, which reset_peak_memory can reset; None elsewhere
    or when the process is gone)."""
    with contextlib.suppress(OSError, IndexError, ValueError):
        status = Path(f"/proc/{pid}/status").read_text()
        return round(int(status.split("VmHWM:")[1].split()[0]) / 1024, 1)
    return None


def peak_rss_mb() -> float:
    """Peak resident memory since start or since the last reset_peak_memory(), in MiB."""
    peak = process_peak_mb()  # resettable (a lab that trains several models measures each); ru_maxrss is not
    return peak if peak is not None else round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def peak_gpu_mb() -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**20, 1) if torch.cuda.is_available() else None


def reset_peak_memory() -> None:
    """Start new high-water marks for RSS (Linux: writing 5 to clear_refs) and for GPU memory."""
    import torch

    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def die_with_parent(parent: int | None = None) -> None:
    """In a child process before it starts its work: Linux sends it SIGTERM if its parent dies, even by SIGKILL, so
    nothing is left running on its own (a served engine, a lab's training processes writing its outputs). Given
    the `parent` pid, a child that sets this up only after a slow start exits at once if that parent died first:
    the signal covers only a death after it is set."""
    import ctypes
    import signal

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if parent is not None and os.getppid() != parent:
        os._exit(1)


def _one_thread_worker(lab: int) -> None:
    die_with_parent(lab)  # a worker reaches this after seconds of imports
    os.environ["LAB_THREADS"] = "1"  # what seed_everything sets torch to, in every job


def side_by_side(function, jobs: list[tuple]) -> list:
    """`[function(*job) for job in jobs]`, the jobs shared among `default_threads()` processes of one thread each.

    Short runs of a tiny model gain little from a second thread (a probe's fine-tune: 1.4x), so several of them
    finish sooner side by side; longer steps gain more and share the cores' caches badly (`embeddings`' runs took
    longer side by side), so a lab uses this where it measured a gain (docs/decisions.md). Each job runs at one
    thread wherever it runs, here too when there is one thread, so its results do not depend on how many ran at
    once (a thread count can change the bits of a step, pinned kernels or not). `function` must be a module-level
    function: spawn pickles it by name. An exception in a job is raised here. The standard library's process pool
    does the work; its workers die with the lab."""
    if default_threads() <= 1 or not jobs:
        return [function(*job) for job in jobs]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # spawn, not fork: a forked copy of a process whose torch already ran OpenMP threads can hang in them
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(min(default_threads(), len(jobs)), mp_context=context,
                             initializer=_one_thread_worker, initargs=(os.getpid(),)) as pool:
        futures = [pool.submit(function, *job) for job in jobs]
        try:
            return [future.result() for future in futures]
        except BaseException:
            pool.shutdown(cancel_futures=True)  # the jobs not started yet; a running one ends first
            raise


def lab_nodes() -> tuple[int, int, str]:
    """This machine's place in a lab's run across machines (`just lab-node`): the node count, this node's rank and
    node 0's HOST:PORT, from LAB_NODES, LAB_NODE_RANK and LAB_RENDEZVOUS; (1, 0, "") on one machine."""
    nodes = os.environ.get("LAB_NODES", "1")
    if not nodes.isdigit() or int(nodes) < 1:
        raise ConfigError(f"LAB_NODES: expected a node count of 1 or more, got {nodes!r}")
    if int(nodes) == 1:
        return 1, 0, ""
    rank, address = os.environ.get("LAB_NODE_RANK", ""), os.environ.get("LAB_RENDEZVOUS", "")
    if not rank.isdigit() or int(rank) >= int(nodes):
        raise ConfigError(f"LAB_NODE_RANK: expected this node's rank, 0 to {int(nodes) - 1}, got {rank!r}")
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"LAB_RENDEZVOUS: expected node 0's HOST:PORT, got {address!r}")
    return int(nodes), int(rank), address


def launch(lab: str, section, argv: list[str]) -> int:
    """`python -m labs LAB ARGV` in `section.procs` processes, through torchrun (`--standalone`: a rendezvous on a
    free local port); the trainer joins them through accelerate, over gloo on CPU. Each process gets its share of
    the machine's threads. `accelerate launch --cpu --num_processes 2` would start one process, not two. Across
    machines (lab_nodes) every node runs this with node 0's address, and the processes of all nodes train as one."""
    nodes, node_rank, address = lab_nodes()
    world = section.procs * nodes
    if section.batch_size % world:
        across = f" on each of {nodes} nodes" if nodes > 1 else ""
        raise ConfigError(f"{PARAMS_FILE}: {lab}.batch_size: {section.batch_size} rows a step do not split over "
                          f"{lab}.procs = {section.procs} processes{across}")
    threads = str(max(1, default_threads() // section.procs))
    where = ["--standalone"]
    if nodes > 1:
        host, _, port = address.rpartition(":")
        where = [f"--nnodes={nodes}", f"--node-rank={node_rank}", f"--master-addr={host}", f"--master-port={port}"]
    command = [sys.executable, "-m", "torch.distributed.run", *where, f"--nproc-per-node={section.procs}",
               "--local-ranks-filter=0", "-m", "labs", lab, *argv]  # local rank 0's output: the others print the same
    env = os.environ | {"LAB_PROCESSES": str(world), "LAB_THREADS": threads, "OMP_NUM_THREADS": threads}
    # torchrun dies with this process and the lab's processes with torchrun (labs/__main__.py): a killed run
    # leaves none of them training on and writing its outputs later
    return subprocess.run(command, env=env, preexec_fn=die_with_parent).returncode


def run_card(lab: str, params, section) -> dict:
    """The facts that determine a model's weights, and nothing else: two runs of the same code and params give
    byte-identical model directories on any machine, so DVC's cache holds. Provenance (git revision, host,
    wall time, peak memory, device, kernels) goes into `metrics/<lab>.json` (see RunStats)."""
    several = isinstance(section, Processes)  # a section `launch` may start on several processes
    card = {
        "lab": lab,
        "command": f"python -m labs {lab}",
        "tier": params.tier,
        "seed": params.seed,
        # processes and strategy change a step's sums only when there are several: one process's card stays as it was
        "config": section.model_dump(mode="json", exclude={"procs", "strategy"} if several else None),
        "versions": package_versions(),
    }
    nodes = lab_nodes()[0] if several else 1
    if several and section.procs * nodes > 1:
        card["processes"] = {"procs": section.procs, "strategy": section.strategy}
        if nodes > 1:
            card["processes"]["nodes"] = nodes
    return card


def write_card(folder: Path, card: dict) -> None:
    (Path(folder) / "run_card.json").write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")


class RunStats:
    """A run's provenance for metrics/: wall time, peak RSS (and GPU memory on GPU tiers), device, threads,
    the CPU kernels in force, git revision and host."""

    def __init__(self) -> None:
        reset_peak_memory()
        self.started = time.perf_counter()

    def as_dict(self, device: str) -> dict:
        stats = {
            "wall_time_s": round(time.perf_counter() - self.started, 1),
            "peak_rss_mb": peak_rss_mb(),
            "device": device,
            "threads": default_threads(),
            "kernels": kernels.in_force(),
            "git_revision": git_revision(),
            "host": platform.node(),
            "python": platform.python_version(),
        }
        if (gpu := peak_gpu_mb()) is not None:
            stats["peak_gpu_mb"] = gpu
        if lab_processes() > 1:  # every process's peak, gathered from all of them (rank 0 writes the metrics)
            import torch.distributed as dist

            peaks = [None] * lab_processes()
            dist.all_gather_object(peaks, {key: stats.get(key) for key in ("peak_rss_mb", "peak_gpu_mb")})
            stats |= {"world_size": lab_processes(), "per_process": peaks}
        return stats


def fingerprint(config: dict, inputs: list[str | Path]) -> str:
    """Hash of a run's resolved config and the bytes of its inputs: a checkpoint is only resumed by a run
    that would have produced it."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    for root in inputs:
        root = Path(root)
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for file in files:
            digest.update(str(file.relative_to(root) if root.is_dir() else file.name).encode())
            digest.update(hashlib.sha256(file.read_bytes()).digest())
    return digest.hexdigest()[:16]


def checkpoint_dir(lab: str, config: dict, inputs: list[str | Path]) -> Path:
    """`.checkpoints/<lab>/<fingerprint>`; checkpoints of other configs or inputs are dropped.

    The thread count and the kernel pins count as config: either can change the bits of a training step on
    some CPUs, so a run that would compute differently starts afresh instead of finishing another run's
    weights with different arithmetic.
    """
    root = CHECKPOINT_ROOT / lab
    machine = {"threads": default_threads(), "kernels": {name: os.environ.get(name) for name in kernels.PINS}}
    if lab_processes() > 1:  # the processes split each step's rows: another count sums in another order
        machine["processes"] = lab_processes()
    current = root / fingerprint(config | {"computed_with": machine}, inputs)
    if root.exists():  # only fingerprints: a lab's nested runs (`lora/seed-1`) keep their own checkpoints
        for stale in root.iterdir():
            if stale != current and re.fullmatch(r"[0-9a-f]{16}", stale.name):
                _remove(stale)
    current.mkdir(parents=True, exist_ok=True)
    return current


def last_checkpoint(directory: Path) -> str | None:
    """The newest complete checkpoint in `directory`; partial ones (a kill during saving) are removed.

    The Trainer writes a checkpoint in place and its trainer_state.json last, so a checkpoint is whole
    exactly when that file parses. (transformers' get_last_checkpoint takes the highest number, whole or not.)
    """
    if not directory.exists():
        return None
    by_step = sorted(directory.glob("checkpoint-*"), key=lambda p: int(p.name.rpartition("-")[2]), reverse=True)
    for candidate in by_step:
        try:
            json.loads((candidate / "trainer_state.json").read_text())
            return str(candidate)
        except (OSError, ValueError):
            print(f"dropping incomplete checkpoint {candidate}")
            _remove(candidate)
    return None


def show_progress(trainer, label: str, stream=None) -> None:
    """Replace the trainer's printing of raw log dicts with one progress line: step / total, loss, tokens/s and
    time left. On a terminal the line is redrawn in place each step; in a pipe or log (DVC under CI) a plain
    line is printed per logging step, with no carriage returns. Evaluations outside training get a line each."""
    from transformers import PrinterCallback, TrainerCallback

    if any(type(callback).__name__ == "ProgressLine" for callback in trainer.callback_handler.callbacks):
        return
    stream = stream or sys.stdout

    class ProgressLine(TrainerCallback):
        live, training, loss = stream.isatty(), False, None

        def on_train_begin(self, args, state, control, **kwargs):
            self.training, self.started = True, time.perf_counter()
            self.first_step, self.first_tokens = state.global_step, state.num_input_tokens_seen

        def line(self, state) -> str:
            seconds = max(time.perf_counter() - self.started, 1e-9)
            done, total = state.global_step, state.max_steps
            rate = (done - self.first_step) / seconds
            left = f"{_clock((total - done) / rate)} left" if rate > 0 else ""
            tokens = (state.num_input_tokens_seen - self.first_tokens) / seconds
            parts = [f"{label}: step {done}/{total} ({100 * done // max(total, 1)}%)",
                     f"loss {self.loss:.4f}" if self.loss is not None else "", f"{tokens:,.0f} tok/s" if tokens else "",
                     left]
            return "  ".join(part for part in parts if part)

        def on_step_end(self, args, state, control, **kwargs):
            if self.live:
                stream.write("\r\033[K" + self.line(state))
                stream.flush()

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            # the training loss, or for RL trainers their first loss term (PPO logs loss/policy_avg, ...)
            self.loss = logs.get("loss", next((v for k, v in logs.items() if k.startswith("loss/")), self.loss))
            evaluation = f"eval loss {logs['eval_loss']:.4f}" if "eval_loss" in logs else ""
            if not self.training:
                if evaluation:
                    print(f"{label}: {evaluation}", file=stream, flush=True)
            elif not self.live:
                print("  ".join(filter(None, [self.line(state), evaluation])), file=stream, flush=True)

        def on_train_end(self, args, state, control, **kwargs):
            if self.live:
                stream.write("\r\033[K" + self.line(state) + "\n")
            self.training = False

    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(ProgressLine())


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{seconds:02d}" if minutes >= 60 else f"{minutes}:{seconds:02d}"


def train_resumable(trainer, checkpoints: Path, card: dict) -> dict:
    """trainer.train(), resuming from the newest checkpoint in `checkpoints` if a killed run left one.

    Every checkpoint gets `card` (the run card) beside its weights. Returns what every training lab
    reports: final train loss, optimizer steps, the step it resumed from, and tokens/s of this process.
    """
    from transformers import TrainerCallback

    class SaveRunCard(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.is_world_process_zero:  # the process that wrote the checkpoint's weights
                write_card(Path(args.output_dir) / f"checkpoint-{state.global_step}", card)

    class NoCheckpointOfTheLastStep(TrainerCallback):
        # The lab saves the trained model right after training, so a checkpoint of the last step would serve only a
        # resume, and the Trainer resumed there trains a step past max_steps when max_steps ends mid-epoch (it
        # checks the step count after a step, never before the first). A run killed after its last step resumes
        # from the checkpoint before it instead.
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step >= state.max_steps:
                control.should_save = False

    trainer.add_callback(SaveRunCard())
    trainer.add_callback(NoCheckpointOfTheLastStep())  # after the Trainer's own flow callback, which asked to save
    show_progress(trainer, card["lab"])
    resume = last_checkpoint(checkpoints)
    resumed = json.loads((Path(resume) / "trainer_state.json").read_text()) if resume else {}
    if resume:
        print(f"resuming from {resume}")
    if lab_processes() > 1:
        # The evaluation before training let accelerate mark the model prepared without wrapping it in DDP, and
        # train() then trusts that mark: every process would train its own copy on its own rows, unsynchronised.
        trainer.model._is_accelerate_prepared = False
        trainer.accelerator._models.clear()
    result = trainer.train(resume_from_checkpoint=resume)
    tokens = trainer.state.num_input_tokens_seen - resumed.get("num_input_tokens_seen", 0)
    return {
        "train_loss": round(result.training_loss, 4),
        "steps": trainer.state.global_step,
        "resumed_from_step": resumed.get("global_step", 0),
        "train_tokens_per_s": round(tokens / max(result.metrics["train_runtime"], 1e-9), 1),
        "train_time_s": round(result.metrics["train_runtime"], 1),
    }


def save_model(model, tokenizer, out: str | Path, card: dict) -> None:
    """Weights (safetensors), tokenizer and run card into `out`, atomically."""
    with atomic_path(out) as tmp:
        model.save_pretrained(tmp)  # safetensors is the only format transformers 5 writes
        tokenizer.save_pretrained(tmp)
        write_card(tmp, card)
        for file in tmp.iterdir():  # transformers writes the weights 0600: a container's other user could not read them
            if file.is_file():
                file.chmod(0o644)


def safetensors_mb(folder: str | Path) -> float:
    """Size on disk of the weights in `folder` (a model or an adapter), in MiB."""
    return round(sum(f.stat().st_size for f in Path(folder).glob("*.safetensors")) / 2**20, 3)


def finish_checkpoints(checkpoints: Path) -> None:
    """A run that completed needs no checkpoints; keeping them would make a forced re-run resume."""
    barrier()  # every process is done with them
    if is_main_process():
        _remove(checkpoints)


LOSS_CURVES = {"loss": "train/loss", "eval_loss": "eval/loss", "learning_rate": "train/lr"}


def save_curves(lab: str, log_history: list[dict], curves: dict[str, str] = LOSS_CURVES) -> Path:
    """Curves from the trainer's log history into plots/<lab>/metrics/ as DVC plots (TSV): `curves` maps a
    logged key to a plot name (the loss curves by default; RL labs add reward and KL).

    Written after training from the history the checkpoints carry, so a resumed run's curves are whole
    (DVC clears plots/<lab>/ before the stage runs, so a live callback would lose the first part). The
    writer is dvclive's own Metric; its Live session is not used because it opens the DVC repo and git
    (slow, and it fails in a repository without commits).
    """
    from dvclive.plots import Metric

    out = Path("plots") / lab
    with atomic_path(out) as tmp:
        for key, name in curves.items():
            curve = Metric(name, str(tmp))
            for entry in log_history:
                if key in entry:
                    curve.step = entry["step"]
                    curve.dump(entry[key])
    return out


def trend(log_history: list[dict], key: str) -> tuple[float, float]:
    """Mean of the first and of the last tenth of a logged curve: RL rewards are too noisy update to update
    to compare two single points."""
    values = [entry[key] for entry in log_history if key in entry]
    tenth = max(1, len(values) // 10)
    return round(sum(values[:tenth]) / tenth, 4), round(sum(values[-tenth:]) / tenth, 4)
