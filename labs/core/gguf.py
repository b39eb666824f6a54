"""Export to GGUF, llama.cpp's model file, with llama.cpp's own converter: `quantize` measures GGUF rows in
llama.cpp's runtime and `serve` runs llama-server on the export."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from pathlib import Path

from labs.core.data import DataError

LLAMA_CPP = Path(os.environ.get("LLAMA_CPP_DIR", "build/llama.cpp"))  # `just llama-cpp` puts the converter here


# llama.cpp's converter names a BPE pre-tokenizer by hashing how it splits a test string, and stops on one it
# does not know, as this project's own tokenizer is. Ours splits digits one by one and then applies GPT-2's
# byte-level regex: exactly StarCoder's pre-tokenizer, which llama.cpp implements as "starcoder". This shim
# answers that for this one configuration; any other unknown tokenizer still fails as upstream intends.
# (`tokenizer_agreement` in the metrics checks llama.cpp's tokenization against ours on every test prompt.)
CONVERT = """
import json, sys
from pathlib import Path
llama_cpp, model = Path(sys.argv[1]), Path(sys.argv[2])
sys.path[:0] = [str(llama_cpp), str(llama_cpp / "gguf-py")]
from conversion.base import TextModel
STARCODER = {"type": "Sequence", "pretokenizers": [
    {"type": "Digits", "individual_digits": True},
    {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]}
known = TextModel.get_vocab_base_pre
def get_vocab_base_pre(self, tokenizer):
    try:
        return known(self, tokenizer)
    except NotImplementedError:
        if json.loads((model / "tokenizer.json").read_text()).get("pre_tokenizer") == STARCODER:
            return "starcoder"
        raise
TextModel.get_vocab_base_pre = get_vocab_base_pre
sys.argv = ["convert_hf_to_gguf.py", *sys.argv[2:]]
import convert_hf_to_gguf
convert_hf_to_gguf.main()
"""


def export_gguf(source: Path, method: str, folder: Path) -> Path:
    """`source` as one GGUF file in `folder` (`method`: gguf_f32, gguf_f16, gguf_q8_0 or gguf_q4_0): llama.cpp's
    converter, then its quantizer for q4_0."""
    converter = LLAMA_CPP / "convert_hf_to_gguf.py"
    if not converter.exists():
        raise DataError(f"{converter}: llama.cpp's HF->GGUF converter is missing; `just llama-cpp` fetches it "
                        f"(or set LLAMA_CPP_DIR to a llama.cpp checkout)")
    kind = method.removeprefix("gguf_")
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"model-{kind}.gguf"
    converted = folder / "model-f16.gguf" if kind == "q4_0" else out  # q4_0 is quantized from the 16-bit file
    proc = subprocess.run([sys.executable, "-c", CONVERT, str(LLAMA_CPP), str(source), "--outfile", str(converted),
                           "--outtype", "f16" if kind == "q4_0" else kind], capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise DataError(f"{source}: llama.cpp's converter failed: {last}")
    if kind == "q4_0":
        try:
            import llama_cpp
        except ImportError as exc:
            raise DataError(f"{method}: llama-cpp-python is not installed ({exc}); `just llama-cpp` builds it") from exc
        settings = llama_cpp.llama_model_quantize_default_params()
        settings.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0
        if llama_cpp.llama_model_quantize(str(converted).encode(), str(out).encode(), ctypes.byref(settings)) != 0:
            raise DataError(f"{converted}: llama.cpp's quantizer failed to write q4_0")
        converted.unlink()
    return out
