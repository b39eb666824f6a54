"""PEFT labs on the tiny project that `built` made through `dvc repro`: lora, qlora, peft_methods."""

import json
from pathlib import Path

import pytest

from labs.core.evaluation import peft_comparison
from tests.conftest import lab

pytestmark = pytest.mark.slow


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def test_lora_trains_a_small_share_and_raises_exact_match(built):
    lora = load(built / "metrics/lora.json")
    base = load(built / "metrics/evaluate.json")["models"]["pretrain"]["exact_match"]["overall"]
    assert lora["method"] == "lora" and lora["trainable_pct"] < 10
    assert lora["trainable_pct"] == round(100 * lora["trainable_parameters"] / lora["parameters"], 3)
    assert lora["val_loss"] < 0.5 * lora["val_loss_before"]
    assert lora["exact_match"]["overall"] >= base + 20, (base, lora["exact_match"])
    shares = lora["trainable_share_by_model"]
    assert shares["Qwen/Qwen2.5-0.5B"]["trainable_pct"] < shares["this base"]["trainable_pct"]
    assert 134e6 < shares["HuggingFaceTB/SmolLM2-135M"]["parameters"] < 136e6, "the real architecture is counted"


def test_lora_saves_the_adapter_alone_and_a_merged_model(built):
    adapter, merged = built / "models/lora/adapter", built / "models/lora/merged"
    assert {"adapter_config.json", "adapter_model.safetensors", "run_card.json"} <= {p.name for p in adapter.iterdir()}
    assert (merged / "model.safetensors").exists() and not (merged / "adapter_config.json").exists()
    assert (adapter / "adapter_model.safetensors").stat().st_size < 0.2 * (merged / "model.safetensors").stat().st_size
    assert load(built / "metrics/lora.json")["merged_matches_adapter"] == 100


def test_merged_model_answers_exactly_like_base_plus_adapter(built):
    """Loaded from disk as a user would: PEFT's base+adapter and the plain merged model give the same
    greedy completions on every held-out prompt (and logits equal to float rounding)."""
    import torch
    from peft import PeftModel

    from labs.core.data import read_jsonl
    from labs.core.evaluation import generate
    from labs.core.models import load_model, load_tokenizer

    tokenizer = load_tokenizer(built / "models/lora/adapter")
    with_adapter = PeftModel.from_pretrained(load_model(built / "models/pretrain"), built / "models/lora/adapter")
    merged = load_model(built / "models/lora/merged")
    prompts = [r["prompt"] for r in read_jsonl(built / "data/prepared/sft_test.jsonl", "sft")]
    adapter_answers, _ = generate(with_adapter, tokenizer, prompts, 40, 50)
    merged_answers, _ = generate(merged, tokenizer, prompts, 40, 50)
    assert adapter_answers == merged_answers
    assert len(set(merged_answers)) > 10, "the answers differ from prompt to prompt"
    ids = tokenizer(prompts[:8], return_tensors="pt", padding=True)
    with torch.no_grad():
        torch.testing.assert_close(with_adapter(**ids).logits, merged(**ids).logits, atol=1e-4, rtol=1e-4)


def test_qlora_trains_lora_on_a_4bit_base(built):
    qlora = load(built / "metrics/qlora.json")
    assert qlora["quantization"]["quant_type"] == "nf4" and qlora["quantization"]["double_quant"]
    assert qlora["base_memory_mb"]["ratio"] < 0.3, "4-bit linears: under a third of the fp32 footprint"
    assert qlora["val_loss"] < 0.5 * qlora["val_loss_before"]
    base = load(built / "metrics/evaluate.json")["models"]["pretrain"]["exact_match"]["overall"]
    assert qlora["exact_match"]["overall"] >= base + 20
    assert (built / "models/qlora/adapter/adapter_model.safetensors").exists()
    assert (built / "models/qlora/merged/model.safetensors").exists()


