"""Building blocks shared by every modality: tokenisers and heads (the transformer trunk, built on timm's
blocks, is :mod:`bindspace.nn.transformer`; its names are importable from here too).

Preprocessors map model input to ``(tokens, mask)``: tokens ``(B, N, W)`` and a boolean mask
``(B, N)`` of valid tokens, or ``None`` when every token is valid. Trunks map tokens to tokens;
heads pool and project to the shared ``embed_dim``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Tokens = tuple[Tensor, Tensor | None]

# Names of bindspace.nn.transformer, which imports timm (about 2 s, most of it torchvision and
# torch._dynamo): the modality registry needs only the tokenisers, so that a config is checked, and a
# typo answered, without timm. Importing one of these names from here imports that module then.
_TRANSFORMER_NAMES = ("KVBiasAttention", "TransformerTrunk")


def __getattr__(name: str):
    if name in _TRANSFORMER_NAMES:
        from bindspace.nn import transformer

        return getattr(transformer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
