"""Attention as the analysis and the supernet see it.

torch's ``nn.MultiheadAttention`` is one module holding the query/key/value projections (fused
``in_proj_weight``: rows ``[q; k; v]``, each ``heads * head_dim``) and the output projection. A
pruned attention keeps some heads: the matching rows of q, k and v and the matching columns of the
output projection, so its inner width (``heads * head_dim``) is no longer its embedding width, which
``nn.MultiheadAttention`` cannot represent. :class:`Attention` is the plain module that can (what
``extract`` returns); :class:`ElasticMultiheadAttention` is the elastic one made from the user's
module (same parameters). Both compute :func:`attention`, written to export to ONNX with a dynamic
batch and sequence length.

``nn.TransformerEncoderLayer`` and ``nn.TransformerEncoder`` choose at run time between a fused
kernel that reads their full weights and the composed path; fx cannot trace that choice. The tracer
traces their composed path (:func:`encoder_layer_forward`, :func:`encoder_forward`), and a converted
model runs it through :class:`EncoderLayer` / :class:`Encoder`, which hold the same submodules.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nasprune.elastic.modules import ElasticModule, SliceCache, _copy, count, sel_key, take


def _additive(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    if mask is None or mask.is_floating_point():
        return mask
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))


def attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    in_proj_weight: torch.Tensor,
    in_proj_bias: torch.Tensor | None,
    out_proj_weight: torch.Tensor,
    out_proj_bias: torch.Tensor | None,
    num_heads: int,
    batch_first: bool = False,
    key_padding_mask: torch.Tensor | None = None,
    need_weights: bool = False,
    attn_mask: torch.Tensor | None = None,
    average_attn_weights: bool = True,
    is_causal: bool = False,
    dropout_p: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Multi-head attention as ``nn.MultiheadAttention`` computes it, for any inner width.

    ``in_proj_weight`` is ``[q; k; v]`` (each ``inner`` rows), ``out_proj_weight`` reads ``inner``
    columns; ``num_heads`` divides ``inner``. Masks: ``key_padding_mask`` (batch, source) and a 2-D
    ``attn_mask`` (target, source), boolean (True: not attended) or additive.
    """
    if not batch_first:
        query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
    if attn_mask is not None and attn_mask.dim() != 2:
        raise ValueError("only a 2-D attn_mask (target, source) is supported; per-head masks depend on the heads kept")
    if num_heads == 0:  # every head pruned: the output is the projection's bias
        out = query.new_zeros((*query.shape[:-1], out_proj_weight.shape[0]))
        out = out if out_proj_bias is None else out + out_proj_bias
        return (out if batch_first else out.transpose(0, 1)), None
    if query is key and key is value:
        q, k, v = F.linear(query, in_proj_weight, in_proj_bias).chunk(3, dim=-1)
    else:
        w_q, w_k, w_v = in_proj_weight.chunk(3)
        b_q, b_k, b_v = in_proj_bias.chunk(3) if in_proj_bias is not None else (None, None, None)
        q, k, v = F.linear(query, w_q, b_q), F.linear(key, w_k, b_k), F.linear(value, w_v, b_v)
    head_dim = q.shape[-1] // num_heads
    q, k, v = (t.unflatten(-1, (num_heads, head_dim)).transpose(1, 2) for t in (q, k, v))
    mask = _additive(attn_mask, q.dtype)
    if key_padding_mask is not None:
        pad = _additive(key_padding_mask, q.dtype)[:, None, None, :]
        mask = pad if mask is None else mask + pad
    weights = None
    if need_weights:
        scores = (q * head_dim**-0.5) @ k.transpose(-2, -1)
        if is_causal and mask is None:
            s, t = scores.shape[-2], scores.shape[-1]
            mask = torch.ones(s, t, dtype=torch.bool, device=q.device).triu(1)
            mask = _additive(mask, q.dtype)
        if mask is not None:
            scores = scores + mask
        weights = scores.softmax(dim=-1)
        out = F.dropout(weights, dropout_p) @ v if dropout_p > 0 else weights @ v
        weights = weights.mean(dim=1) if average_attn_weights else weights
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p,
                                             is_causal=is_causal and mask is None)  # fmt: skip
    out = F.linear(out.transpose(1, 2).flatten(2), out_proj_weight, out_proj_bias)
    return (out if batch_first else out.transpose(0, 1)), weights


