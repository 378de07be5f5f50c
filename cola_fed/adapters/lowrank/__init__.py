"""Low Rank: ``g(x) = x A^T B^T`` with ``A [r, d_in]``, ``B [d_out, r]``, scale 1.

Initialised as PEFT's LoRA (A kaiming-uniform, B zero), so ColA Low Rank with r = 8 is LoRA with
``r = 8, lora_alpha = 8``. On a convolution, A is LoRA Conv2d's ``k x k`` kernel to rank r
flattened, and B its ``1 x 1`` convolution to the outputs.
"""

from cola_fed.adapters.lowrank.family import LowRank

__all__ = ["LowRank"]
