"""Weight initialisation schemes, chosen by ``model.init``.

``fairseq`` (the translation presets): token embeddings N(0, d^-1/2) multiplied by √d in the forward pass
(Vaswani et al. 2017), Xavier on the attention projections. Right for post-norm encoder-decoders, and what
Wright & Gonzalez 2021 trained.

``gpt2`` (the LM presets): every linear and embedding weight N(0, 0.02), biases zero, the residual projections
(attention ``out_proj``, feed-forward ``fc2``) N(0, 0.02/√N) with N the number of residual branches (Radford et
al. 2019, GPT-2 §2.3; nanoGPT uses N = 2·n_layer), and no √d on the embedding. Why an LM needs it: with a tied
output projection and the √d scale, the input token dominates the residual stream at init (norm √d against the
positions' 1), so after the final LayerNorm each position's own-symbol logit is ≈ √d·‖e‖² ≈ √d while the others
are O(1): the model starts by predicting its input symbol, and the loss starts near √d (≈ 11 at d = 128, 16 at
d = 256) instead of ln V. At std 0.02 every logit starts within ≈ 0.02·d of the rest and the loss near ln V.
Kernel parameters (Hedgehog's maps, random draws) are the kernel's own and never touched here.
"""

from __future__ import annotations

import math

from torch import nn

from kernel_attention.kernels.base import Kernel

INITS = ("fairseq", "gpt2")
GPT2_STD = 0.02
RESIDUAL_PROJECTIONS = ("out_proj", "fc2")  # the last linear of each residual branch


def gpt2_init_(model: nn.Module) -> None:
    """Re-initialise ``model``'s linear and embedding weights in place, GPT-2 style (see the module docstring)."""
    kernel_params = {id(p) for m in model.modules() if isinstance(m, Kernel) for p in m.parameters()}
    residual = [m for name, m in model.named_modules() if name.rsplit(".", 1)[-1] in RESIDUAL_PROJECTIONS]
    n_branches = max(len(residual), 1)
    for module in model.modules():
        if isinstance(module, Kernel) or any(id(p) in kernel_params for p in module.parameters(recurse=False)):
            continue
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=GPT2_STD)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=GPT2_STD)
            if module.padding_idx is not None:
                nn.init.zeros_(module.weight[module.padding_idx])
    for m in residual:
        nn.init.normal_(m.weight, mean=0.0, std=GPT2_STD / math.sqrt(n_branches))


def embedding_scale(init: str, d_model: int) -> float:
    """What the embedder multiplies token embeddings by: √d for fairseq's init, 1 for GPT-2's."""
    return math.sqrt(d_model) if init == "fairseq" else 1.0