class Attention(nn.Module):
    """Multi-head attention with an inner width of its own (``heads * head_dim``, which need not be
    the embedding width): what a pruned ``nn.MultiheadAttention`` is extracted as. Its ``forward``
    takes ``nn.MultiheadAttention``'s arguments and returns ``(output, weights or None)``."""

    def __init__(self, in_features: int, num_heads: int, head_dim: int, out_features: int, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, device=None) -> None:  # fmt: skip
        super().__init__()
        inner = num_heads * head_dim
        self.num_heads, self.head_dim, self.batch_first, self.dropout = num_heads, head_dim, batch_first, dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * inner, in_features, device=device))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * inner, device=device)) if bias else None
        self.out_proj = nn.Linear(inner, out_features, bias=bias, device=device)

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):  # fmt: skip
        return attention(
            query, key, value, self.in_proj_weight, self.in_proj_bias, self.out_proj.weight, self.out_proj.bias,
            self.num_heads, self.batch_first, key_padding_mask, need_weights, attn_mask, average_attn_weights,
            is_causal, self.dropout if self.training else 0.0,
        )  # fmt: skip

    def extra_repr(self) -> str:
        return f"heads={self.num_heads}, head_dim={self.head_dim}, batch_first={self.batch_first}"


def supported(mha: nn.MultiheadAttention) -> str | None:
    """Why the analysis cannot prune this attention's heads (None: it can)."""
    if not mha._qkv_same_embed_dim:
        return "MultiheadAttention with kdim/vdim other than embed_dim (separate q/k/v weights)"
    if mha.bias_k is not None or mha.add_zero_attn:
        return "MultiheadAttention with add_bias_kv or add_zero_attn"
    return None


