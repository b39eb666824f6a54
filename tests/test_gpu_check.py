"""`just gpu-check` without a GPU: it refuses, or with --allow-cpu runs every check's code at tiny sizes, and
`just results` shows no GPU column from such a run. Its GPU numbers come only from a CUDA machine."""

import json
import sys

from labs.tools.results import gpu
from tests.conftest import lab_env, run

CHECK = [sys.executable, "-m", "labs.tools.gpu_check"]


def test_without_cuda_it_refuses_in_one_line_and_writes_nothing(tmp_path):
    proc = run([*CHECK, "--out", "gpu_check.json"], cwd=tmp_path, check=False, env=lab_env())
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("error: gpu-check: no CUDA")
    assert not list(tmp_path.iterdir())


def test_on_cpu_every_check_runs_and_results_keep_it_out_of_the_gpu_column(tmp_path):
    (tmp_path / "metrics").mkdir()
    proc = run([*CHECK, "--allow-cpu", "--out", "metrics/gpu_check.json"], cwd=tmp_path, check=False, env=lab_env())
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    check = json.loads((tmp_path / "metrics/gpu_check.json").read_text())
    assert check["environment"]["device"] == "cpu"
    assert set(check["train"]) == {f"{m}_{p}" for m in ("sft", "lora", "qlora", "dpo") for p in ("fp16", "bf16")}
    for name, row in check["train"].items():
        if name.endswith("fp16"):  # the Trainer's fp16 autocast is CUDA's
            assert row["skipped"].startswith("fp16 mixed precision needs CUDA"), row
            continue
        assert row["steps"] == 3 and 0 < row["last_loss"] < 10, (name, row)
        if not name.startswith("dpo"):
            assert row["last_loss"] < row["first_loss"], (name, row)
    adapters = {check["train"][f"{m}_bf16"]["trainable_parameters"] for m in ("lora", "qlora")}
    assert len(adapters) == 1 and adapters.pop() < check["train"]["sft_bf16"]["trainable_parameters"] / 2
    assert check["kv_cache"]["same_tokens"] and check["speculative"]["same_tokens"], "greedy is greedy"
    batching = check["continuous_batching"]
    assert batching["batched_tokens"] == batching["requests"] * batching["new_tokens_per_request"], batching
    assert check["attention"]["skipped"] == "sdpa's flash backend runs on CUDA only"
    assert gpu(tmp_path / "metrics")[-1].startswith("- GPU: no `just gpu-check` has run on CUDA yet")

    # the same file as a CUDA run would write it becomes the README's GPU column
    check["environment"] |= {"device": "cuda", "gpu": "NVIDIA H100 80GB HBM3", "cuda": "13.0"}
    (tmp_path / "metrics/gpu_check.json").write_text(json.dumps(check))
    table = "\n".join(gpu(tmp_path / "metrics"))
    assert "| check | NVIDIA H100 80GB HBM3 (CUDA 13.0) |" in table
    assert f"| `sft` bf16 | loss {check['train']['sft_bf16']['first_loss']} → " in table
    rows = [line.split(" | ")[0].removeprefix("| ") for line in table.splitlines() if line.startswith("| `")]
    assert rows[:3] == ["`sft` fp16", "`sft` bf16", "`lora` fp16"], "the table follows the curriculum's order"

