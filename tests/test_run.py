"""Run helpers: resumable checkpoints, fingerprints."""

import io
import json
from types import SimpleNamespace

from labs.core.run import checkpoint_dir, last_checkpoint, show_progress


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


class Terminal(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def progress_of_a_run(tty: bool) -> str:
    """What show_progress writes for an evaluation, four steps logged every second step, and one more evaluation."""
    from transformers import PrinterCallback

    callbacks = [PrinterCallback()]
    trainer = SimpleNamespace(callback_handler=SimpleNamespace(callbacks=callbacks), add_callback=callbacks.append,
                              remove_callback=lambda kind: callbacks.remove(next(c for c in callbacks
                                                                                 if isinstance(c, kind))))
    stream = Terminal(tty)
    show_progress(trainer, "sft", stream)
    show_progress(trainer, "sft", stream)  # a second call (fit, then train_resumable) adds nothing
    assert len(callbacks) == 1 and type(callbacks[0]).__name__ == "ProgressLine"
    line, state = callbacks[0], SimpleNamespace(global_step=0, max_steps=4, num_input_tokens_seen=0)
    line.on_log(None, state, None, logs={"eval_loss": 2.5})
    line.on_train_begin(None, state, None)
    for step in range(1, 5):
        state.global_step, state.num_input_tokens_seen = step, 100 * step
        line.on_step_end(None, state, None)
        if step % 2 == 0:  # a trainer's loss, or an RL trainer's first loss term
            line.on_log(None, state, None, logs={"loss": 1 / step} if step < 4 else {"loss/policy_avg": 1 / step})
    line.on_train_end(None, state, None)
    line.on_log(None, state, None, logs={"eval_loss": 0.5})
    return stream.getvalue()


def test_progress_is_one_line_redrawn_on_a_terminal_and_plain_lines_in_a_log():
    log = progress_of_a_run(tty=False).splitlines()
    assert "\r" not in "".join(log) and len(log) == 4, log
    assert log[0] == "sft: eval loss 2.5000" and log[3] == "sft: eval loss 0.5000"
    assert log[1].startswith("sft: step 2/4 (50%)  loss 0.5000  ") and log[1].endswith(" left")
    assert log[2].startswith("sft: step 4/4 (100%)  loss 0.2500  ") and " tok/s  0:00 left" in log[2]

    screen = progress_of_a_run(tty=True)
    assert screen.count("\r\033[K") == 5 and screen.count("\n") == 3  # 4 redraws and the last; 2 evaluations
    assert screen.split("\r\033[K")[-1].startswith("sft: step 4/4 (100%)  loss 0.2500")
