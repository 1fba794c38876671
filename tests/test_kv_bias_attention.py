"""KVBiasAttention equals torch.nn.MultiheadAttention(add_bias_kv=True) (ImageBind's attention), masks included."""

from __future__ import annotations

import pytest
import torch

from bindspace.nn.layers import PatchTokenizer
from bindspace.nn.transformer import KVBiasAttention


def _pair(width: int = 16, heads: int = 4) -> tuple[KVBiasAttention, torch.nn.MultiheadAttention]:
    torch.manual_seed(0)
    ours = KVBiasAttention(width, heads, qkv_bias=True).eval()
    ref = torch.nn.MultiheadAttention(width, heads, bias=True, add_bias_kv=True).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.randn_like(p))
        ours.qkv.weight.copy_(ref.in_proj_weight)
        ours.qkv.bias.copy_(ref.in_proj_bias)
        ours.proj.weight.copy_(ref.out_proj.weight)
        ours.proj.bias.copy_(ref.out_proj.bias)
        ours.bias_k.copy_(ref.bias_k)
        ours.bias_v.copy_(ref.bias_v)
    return ours, ref


@pytest.mark.parametrize("mask", ["none", "causal", "padding"])
def test_kv_bias_attention_is_multihead_attention_with_add_bias_kv(mask):
    ours, ref = _pair()
    x = torch.randn(3, 7, 16)
    seq = x.transpose(0, 1)  # (N, B, W): MultiheadAttention's layout
    with torch.no_grad():
        if mask == "none":
            got, want = ours(x), ref(seq, seq, seq, need_weights=False)[0]
        elif mask == "causal":
            additive = torch.full((7, 7), float("-inf")).triu(1)  # ImageBind's text mask
            got, want = ours(x, is_causal=True), ref(seq, seq, seq, need_weights=False, attn_mask=additive)[0]
        else:
            valid = torch.arange(7)[None] < torch.tensor([7, 4, 1])[:, None]  # (B, N) keys that exist
            got = ours(x, attn_mask=valid[:, None, None, :])
            want = ref(seq, seq, seq, need_weights=False, key_padding_mask=~valid)[0]
    torch.testing.assert_close(got, want.transpose(0, 1), atol=1e-5, rtol=1e-5)


def test_two_frame_stem_equals_the_folded_conv2d():
    """ImageBind's repeat-to-2-frames + Conv3d is a Conv2d whose kernel sums the temporal slices."""
    torch.manual_seed(0)
    video = PatchTokenizer(3, (28, 28), 8, 14, norm=False, frames=2)
    still = PatchTokenizer(3, (28, 28), 8, 14, norm=False)
    with torch.no_grad():
        still.proj.weight.copy_(video.proj.weight.sum(dim=2))
        still.cls_token.copy_(video.cls_token)
        still.pos_embed.copy_(video.pos_embed)
    x = torch.randn(2, 3, 28, 28)
    torch.testing.assert_close(video(x)[0], still(x)[0], atol=1e-5, rtol=1e-5)
