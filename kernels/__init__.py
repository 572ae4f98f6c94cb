"""Pallas attention kernels (GPU Triton, TPU Mosaic, CPU interpret) and their jnp references.

Lowest layer of the zoo: imports nothing from ``zoo``. See
:func:`flash_attention` for training/prefill and :func:`decode_attention` /
:func:`paged_decode_attention` for generation; each has an oracle in
:mod:`kernels.reference` that is also the portable XLA fallback.
"""

from kernels.block_sizes import (get_pallas_block_sizes, pallas_block_sizes,
                                 set_pallas_block_sizes)
from kernels.decode_attention import decode_attention, paged_decode_attention
from kernels.flash_attention import flash_attention
from kernels.from_mask_info import attention_from_mask_info
from kernels.reference import (attention_reference, decode_attention_reference,
                               paged_decode_attention_reference)

__all__ = [
    "flash_attention",
    "decode_attention",
    "paged_decode_attention",
    "attention_from_mask_info",
    "set_pallas_block_sizes",
    "get_pallas_block_sizes",
    "pallas_block_sizes",
    "attention_reference",
    "decode_attention_reference",
    "paged_decode_attention_reference",
]
