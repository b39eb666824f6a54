"""Experiments: `just sweep` queues and runs a grid of one param (two at a time with `jobs=2`); `dvc exp show` and
`dvc metrics diff` compare."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import lab_env, run

STEPS = ["10", "20", "40"]  # the baseline trains 4 epochs: each value is a different, much shorter run


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


def labs_running(lab: str, inside: Path) -> list[int]:
    """The processes running `python -m labs LAB` in a directory under `inside` (DVC's temporary workspaces)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            if (proc / "cmdline").read_bytes().split(b"\0")[1:4] == [b"-m", b"labs", lab.encode()] and \
                    (proc / "cwd").resolve().is_relative_to(inside.resolve()):
                found.append(int(proc.name))
    return found


@pytest.mark.long(78)
def test_sweep_runs_three_sft_values_two_at_a_time_and_exp_show_lists_them(built, tmp_path):
    ws = Path(shutil.copytree(built, tmp_path / "sweep", symlinks=True))
    run(["git", "add", "-A"], cwd=ws)
    run(["git", "-c", "user.name=test", "-c", "user.email=test@localhost", "commit", "-qm", "baseline"], cwd=ws)
    before = {p: (ws / p).read_bytes() for p in ("params.yaml", "metrics/sft.json", "dvc.lock")}

    # two at a time: both experiments' `python -m labs sft` seen running at once
    sweep = subprocess.Popen(["just", "jobs=2", "sweep", "sft", "max_steps", *STEPS], cwd=ws, env=lab_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    at_once = 0
    while sweep.poll() is None:
        at_once = max(at_once, len(labs_running("sft", inside=ws)))
        time.sleep(0.2)
    assert sweep.returncode == 0, sweep.stdout.read()[-3000:]
    assert at_once == 2, "the queue ran two experiments at a time"

    found = experiments(json.loads(run(["dvc", "exp", "show", "--json"], cwd=ws).stdout))
    by_steps = {}
    for name, data in found.items():
        params = data["params"]["params.yaml"]["data"]["sft"]
        if "max_steps" in params:  # the baseline commit has none
            by_steps[params["max_steps"]] = (name, data["metrics"]["metrics/sft.json"]["data"]["val_loss"])
    assert sorted(by_steps) == [10, 20, 40], found.keys()
    losses = [by_steps[n][1] for n in (10, 20, 40)]
    assert losses[0] > losses[1] > losses[2], f"longer training, lower validation loss: {by_steps}"
    # the workspace is the baseline still; any experiment compares against it
    assert {p: (ws / p).read_bytes() for p in before} == before
    name = by_steps[10][0]
    diff = json.loads(run(["dvc", "metrics", "diff", "HEAD", name, "--json"], cwd=ws).stdout)
    assert "val_loss" in diff["metrics/sft.json"], diff
    assert "max_steps" not in yaml.safe_load((ws / "params.yaml").read_text())["sft"]  # added by the sweep's `+`
    params = json.loads(run(["dvc", "params", "diff", "HEAD", name, "--json"], cwd=ws).stdout)
    assert params["params.yaml"]["sft.max_steps"]["new"] == 10, params
    plots = run(["dvc", "plots", "diff", "HEAD", name, "--json"], cwd=ws).stdout
    assert "plots/sft" in plots
