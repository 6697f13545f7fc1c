"""A small causal transformer language model, registered with timm: ``timm.create_model("causal_transformer",
num_classes=V)`` (V: the vocabulary size; ``model=causal_transformer``).

Pre-norm blocks (GPT-2's layout, Radford et al. 2019): ``x + attn(LN(x))`` then ``x + mlp(LN(x))``, causal
multi-head self-attention (torch's ``scaled_dot_product_attention`` with ``is_causal=True``) and a GELU MLP of
``mlp_ratio`` x width, learned absolute position embeddings for up to ``context`` positions, a final LayerNorm,
and an output layer tied to the token embedding (logits = LN(x) @ E^T). Built from torch's own modules
(``nn.Embedding``, ``nn.Linear``, ``nn.LayerNorm``, ``nn.Dropout``). Input: int64 token ids (B, T) with T <=
``context``; output: logits (B, T, V).

``weight_norm=True`` puts torch's weight-norm parametrisation (``torch.nn.utils.parametrizations.weight_norm``,
``dim=0``) on every ``nn.Linear`` weight of the blocks (attention in/out, MLP in/out): each output row is
``w_i = g_i v_i / ||v_i||``, so the loss is exactly invariant to the scale of each row of the direction ``v``
(the parameter ``...parametrizations.weight.original1``; ``original0`` is the gain ``g``) and its gradient is
orthogonal to ``v``: the weights SGDP / AdamP test and project, and the diagnostics count as scale-invariant
(``train.diagnostics.normalised_weights``). The embedding (tied to the output layer) is not normalised. Without
it, no weight of this network is scale-invariant: pre-norm puts a LayerNorm *before* each Linear, not after.

Initialisation (GPT-2): every Linear and the embeddings N(0, 0.02), biases 0, and the two Linears that write into
the residual stream (attention out, MLP out) N(0, 0.02 / sqrt(2 depth)); weight norm starts with g = ||v_i||, so
it changes no initial output.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.models import register_model
from torch import nn
from torch.nn.utils.parametrizations import weight_norm as apply_weight_norm

from adamp_repro.models.layers import drop_timm_plumbing, reject_pretrained

# The timm names of the networks that take token ids rather than images (``models.input_kind``).
TOKEN_MODELS: set[str] = set()


class CausalSelfAttention(nn.Module):
    """(B, T, C) -> (B, T, C): ``heads`` heads of width C / heads, position t attends to positions <= t."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"model.kwargs.width={width} is not a multiple of model.kwargs.heads={heads}")
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        q, k, v = (
            part.view(batch, length, self.heads, width // self.heads).transpose(1, 2)
            for part in self.qkv(x).split(width, dim=2)
        )
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
        )
        return self.drop(self.proj(y.transpose(1, 2).reshape(batch, length, width)))


class MLP(nn.Module):
    """(B, T, C) -> (B, T, C): Linear(C, ratio C), GELU, Linear(ratio C, C), dropout."""

    def __init__(self, width: int, ratio: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, ratio * width)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(ratio * width, width)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.act(self.fc1(x))))


class Block(nn.Module):
    """One pre-norm block. The two LayerNorms are registered before the Linears they feed, so no Linear is
    followed by a sibling norm layer: none reads as scale-invariant to the structural rule, truly so."""

    def __init__(self, width: int, heads: int, ratio: int, dropout: float) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(width)
        self.ln2 = nn.LayerNorm(width)
        self.attn = CausalSelfAttention(width, heads, dropout)
        self.mlp = MLP(width, ratio, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class CausalTransformer(nn.Module):
    """The language model of the module docstring. ``num_classes``: the vocabulary size V."""

    input_kind = "tokens"

    def __init__(
        self,
        num_classes: int,
        width: int = 128,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: int = 4,
        context: int = 256,
        dropout: float = 0.1,
        weight_norm: bool = False,
    ) -> None:
        super().__init__()
        self.num_classes, self.context, self.weight_norm = num_classes, context, bool(weight_norm)
        self.tok = nn.Embedding(num_classes, width)
        self.pos = nn.Parameter(torch.zeros(context, width))
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio, dropout) for _ in range(depth))
        self.ln_f = nn.LayerNorm(width)
        self._init(depth)
        if self.weight_norm:
            for module in self.blocks.modules():
                if isinstance(module, nn.Linear):
                    apply_weight_norm(module, "weight", dim=0)

    def _init(self, depth: int) -> None:
        for name, module in self.named_modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                residual = name.endswith(("attn.proj", "mlp.fc2"))
                nn.init.normal_(module.weight, 0.0, 0.02 / math.sqrt(2 * depth) if residual else 0.02)
            if isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.pos, 0.0, 0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        length = tokens.shape[1]
        if length > self.context:
            raise ValueError(f"a window of {length} tokens is longer than the model's context {self.context}")
        x = self.drop(self.tok(tokens) + self.pos[:length])
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x) @ self.tok.weight.t()


def _token_model(fn):
    TOKEN_MODELS.add(fn.__name__)
    return register_model(fn)


@_token_model
def causal_transformer(pretrained: bool = False, **kwargs) -> CausalTransformer:
    """A small pre-norm causal transformer with tied embeddings (module docstring); keywords: width, depth,
    heads, mlp_ratio, context, dropout, weight_norm."""
    reject_pretrained("causal_transformer", pretrained)
    kwargs = drop_timm_plumbing(kwargs)
    kwargs.pop("in_chans", None)
    return CausalTransformer(**kwargs)