class ElasticMultiheadAttention(ElasticModule):
    """An ``nn.MultiheadAttention`` holding the module's own parameters, running the selected heads.

    Selections (set by ``select``): ``in_sel`` the input features (columns of q/k/v), ``inner_sel``
    the kept heads as features (``heads * head_dim``: the rows of each of q, k, v and the columns of
    the output projection), ``out_sel`` the output features (rows of the output projection).
    """

    def __init__(self, mha: nn.MultiheadAttention):
        super().__init__()
        reason = supported(mha)
        if reason is not None:
            raise ValueError(f"{reason}: the analysis freezes it")
        self.in_proj_weight, self.in_proj_bias = mha.in_proj_weight, mha.in_proj_bias
        self.out_proj = mha.out_proj  # its parameters keep their names in the state dict
        self.num_heads, self.head_dim = mha.num_heads, mha.head_dim
        self.batch_first, self.dropout = mha.batch_first, mha.dropout
        self.inner = mha.embed_dim
        self.in_sel = self.out_sel = self.inner_sel = mha.embed_dim

    def active_in_proj(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        w = self.in_proj_weight.unflatten(0, (3, self.inner))
        w = take(take(w, 1, self.inner_sel), 2, self.in_sel).flatten(0, 1)
        b = self.in_proj_bias
        if b is not None:
            b = take(b.unflatten(0, (3, self.inner)), 1, self.inner_sel).flatten()
        return w, b

    def active_out_proj(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        w = take(take(self.out_proj.weight, 0, self.out_sel), 1, self.inner_sel)
        b = None if self.out_proj.bias is None else take(self.out_proj.bias, 0, self.out_sel)
        return w, b

    @property
    def active_heads(self) -> int:
        return count(self.inner_sel) // self.head_dim

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):  # fmt: skip
        w_in, b_in = self.active_in_proj()
        w_out, b_out = self.active_out_proj()
        return attention(
            query, key, value, w_in, b_in, w_out, b_out, self.active_heads, self.batch_first, key_padding_mask,
            need_weights, attn_mask, average_attn_weights, is_causal, self.dropout if self.training else 0.0,
        )  # fmt: skip

    @torch.no_grad()
    def head_activity(self, query, key, value, key_padding_mask=None, attn_mask=None, is_causal=False, **_):
        """Per active head, the mean |output| it writes (its attention output through its columns of the
        output projection), over the batch and the tokens: the data-driven importance of a head."""
        w_in, b_in = self.active_in_proj()
        w_out, _ = self.active_out_proj()
        heads = self.active_heads
        out = []
        for h in range(heads):
            rows = torch.cat([torch.arange(h * self.head_dim, (h + 1) * self.head_dim) + i * heads * self.head_dim
                              for i in range(3)])  # fmt: skip
            cols = slice(h * self.head_dim, (h + 1) * self.head_dim)
            b = None if b_in is None else b_in[rows]
            o, _ = attention(query, key, value, w_in[rows], b, w_out[:, cols], None, 1, self.batch_first,
                             key_padding_mask, False, attn_mask, True, is_causal)  # fmt: skip
            out.append(o.abs().mean())
        return torch.stack(out)

    def export(self, cache: SliceCache | None = None) -> nn.Module:
        sizes = (*sel_key(self.in_sel), "|", *sel_key(self.inner_sel), "|", *sel_key(self.out_sel))
        m = Attention(count(self.in_sel), self.active_heads, self.head_dim, count(self.out_sel),
                      bias=self.in_proj_bias is not None, batch_first=self.batch_first, dropout=self.dropout,
                      device="meta")  # fmt: skip
        w_in, b_in = self.active_in_proj()
        w_out, b_out = self.active_out_proj()
        m.in_proj_weight = _copy(w_in, cache, (id(self), "in_w", *sizes))
        m.out_proj.weight = _copy(w_out, cache, (id(self), "out_w", *sizes))
        if b_in is not None:
            m.in_proj_bias = _copy(b_in, cache, (id(self), "in_b", *sizes))
        if b_out is not None:
            m.out_proj.bias = _copy(b_out, cache, (id(self), "out_b", *sizes))
        return m.train(self.training)

    def elastic_state(self) -> tuple:
        return (self.in_sel, self.inner_sel, self.out_sel)

    def set_elastic_state(self, state: tuple) -> None:
        self.in_sel, self.inner_sel, self.out_sel = state


# -- torch's encoder modules, on their composed path ---------------------------------------------------


def encoder_layer_forward(m: nn.Module, src, src_mask=None, src_key_padding_mask=None, is_causal=False):
    """``nn.TransformerEncoderLayer``'s composed path (what it computes without its fused kernel)."""
    masks = {"attn_mask": src_mask, "key_padding_mask": src_key_padding_mask, "is_causal": is_causal}

    def sa(x):
        return m.dropout1(m.self_attn(x, x, x, need_weights=False, **masks)[0])

    def ff(x):
        return m.dropout2(m.linear2(m.dropout(m.activation(m.linear1(x)))))

    x = src
    if m.norm_first:
        x = x + sa(m.norm1(x))
        return x + ff(m.norm2(x))
    x = m.norm1(x + sa(x))
    return m.norm2(x + ff(x))


def encoder_forward(m: nn.Module, src, mask=None, src_key_padding_mask=None, is_causal=None):
    """``nn.TransformerEncoder``'s composed path: the layers in turn (called with the input alone when
    there are no masks, so that each is a one-tensor block), then the final norm."""
    out = src
    for layer in m.layers:
        if mask is None and src_key_padding_mask is None:
            out = layer(out)
        else:
            out = layer(out, src_mask=mask, src_key_padding_mask=src_key_padding_mask, is_causal=bool(is_causal))
    return m.norm(out) if m.norm is not None else out


class _Composed(nn.Module):
    """Holds a torch encoder module's submodules (the same objects) and runs its composed path."""

    def __init__(self, source: nn.Module):
        super().__init__()
        for name, value in vars(source).items():
            if not name.startswith("_") and name != "training":
                setattr(self, name, value)
        for name, child in source._modules.items():
            setattr(self, name, child)
        self.training = source.training


class EncoderLayer(_Composed):
    """``nn.TransformerEncoderLayer`` run on its composed path (no fused kernel reading full weights)."""

    def forward(self, src, src_mask=None, src_key_padding_mask=None, is_causal=False):
        return encoder_layer_forward(self, src, src_mask, src_key_padding_mask, is_causal)


class Encoder(_Composed):
    """``nn.TransformerEncoder`` run on its composed path (no nested tensors)."""

    def forward(self, src, mask=None, src_key_padding_mask=None, is_causal=None):
        return encoder_forward(self, src, mask, src_key_padding_mask, is_causal)


COMPOSED = {
    nn.TransformerEncoderLayer: (encoder_layer_forward, EncoderLayer),
    nn.TransformerEncoder: (encoder_forward, Encoder),
}
"""torch modules traced (and, once converted, run) on their composed path."""
