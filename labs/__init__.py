"""LLM Lab: one module per lab over a small shared core (labs/core)."""

import logging

from labs.core import kernels

# Before anything imports torch: the CPU kernels' code paths are chosen on first use (labs/core/kernels.py).
kernels.pin()

# bitsandbytes (imported by peft and trl) warns at import on AVX512-BF16 CPUs that it cannot fetch an
# optional fused 4-bit kernel from the hub; offline it uses its dequantize-then-matmul path, which is
# what qlora measures. The warning would break every lab's one-line error output.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
# torchao (imported by transformers and peft once installed) logs at import that its CUDA-only extensions
# do not load on a CPU, and torch warns about how torchao registers two enums: noise, not errors.
logging.getLogger("torchao").setLevel(logging.ERROR)
logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
