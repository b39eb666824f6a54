"""Run helpers: resumable checkpoints, fingerprints."""

import json

from labs.core.run import checkpoint_dir, last_checkpoint


def test_last_checkpoint_skips_and_drops_a_partial_one(tmp_path):
    for step, whole in ((50, True), (100, True), (150, False)):
        path = tmp_path / f"checkpoint-{step}"
        path.mkdir()
        (path / "model.safetensors").write_bytes(b"weights")
        if whole:
            (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    (tmp_path / "checkpoint-200").mkdir()
    (tmp_path / "checkpoint-200" / "trainer_state.json").write_text('{"global_st')  # killed mid-write
    assert last_checkpoint(tmp_path) == str(tmp_path / "checkpoint-100")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-100", "checkpoint-50"]
    assert last_checkpoint(tmp_path / "absent") is None


def test_checkpoints_of_another_config_or_input_are_not_resumed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "train.jsonl"
    data.write_text('{"text": "a"}\n')
    first = checkpoint_dir("sft", {"lr": 1e-3}, [data])
    assert checkpoint_dir("sft", {"lr": 1e-3}, [data]) == first
    other = checkpoint_dir("sft", {"lr": 2e-3}, [data])
    assert other != first and not first.exists(), "a stale config's checkpoints are dropped"
    data.write_text('{"text": "b"}\n')
    assert checkpoint_dir("sft", {"lr": 2e-3}, [data]) != other


def test_a_run_with_other_threads_or_kernels_does_not_resume_and_nested_runs_keep_theirs(tmp_path, monkeypatch):
    """The thread count and the kernel pins can change a step's bits on some CPUs: a checkpoint is resumed only by a
    run that computes as the one that wrote it. A lab's nested run (`lora/seed-1`) is not another config's."""
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "train.jsonl"
    data.write_text('{"text": "a"}\n')
    monkeypatch.setenv("LAB_THREADS", "2")
    nested = checkpoint_dir("lora/seed-1", {"lr": 1e-3}, [data])
    first = checkpoint_dir("lora", {"lr": 1e-3}, [data])
    assert nested.exists(), "the lab's own run left its nested run's checkpoints alone"
    monkeypatch.setenv("LAB_THREADS", "1")
    assert checkpoint_dir("lora", {"lr": 1e-3}, [data]) != first
    monkeypatch.setenv("LAB_THREADS", "2")
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx512")
    assert checkpoint_dir("lora", {"lr": 1e-3}, [data]) != first


def test_a_saved_tokenizer_does_not_depend_on_whether_the_hub_was_reachable(tmp_path):
    """HF_HUB_OFFLINE is how one process may reach the hub: a model directory saved under it must hold the same
    bytes as one saved without it, or DVC's hash of every model would follow the environment."""
    import os
    import subprocess
    import sys

    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<|end|>": 0, "<|pad|>": 1, "a": 2}
    PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="a")), eos_token="<|end|>",
                            pad_token="<|pad|>").save_pretrained(tmp_path / "source")
    saved = {}
    for offline in ("1", "0"):
        out = tmp_path / f"offline-{offline}"
        script = f"from labs.core.models import load_tokenizer; load_tokenizer({str(tmp_path / 'source')!r})" \
                 f".save_pretrained({str(out)!r})"
        env = {**os.environ, "HF_HUB_OFFLINE": offline}
        subprocess.run([sys.executable, "-c", script], check=True, env=env, capture_output=True)
        saved[offline] = (out / "tokenizer_config.json").read_text()
    assert saved["1"] == saved["0"]
    assert "local_files_only" not in json.loads(saved["1"])
