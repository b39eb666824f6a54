"""Experiments: `just sweep` queues and runs a grid of one param; `dvc exp show` and `dvc metrics diff` compare."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

from tests.conftest import run

EPOCHS = ["1", "2", "3"]  # the baseline trains 4: each value is a different, shorter run


def experiments(show: list) -> dict[str, dict]:
    """name -> {"params": ..., "metrics": ...} for every experiment in `dvc exp show --json`."""
    found = {}

    def walk(node):
        if isinstance(node, dict):
            data = node.get("data")
            if isinstance(data, dict) and node.get("name") and "params" in data and node.get("rev") != "workspace":
                found[node["name"]] = data
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(show)
    return found


def test_sweep_runs_three_sft_values_and_exp_show_lists_them(built, tmp_path):
    ws = Path(shutil.copytree(built, tmp_path / "sweep", symlinks=True))
    run(["git", "add", "-A"], cwd=ws)
    run(["git", "-c", "user.name=test", "-c", "user.email=test@localhost", "commit", "-qm", "baseline"], cwd=ws)
    before = {p: (ws / p).read_bytes() for p in ("params.yaml", "metrics/sft.json", "dvc.lock")}

    run(["just", "sweep", "sft", "epochs", *EPOCHS], cwd=ws, timeout=1200)

    found = experiments(json.loads(run(["dvc", "exp", "show", "--json"], cwd=ws).stdout))
    by_epochs = {}
    for name, data in found.items():
        params = data["params"]["params.yaml"]["data"]["sft"]
        metrics = data["metrics"]["metrics/sft.json"]["data"]
        by_epochs[params["epochs"]] = (name, metrics["val_loss"])
    assert sorted(by_epochs) == [1, 2, 3], found.keys()
    losses = [by_epochs[e][1] for e in (1, 2, 3)]
    assert losses[0] > losses[1] > losses[2], f"longer training, lower validation loss: {by_epochs}"
    # the workspace is the baseline still; any experiment compares against it
    assert {p: (ws / p).read_bytes() for p in before} == before
    name = by_epochs[1][0]
    diff = json.loads(run(["dvc", "metrics", "diff", "HEAD", name, "--json"], cwd=ws).stdout)
    assert "val_loss" in diff["metrics/sft.json"], diff
    baseline = yaml.safe_load((ws / "params.yaml").read_text())["sft"]["epochs"]
    params = json.loads(run(["dvc", "params", "diff", "HEAD", name, "--json"], cwd=ws).stdout)
    assert params["params.yaml"]["sft.epochs"] == {"old": baseline, "new": 1}, params
    plots = run(["dvc", "plots", "diff", "HEAD", name, "--json"], cwd=ws).stdout
    assert "plots/sft" in plots
