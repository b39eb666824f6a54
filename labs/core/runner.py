"""What happens around every lab's `run`: seeding, quieter library output, and metrics/<lab>.json with the
run's provenance. The CLI (labs/__main__.py) loads the lab's params and calls `execute`."""

from __future__ import annotations

from labs.core.config import SEED, Section
from labs.core.run import RunStats, device_name, seed_everything, write_json


def execute(name: str, module, params: Section) -> dict:
    """Run lab `name` (its `module`) with `params`; its metrics, with the `run` block, go to metrics/<name>.json."""
    import datasets
    import transformers

    # Per-example progress bars drown the trainer's loss log in DVC's output.
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()

    stats = RunStats()
    seed_everything(getattr(params, "seed", SEED))  # labs that draw no random numbers do not read `seed`
    metrics = module.run(params)
    if metrics:
        metrics |= {"run": stats.as_dict(device_name(getattr(params, "tier", "cpu")))}
        if "world_size" in metrics["run"]:  # several processes trained: how they shared the model
            metrics["run"]["strategy"] = getattr(params, name).strategy
        write_json(f"metrics/{name}.json", metrics)
    return metrics
