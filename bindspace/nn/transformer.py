"""The transformer trunk every modality shares: timm's pre-norm ``Block`` with stochastic depth, and
ImageBind's learned key/value bias (:class:`KVBiasAttention`).

Kept apart from :mod:`bindspace.nn.layers` because timm's import costs about 2 s here: checking a config
needs the modality registry (which builds preprocessors from ``layers``), not the trunk.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Attention, Block
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint


class KVBiasAttention(Attention):
    """timm attention plus one learned key/value pair every query attends to (ImageBind's ``add_bias_kv``).

    As ``torch.nn.MultiheadAttention(add_bias_kv=True)``: ``bias_k``/``bias_v`` ``(1, 1, W)`` are appended
    to the projected keys and values (split over heads like them), and no mask ever hides them.
    """

    def __init__(self, dim: int, num_heads: int = 8, **kwargs) -> None:
        super().__init__(dim, num_heads=num_heads, **kwargs)
        width = self.num_heads * self.head_dim
        self.bias_k = nn.Parameter(torch.empty(1, 1, width))
        self.bias_v = nn.Parameter(torch.empty(1, 1, width))
        nn.init.xavier_normal_(self.bias_k)  # nn.MultiheadAttention's initialisation
        nn.init.xavier_normal_(self.bias_v)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
        b, n, _ = x.shape
        h, d = self.num_heads, self.head_dim
        q, k, v = self.qkv(x).reshape(b, n, 3, h, d).permute(2, 0, 3, 1, 4).unbind(0)  # each (B, h, N, d)
        k = torch.cat([k, self.bias_k.view(1, h, 1, d).expand(b, -1, -1, -1)], dim=2)  # (B, h, N + 1, d)
        v = torch.cat([v, self.bias_v.view(1, h, 1, d).expand(b, -1, -1, -1)], dim=2)
        if is_causal:
            attn_mask = torch.ones(n, n, dtype=torch.bool, device=x.device).tril()
        if attn_mask is not None:  # the bias key is visible to every query
            attn_mask = F.pad(attn_mask, (0, 1), value=True if attn_mask.dtype == torch.bool else 0.0)
        dropout = self.attn_drop.p if self.training else 0.0
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout)
        x = self.norm(x.transpose(1, 2).reshape(b, n, h * d))
        return self.proj_drop(self.proj(x))


class TransformerTrunk(nn.Module):
    """Pre-norm transformer blocks (timm ``Block``) with stochastic depth rising linearly to ``drop_path``.

    ``kv_bias``: a learned key/value pair in every attention (:class:`KVBiasAttention`; ImageBind's
    audio, depth, thermal and IMU trunks). ``norm_eps``: the blocks' LayerNorm epsilon (ImageBind: 1e-6).
    """

    def __init__(
        self,
        width: int,
        depth: int,
        heads: int,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        pre_norm: bool = False,
        causal: bool = False,
        kv_bias: bool = False,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"trunk width {width} is not divisible by its {heads} heads")
        rates = torch.linspace(0, drop_path, depth, device="cpu").tolist()  # plain floats, even under a meta device
        self.pre_norm = nn.LayerNorm(width, eps=1e-6) if pre_norm else nn.Identity()
        norm = partial(nn.LayerNorm, eps=norm_eps)
        blocks = [Block(width, heads, mlp_ratio=mlp_ratio, qkv_bias=True, drop_path=r, norm_layer=norm) for r in rates]
        if kv_bias:  # swapped in after construction: works with every timm Block signature
            for block in blocks:
                block.attn = KVBiasAttention(width, heads, qkv_bias=True)
        self.blocks = nn.ModuleList(blocks)
        self.causal = causal
        self.grad_checkpointing = False

    def forward(self, tokens: Tensor, mask: Tensor | None = None) -> Tensor:
        attn_mask = None
        if mask is not None and not self.causal:
            # (B, 1, 1, N): every query may attend to valid keys only.
            attn_mask = mask[:, None, None, :]
        x = self.pre_norm(tokens)
        for block in self.blocks:
            if self.grad_checkpointing and self.training:
                x = checkpoint(block, x, attn_mask, self.causal, use_reentrant=False)
            else:
                x = block(x, attn_mask=attn_mask, is_causal=self.causal)
        return x
