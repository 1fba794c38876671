"""Building blocks shared by every modality: tokenisers, the transformer trunk, heads.

Preprocessors map model input to ``(tokens, mask)``: tokens ``(B, N, W)`` and a boolean mask
``(B, N)`` of valid tokens, or ``None`` when every token is valid. Trunks map tokens to tokens;
heads pool and project to the shared ``embed_dim``.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Attention, Block
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

Tokens = tuple[Tensor, Tensor | None]


def _check_shape(x: Tensor, expected: tuple[int | None, ...], what: str) -> None:
    ok = x.ndim == len(expected) and all(e is None or e == s for e, s in zip(expected, x.shape))
    if not ok:
        want = "(" + ", ".join("*" if e is None else str(e) for e in expected) + ")"
        raise ValueError(f"{what}: expected shape {want}, got {tuple(x.shape)}")


class PatchTokenizer(nn.Module):
    """Image-like input ``(B, C, H, W)`` -> CLS + patch tokens with learnable positions.

    ImageBind's RGBDT/audio/thermal stems: a conv whose kernel is the patch and whose stride may be
    smaller (audio uses 16x16 patches at stride 10, so patches overlap), an optional LayerNorm on the
    patch embeddings (ImageBind norms every stem except vision), one CLS token.

    ``frames > 1``: ImageBind's vision stem, which repeats a still image into a ``frames``-frame clip and
    patches it with a ``(frames, patch, patch)`` Conv3d (the same function as a Conv2d whose kernel is
    the sum of the temporal slices, but with ImageBind's parameters, so its weights load as they are).
    """

    def __init__(
        self,
        in_chans: int,
        input_size: tuple[int, int],
        width: int,
        patch_size: int,
        stride: int | None = None,
        norm: bool = True,
        frames: int = 1,
    ) -> None:
        super().__init__()
        stride = stride or patch_size
        if frames < 1:
            raise ValueError(f"frames must be at least 1, got {frames}")
        h, w = input_size
        if h < patch_size or w < patch_size:
            raise ValueError(f"input {input_size} is smaller than one patch of {patch_size}")
        self.in_chans, self.input_size = in_chans, (h, w)
        self.grid = ((h - patch_size) // stride + 1, (w - patch_size) // stride + 1)
        self.frames = frames
        if frames == 1:
            self.proj = nn.Conv2d(in_chans, width, kernel_size=patch_size, stride=stride, bias=False)
        else:
            kernel, strides = (frames, patch_size, patch_size), (frames, stride, stride)
            self.proj = nn.Conv3d(in_chans, width, kernel_size=kernel, stride=strides, bias=False)
        self.norm = nn.LayerNorm(width) if norm else nn.Identity()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid[0] * self.grid[1], width))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def forward(self, x: Tensor) -> Tokens:
        _check_shape(x, (None, self.in_chans, *self.input_size), "patch tokenizer input")
        if self.frames > 1:
            x = x[:, :, None].repeat(1, 1, self.frames, 1, 1)  # (B, C, frames, H, W): a still "video"
        x = self.norm(self.proj(x).flatten(2).transpose(1, 2))  # (B, N, W)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        return torch.cat([cls, x], dim=1) + self.pos_embed, None


class SequencePatchTokenizer(nn.Module):
    """Multichannel sequence ``(B, C, T)`` -> CLS + tokens of ``patch`` consecutive steps (ImageBind IMU).

    Each token is a Linear over a flattened ``C x patch`` window (48 features for 6 axes x 8 steps).
    """

    def __init__(self, channels: int, length: int, width: int, patch: int, norm: bool = True) -> None:
        super().__init__()
        if length % patch:
            raise ValueError(f"sequence length {length} is not a multiple of the patch length {patch}")
        self.channels, self.length, self.patch = channels, length, patch
        self.proj = nn.Linear(channels * patch, width, bias=False)
        self.norm = nn.LayerNorm(width) if norm else nn.Identity()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + length // patch, width))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def forward(self, x: Tensor) -> Tokens:
        _check_shape(x, (None, self.channels, self.length), "sequence tokenizer input")
        b = x.shape[0]
        x = x.unfold(2, self.patch, self.patch)  # (B, C, N, P)
        x = x.permute(0, 2, 1, 3).reshape(b, -1, self.channels * self.patch)  # (B, N, C*P)
        x = self.norm(self.proj(x))
        cls = self.cls_token.expand(b, -1, -1)
        return torch.cat([cls, x], dim=1) + self.pos_embed, None


class TextTokenEmbedding(nn.Module):
    """Token ids ``{"input_ids", "attention_mask"}`` ``(B, L)`` -> embeddings + positions (CLIP text).

    ``eos_argmax``: also accept a bare ``(B, L)`` id tensor, CLIP's and ImageBind's text input, whose
    end-of-text token is the largest id (``argmax`` finds it); the mask then ends there.
    """

    def __init__(self, vocab_size: int, context_length: int, width: int, eos_argmax: bool = False) -> None:
        super().__init__()
        self.context_length = context_length
        self.eos_argmax = eos_argmax
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.pos_embed = nn.Parameter(torch.zeros(1, context_length, width))
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.pos_embed, std=0.01)

    def forward(self, x: dict[str, Tensor] | Tensor) -> Tokens:
        if isinstance(x, Tensor):
            if not self.eos_argmax:
                raise ValueError("text input must be {'input_ids', 'attention_mask'}; a bare id tensor needs a "
                                 "tokenizer whose end-of-text is the largest id (CLIP BPE)")  # fmt: skip
            ids = x
            _check_shape(ids, (None, self.context_length), "text input_ids")
            mask = torch.arange(ids.shape[1], device=ids.device) <= ids.argmax(dim=1, keepdim=True)  # (B, L)
        else:
            ids, mask = x["input_ids"], x["attention_mask"]
            _check_shape(ids, (None, self.context_length), "text input_ids")
        return self.token_embedding(ids) + self.pos_embed, mask.bool()


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


class Head(nn.Module):
    """LayerNorm -> pool (cls | eos | mean) -> dropout -> Linear to the shared space (no bias, as ImageBind)."""

    def __init__(self, width: int, embed_dim: int, pool: str = "cls", dropout: float = 0.0) -> None:
        super().__init__()
        if pool not in ("cls", "eos", "mean"):
            raise ValueError(f"head pool must be one of cls, eos, mean; got {pool!r}")
        self.pool = pool
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.dropout = nn.Dropout(dropout)
        self.proj = nn.Linear(width, embed_dim, bias=False)

    @property
    def cacheable(self) -> bool:
        """Whether :meth:`select` gives a per-sample feature the head can finish from (cls, eos).

        LayerNorm acts per token, so norm-then-pick equals pick-then-norm for one token; a mean over
        normed tokens has no such form.
        """
        return self.pool in ("cls", "eos")

    def select(self, tokens: Tensor, mask: Tensor | None = None) -> Tensor:
        """(B, N, W) trunk tokens -> (B, W) the pooled token, before the norm (cls and eos pooling)."""
        if self.pool == "cls":
            return tokens[:, 0]
        if self.pool == "eos":
            if mask is None:
                raise ValueError("eos pooling needs a token mask")
            last = mask.long().sum(dim=1).clamp(min=1) - 1  # index of the last valid token
            return tokens[torch.arange(tokens.shape[0], device=tokens.device), last]
        raise ValueError(f"{self.pool!r} pooling has no per-token feature to select")

    def project(self, pooled: Tensor) -> Tensor:
        """(B, W) pooled token -> (B, embed_dim): the head's trainable part after the selection."""
        return self.proj(self.dropout(self.norm(pooled)))

    def forward(self, tokens: Tensor, mask: Tensor | None = None) -> Tensor:
        if self.cacheable:
            return self.project(self.select(tokens, mask))
        x = self.norm(tokens)  # (B, N, W)
        w = torch.ones(x.shape[:2], device=x.device) if mask is None else mask.to(x.dtype)
        x = (x * w[..., None]).sum(1) / w.sum(1, keepdim=True).clamp(min=1.0)
        return self.proj(self.dropout(x))


class Normalize(nn.Module):
    """L2-normalise the last dimension (the postprocessor of every modality)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(x, dim=-1)