def test_peft_table_has_a_row_per_method_and_every_adapter_is_smaller(built):
    table = peft_comparison(built / "metrics")
    assert [r["method"] for r in table] == ["full SFT", "lora", "qlora", "dora", "prefix", "prompt", "ia3"]
    full = table[0]
    assert full["trainable_pct"] == 100
    for r in table[1:]:
        assert r["trainable_parameters"] < 0.1 * full["trainable_parameters"], r
        assert r["adapter_mb"] < 0.2 * full["adapter_mb"], r
        assert r["peak_rss_mb"] > 50 and r["train_time_s"] > 0 and r["val_loss"] > 0
    methods = load(built / "metrics/peft_methods.json")["methods"]
    for name, m in methods.items():
        assert m["val_loss"] < m["val_loss_before"], name
        assert (built / "models/peft_methods" / name / "adapter_config.json").exists()


def test_a_method_with_seeds_reports_exact_match_over_each_seed(built):
    """dora asks for one more seed in the tiny build: its row carries the spread over both runs, the project seed's
    run first; a method that asks for none has no spread."""
    peft = load(built / "metrics/peft_methods.json")
    spread = peft["methods"]["dora"]["seed_spread"]
    assert spread["seeds"] == [1337, 1]
    runs = [spread["exact_match"][str(seed)]["overall"] for seed in spread["seeds"]]
    assert runs[0] == peft["methods"]["dora"]["exact_match"]["overall"]
    assert spread["overall_min"] == min(runs) and spread["overall_max"] == max(runs)
    assert abs(spread["overall_mean"] - sum(runs) / 2) < 0.01
    assert abs(spread["overall_sd"] - abs(runs[0] - runs[1]) / 2 ** 0.5) < 0.01
    assert (built / "plots/peft_methods/dora/seed-1").is_dir(), "the rerun's loss curves beside the first run's"
    rows = {r["method"]: r for r in peft_comparison(built / "metrics")}
    assert rows["dora"]["exact_match_seeds"]["seeds"] == [1337, 1]
    assert rows["prefix"]["exact_match_seeds"] is None and "seed_spread" not in peft["methods"]["prefix"]


@pytest.mark.long(38)
def test_every_method_is_one_param_away(built, tmp_path):
    """`-S lora.method=...` (what `dvc exp run -S` passes too) switches the lab's method. Run in a copy so
    the shared built project stays as DVC left it."""
    import shutil

    for part in ("labs", "params.yaml", "data/prepared", "models/pretrain"):
        copy = shutil.copytree if (built / part).is_dir() else shutil.copy
        (tmp_path / part).parent.mkdir(parents=True, exist_ok=True)
        copy(built / part, tmp_path / part)
    for method in ("dora", "prefix"):  # one that merges into the weights, one that cannot (peft_methods runs all)
        lab("lora", "-S", f"lora.method={method}", "-S", "lora.max_steps=2", "-S", "evaluate.max_new_tokens=2",
            cwd=tmp_path)
        metrics = load(tmp_path / "metrics/lora.json")
        assert metrics["method"] == method and metrics["steps"] == 2
        assert (tmp_path / "models/lora/merged").exists() == (method == "dora")
    bad = lab("lora", "-S", "lora.method=adapterx", cwd=tmp_path, check=False)
    assert bad.returncode == 2 and "lora.method: expected one of" in bad.stderr
    unknown = lab("lora", "-S", 'lora.trainable_tokens=["<|nope|>"]', cwd=tmp_path, check=False)
    assert unknown.returncode == 2 and "lora.trainable_tokens: '<|nope|>' is not a token" in unknown.stderr
    assert load(tmp_path / "metrics/lora.json")["method"] == "prefix", "a rejected run leaves the last metrics"


def test_gradients_reach_every_4bit_layer_after_an_evaluation_pass(tmp_path):
    """The validation pass before training must not switch bitsandbytes' CPU 4-bit matmul to its
    inference-only kernel (bitsandbytes 0.50.2 does on AVX512-BF16 CPUs unless told not to)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from labs.qlora import QLoraParams, load_quantized

    config = LlamaConfig(vocab_size=64, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=2, intermediate_size=128)
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    model = get_peft_model(load_quantized(tmp_path, QLoraParams()),
                           LoraConfig(r=4, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    ids = torch.randint(0, 64, (2, 12))
    model.eval()
    with torch.no_grad():
        model(input_ids=ids)
    model.train()
    model(input_ids=ids, labels=ids).loss.backward()
    first = model.base_model.model.model.layers[0].self_attn.q_proj
    assert type(first.base_layer).__name__ == "Linear4bit"
    assert first.lora_B.default.weight.grad.abs().sum() > 0, "no gradient reached the first layer"
