"""Attention processors that carry scene-graph tokens into a video UNet (see docs/graph_conditioning.md).

A diffusers attention layer (``Attention``) delegates its computation to a *processor*. Graph tokens
reach the spatial cross-attention layers (``*.attentions.*.transformer_blocks.*.attn2``) in one of
two ways:

- :class:`GraphAttnProcessor` (graph-only): the layer attends over the graph context instead of the
  text, with its own ``to_k``/``to_v`` (SGDiff's conditioning: the graph is the only context).
- :class:`DecoupledGraphAttnProcessor` (decoupled, IP-Adapter's scheme): the layer's text attention
  is left as it is, and ``graph_scale`` x an attention over the graph context, through new
  ``to_k_graph``/``to_v_graph`` projections, is added to it before ``to_out``.

Every other attention layer (self-attention, temporal layers) gets :class:`PlainAttnProcessor`.
All processors take the same keyword arguments, ``graph_hidden_states``, ``graph_mask`` and
``graph_scale``, because the UNet sends ``cross_attention_kwargs`` to every layer and diffusers
logs a warning per call for every keyword a processor does not name.

Optionally (``position_dim > 0``, the UNet's ``graph_position_dim``; ours, not SGDiff's) the graph
attention's queries also carry *where* they are: fixed Fourier features of each query's position in
the latent, through a learned projection ``to_q_pos`` that starts at zero (so a model gains it
without changing its output), are added to the projected query of the graph branch. Scene-graph
relations are about where objects are, and a query of a small latent otherwise knows its position
only through the convolutions' zero padding. The UNet sends the features of every resolution as
``graph_positions`` (:func:`graph_position_table`).

The ``XFormers...`` variants compute the same thing with xformers' memory-efficient attention;
:func:`install_graph_processors` chooses them with ``xformers=True``.

Masks follow one convention throughout: ``graph_mask`` is bool, True = attend.
"""

from __future__ import annotations

import importlib.util
from typing import Callable

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention
from torch import nn

__all__ = [
    "DecoupledGraphAttnProcessor",
    "graph_position_features",
    "graph_position_table",
    "GRAPH_MODES",
    "GraphAttnProcessor",
    "PlainAttnProcessor",
    "XFormersDecoupledGraphAttnProcessor",
    "XFormersGraphAttnProcessor",
    "XFormersPlainAttnProcessor",
    "install_graph_processors",
    "is_graph_attention_layer",
    "is_xformers_available",
]

GRAPH_MODES = ("graph_only", "decoupled")


def is_xformers_available() -> bool:
    """Whether ``xformers`` can be imported (the ``XFormers...`` processors need it)."""
    return importlib.util.find_spec("xformers") is not None


def _require_xformers() -> None:
    if not is_xformers_available():
        raise ModuleNotFoundError(
            "xformers is not installed: install it (`pip install xformers`, see "
            "https://github.com/facebookresearch/xformers) to use memory-efficient attention, or keep the "
            "default PyTorch SDPA processors",
            name="xformers",
        )


# ---------------------------------------------------------------------------------------------------- helpers


def _match_graph_batch(
    graph_hidden_states: torch.Tensor, graph_mask: torch.Tensor | None, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Bring a graph context to the batch of the attention's queries.

    Args:
        graph_hidden_states: (G, L, C), G = B*F (one context per frame) or B (one per video).
        graph_mask: (G, L) bool, True = attend, or None (attend to every token).
        batch_size: B*F, the batch of ``hidden_states`` in a spatial layer (frames folded ``(b f)``).

    Returns:
        (B*F, L, C) states and (B*F, L) mask (or None); a per-video context is repeated per frame.
    """
    if graph_hidden_states.ndim != 3:
        raise ValueError(
            f"graph_hidden_states must have shape (batch, tokens, channels), got {tuple(graph_hidden_states.shape)}"
        )
    num_graphs, num_tokens = graph_hidden_states.shape[:2]
    if graph_mask is not None:
        if graph_mask.dtype != torch.bool:
            raise TypeError(f"graph_mask must be a bool tensor (True = attend), got dtype {graph_mask.dtype}")
        if graph_mask.shape != (num_graphs, num_tokens):
            raise ValueError(
                f"graph_mask has shape {tuple(graph_mask.shape)} but graph_hidden_states has "
                f"{tuple(graph_hidden_states.shape)}: expected ({num_graphs}, {num_tokens})"
            )
    if num_graphs == batch_size:
        return graph_hidden_states, graph_mask
    if num_graphs == 0 or batch_size % num_graphs != 0:
        raise ValueError(
            f"graph_hidden_states has batch {num_graphs}, which does not fit hidden_states' batch {batch_size}: "
            "expected one context per frame (B*F) or one per video (B)"
        )
    repeats = batch_size // num_graphs  # F: the batch is folded (b f), so contexts repeat per frame
    graph_hidden_states = graph_hidden_states.repeat_interleave(repeats, dim=0)
    if graph_mask is not None:
        graph_mask = graph_mask.repeat_interleave(repeats, dim=0)
    return graph_hidden_states, graph_mask


def graph_position_features(
    height: int, width: int, dim: int, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> torch.Tensor:
    r"""Fixed Fourier features of the positions of an ``height`` x ``width`` grid, row-major as the
    queries of a spatial attention layer are.

    Each cell's centre has coordinates x, y in (-1, 1) (x to the right, y downwards); its features are
    ``sin(f x), cos(f x), sin(f y), cos(f y)`` for ``f = pi / 2 * 2**k``, k = 0 .. dim / 4 - 1 (the
    first pair is monotonic in x across the grid, the last ones resolve neighbouring cells).

    Returns:
        (height * width, dim).
    """
    if dim <= 0 or dim % 4:
        raise ValueError(f"position features need a positive multiple of 4 dimensions, got {dim}")
    if height <= 0 or width <= 0:
        raise ValueError(f"position features need a positive grid size, got {height} x {width}")
    y = (torch.arange(height, dtype=torch.float32, device=device) + 0.5) / height * 2 - 1
    x = (torch.arange(width, dtype=torch.float32, device=device) + 0.5) / width * 2 - 1
    y, x = torch.meshgrid(y, x, indexing="ij")
    freqs = torch.pi / 2 * 2.0 ** torch.arange(dim // 4, dtype=torch.float32, device=device)  # (K,)
    x, y = x.reshape(-1, 1) * freqs, y.reshape(-1, 1) * freqs  # (H*W, K)
    features = torch.stack([x.sin(), x.cos(), y.sin(), y.cos()], dim=-1).flatten(1)  # (H*W, 4K)
    return features.to(dtype) if dtype is not None else features


def graph_position_table(
    height: int, width: int, num_levels: int, dim: int, *, device=None, dtype=None
) -> dict[int, torch.Tensor]:
    """:func:`graph_position_features` of every resolution of a UNet whose ``num_levels`` levels each
    halve the size (diffusers' stride-2 downsampling: ``ceil(size / 2)``), keyed by the number of
    positions, which is how a processor, seeing only (N, H*W, C) queries, finds its own.

    Returns:
        {H*W: (H*W, dim)} for the latent's ``height`` x ``width`` and every smaller level.
    """
    table = {}
    for _ in range(num_levels):
        table.setdefault(height * width, graph_position_features(height, width, dim, device=device, dtype=dtype))
        height, width = (height + 1) // 2, (width + 1) // 2
    return table


class _QueryPosition(nn.Module):
    """The optional position projection of a graph processor: ``to_q_pos`` (position_dim -> inner,
    no bias), zero at the start; absent when ``position_dim`` is 0."""

    def __init__(self, hidden_size: int | None = None, position_dim: int = 0):
        super().__init__()
        if position_dim < 0 or position_dim % 4:
            raise ValueError(f"position_dim must be 0 or a positive multiple of 4, got {position_dim}")
        if position_dim and hidden_size is None:
            raise ValueError("a graph processor with position_dim > 0 needs hidden_size (the layer's inner dimension)")
        self.position_dim = position_dim
        self.to_q_pos = nn.Linear(position_dim, hidden_size, bias=False) if position_dim else None
        if self.to_q_pos is not None:
            with torch.no_grad():
                self.to_q_pos.weight.zero_()  # a no-op on the meta device (diffusers' empty-weight loading)

    @torch.no_grad()
    def reset_position(self, device: torch.device | str | None = None) -> None:
        """``to_q_pos`` = 0 (materialised on ``device`` when it is on the meta device)."""
        if self.to_q_pos is None:
            return
        if self.to_q_pos.weight.is_meta:
            self.to_q_pos.to_empty(device=device or "cpu")
        self.to_q_pos.weight.zero_()

    def _with_position(self, query: torch.Tensor, graph_positions: dict[int, torch.Tensor] | None) -> torch.Tensor:
        """(N, M, inner) query + ``to_q_pos`` of the M positions' features (the query unchanged when off)."""
        if self.to_q_pos is None:
            return query
        if graph_positions is None:
            raise ValueError(
                "this graph processor has position_dim > 0 and needs `graph_positions` (the UNet sends them; "
                "see graph_position_table)"
            )
        features = graph_positions.get(query.shape[1])
        if features is None:
            raise ValueError(
                f"graph_positions has no features for {query.shape[1]} query positions (it has sizes "
                f"{sorted(graph_positions)})"
            )
        return query + self.to_q_pos(features.to(device=query.device, dtype=query.dtype))[None]


class _AttentionProcessorBase:
    """The part every processor shares: the layer's pre- and post-processing, as diffusers'
    ``AttnProcessor2_0`` does it (spatial norm, (N, C, H, W) inputs, group norm, ``to_out``, residual
    connection, output rescaling), and multi-head attention with PyTorch SDPA. The xformers variants
    replace :meth:`_attend` only."""

    def _attend(
        self,
        attn: Attention,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """Multi-head attention.

        Args:
            query: (N, M, inner) projected queries.
            key, value: (N, L, inner) projected keys and values.
            mask: None, or broadcastable to (N, heads, M, L): bool (True = attend) or additive float.

        Returns:
            (N, M, inner).
        """
        batch_size, heads = query.shape[0], attn.heads
        head_dim = key.shape[-1] // heads
        query = query.view(batch_size, -1, heads, head_dim).transpose(1, 2)  # (N, heads, M, d)
        key = key.view(batch_size, -1, heads, head_dim).transpose(1, 2)  # (N, heads, L, d)
        value = value.view(batch_size, -1, heads, head_dim).transpose(1, 2)  # (N, heads, L, d)
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=0.0, scale=attn.scale)
        return out.transpose(1, 2).reshape(batch_size, -1, heads * head_dim).to(query.dtype)  # (N, M, inner)

    @staticmethod
    def _begin(attn: Attention, hidden_states: torch.Tensor, temb: torch.Tensor | None):
        """(N, M, C) or (N, C, H, W) input -> normalised (N, M, C) states, and what :meth:`_end` needs."""
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        image_shape = None
        if hidden_states.ndim == 4:
            image_shape = hidden_states.shape  # (N, C, H, W)
            hidden_states = hidden_states.flatten(2).transpose(1, 2)  # (N, H*W, C)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        return hidden_states, (residual, image_shape)

    @staticmethod
    def _end(attn: Attention, hidden_states: torch.Tensor, saved) -> torch.Tensor:
        """(N, M, inner) attention output -> the layer's output, shaped as its input."""
        residual, image_shape = saved
        hidden_states = attn.to_out[0](hidden_states)  # linear projection
        hidden_states = attn.to_out[1](hidden_states)  # dropout
        if image_shape is not None:
            hidden_states = hidden_states.transpose(1, 2).reshape(image_shape)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor

    @staticmethod
    def _attention_mask(
        attn: Attention, attention_mask: torch.Tensor | None, num_keys: int, batch_size: int
    ) -> torch.Tensor | None:
        """diffusers' additive ``attention_mask`` -> (N, heads, M or 1, L), as ``AttnProcessor2_0``."""
        if attention_mask is None:
            return None
        attention_mask = attn.prepare_attention_mask(attention_mask, num_keys, batch_size)  # (N*heads, ., L)
        return attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])

    @staticmethod
    def _head_norm(attn: Attention, tensor: torch.Tensor, norm: nn.Module | None) -> torch.Tensor:
        """The layer's optional per-head query or key norm (``attn.norm_q``/``norm_k``; none in UNet3D)
        on (N, M, inner) projections."""
        if norm is None:
            return tensor
        batch_size, length, inner = tensor.shape
        return norm(tensor.view(batch_size, length, attn.heads, inner // attn.heads)).flatten(2)

    def _query_and_text(
        self, attn: Attention, hidden_states: torch.Tensor, context: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Query, key and value from the layer's own projections, with its norms: self-attention when
        ``context`` is None. (N, M, C), (N, L, C') -> (N, M, inner), (N, L, inner), (N, L, inner)."""
        query = self._head_norm(attn, attn.to_q(hidden_states), attn.norm_q)
        if context is None:
            context = hidden_states
        elif attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        key = self._head_norm(attn, attn.to_k(context), attn.norm_k)
        return query, key, attn.to_v(context)


def _graph_sdpa_mask(graph_mask: torch.Tensor | None) -> torch.Tensor | None:
    """(N, L) bool, True = attend -> (N, 1, 1, L): broadcast over heads and queries."""
    return None if graph_mask is None else graph_mask[:, None, None, :]


# ---------------------------------------------------------------------------------------------------- processors


class PlainAttnProcessor(_AttentionProcessorBase):
    r"""Plain scaled-dot-product attention (as diffusers' ``AttnProcessor2_0``) for the layers that do
    not see the graph: self-attention and the temporal layers. It accepts ``graph_hidden_states``,
    ``graph_mask``, ``graph_scale`` and ``graph_positions`` and ignores them, so that the UNet can send them to every layer
    without a warning per call."""

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        graph_hidden_states: torch.Tensor | None = None,
        graph_mask: torch.Tensor | None = None,
        graph_scale: float = 1.0,
        graph_positions: dict[int, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        hidden_states, saved = self._begin(attn, hidden_states, temb)
        batch_size = hidden_states.shape[0]
        query, key, value = self._query_and_text(attn, hidden_states, encoder_hidden_states)
        mask = self._attention_mask(attn, attention_mask, key.shape[1], batch_size)
        out = self._attend(attn, query, key, value, mask)
        return self._end(attn, out, saved)


class GraphAttnProcessor(_AttentionProcessorBase, _QueryPosition):
    r"""Graph-only cross-attention: the layer attends over the graph context with its own
    ``to_k``/``to_v``; ``encoder_hidden_states`` (text, or the UNet's zero stand-in) is ignored.

    This is SGDiff's conditioning, where the graph is the only cross-attention context. The layer's
    ``norm_cross`` (if any) is applied to the graph context, as it would be to the context it
    replaces. ``graph_scale`` is accepted for a uniform signature and has no effect here.

    Args:
        hidden_size: the layer's inner dimension (``attn.to_q.out_features``); needed with positions.
        position_dim: 0 (SGDiff's attention, no weights) or the width of the position features whose
            projection ``to_q_pos`` (zero at the start) is added to the query; then the processor's
            weights are part of the UNet's state dict (``...attn2.processor.to_q_pos.weight``).

    Call arguments beyond diffusers' usual ones:
        graph_hidden_states: (B*F or B, L, C) graph context (``GraphContext.hidden_states``); required.
        graph_mask: (B*F or B, L) bool, True = attend; None attends to every token.
        graph_positions: {H*W: (H*W, position_dim)} (:func:`graph_position_table`); required with
            positions, ignored without.
    """

    def __init__(self, hidden_size: int | None = None, position_dim: int = 0):
        _QueryPosition.__init__(self, hidden_size, position_dim)

    @classmethod
    def for_layer(cls, attn: Attention, position_dim: int = 0, **kwargs) -> "GraphAttnProcessor":
        """A processor sized for ``attn``, on its device and dtype."""
        processor = cls(hidden_size=attn.to_q.out_features, position_dim=position_dim, **kwargs)
        weight = attn.to_q.weight
        if not weight.is_meta:
            processor.to(device=weight.device, dtype=weight.dtype)
        return processor

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        graph_hidden_states: torch.Tensor | None = None,
        graph_mask: torch.Tensor | None = None,
        graph_scale: float = 1.0,
        graph_positions: dict[int, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        if graph_hidden_states is None:
            raise ValueError(
                "GraphAttnProcessor needs `graph_hidden_states` (graph-only mode has no other context): pass a "
                "graph_context to the UNet"
            )
        hidden_states, saved = self._begin(attn, hidden_states, temb)
        graph_hidden_states, graph_mask = _match_graph_batch(graph_hidden_states, graph_mask, hidden_states.shape[0])
        query, key, value = self._query_and_text(attn, hidden_states, graph_hidden_states)
        query = self._with_position(query, graph_positions)
        out = self._attend(attn, query, key, value, _graph_sdpa_mask(graph_mask))
        return self._end(attn, out, saved)


class DecoupledGraphAttnProcessor(_AttentionProcessorBase, _QueryPosition):
    r"""Decoupled cross-attention (IP-Adapter's scheme) for graph tokens.

    ``out = Attention(q, text) + graph_scale * Attention(q, to_k_graph(graph), to_v_graph(graph))``,
    both before the layer's ``to_out``. The text branch is the layer's own, unchanged.

    ``to_v_graph`` starts at zero, so a freshly installed processor leaves the base model's output
    exactly unchanged whatever the graph. ``to_k_graph`` starts as a copy of the layer's ``to_k``
    (:meth:`reset_parameters`; IP-Adapter does the same): graph keys start in the space the layer's
    queries were trained to match, so attention over the graph is meaningful from the first step on
    (random keys would spread it uniformly). The projections are parameters of this processor, hence
    of the UNet's state dict (``...attn2.processor.to_k_graph.weight``). The layer's ``norm_cross``
    and key norm belong to its text projections and are not applied to the graph branch.

    Args:
        hidden_size: the layer's inner dimension (``attn.to_k.out_features``).
        cross_attention_dim: C, width of the graph context (the UNet's ``cross_attention_dim``).
        position_dim: as :class:`GraphAttnProcessor`'s; the position term is added to the graph
            branch's query only, so the text branch stays the base model's.

    Call arguments beyond diffusers' usual ones:
        graph_hidden_states: (B*F or B, L, C) graph context, or None for text only.
        graph_mask: (B*F or B, L) bool, True = attend; None attends to every token.
        graph_scale: weight of the graph branch (0 gives the text-only model).
        graph_positions: as :class:`GraphAttnProcessor`'s.
    """

    def __init__(self, hidden_size: int, cross_attention_dim: int, position_dim: int = 0):
        _QueryPosition.__init__(self, hidden_size, position_dim)
        self.hidden_size = hidden_size
        self.cross_attention_dim = cross_attention_dim
        self.to_k_graph = nn.Linear(cross_attention_dim, hidden_size, bias=False)
        self.to_v_graph = nn.Linear(cross_attention_dim, hidden_size, bias=False)
        with torch.no_grad():
            self.to_v_graph.weight.zero_()

    @classmethod
    def for_layer(cls, attn: Attention, **kwargs) -> "DecoupledGraphAttnProcessor":
        """A processor sized for ``attn``, on its device and dtype, initialised by :meth:`reset_parameters`."""
        weight = attn.to_k.weight
        processor = cls(attn.to_k.out_features, attn.to_k.in_features, **kwargs)
        if not weight.is_meta:
            processor.to(device=weight.device, dtype=weight.dtype)
        processor.reset_parameters(attn)
        return processor

    @torch.no_grad()
    def reset_parameters(self, attn: Attention) -> None:
        """``to_k_graph`` = a copy of ``attn.to_k``, ``to_v_graph`` = 0, ``to_q_pos`` (if any) = 0
        (materialising meta tensors)."""
        if any(param.is_meta for param in self.parameters()):
            self.to_empty(device=attn.to_k.weight.device)
        self.to_k_graph.weight.copy_(attn.to_k.weight)
        self.to_v_graph.weight.zero_()
        self.reset_position()

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        graph_hidden_states: torch.Tensor | None = None,
        graph_mask: torch.Tensor | None = None,
        graph_scale: float = 1.0,
        graph_positions: dict[int, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        # Defined as __call__ (as IP-Adapter's processors are), not forward: diffusers reads the keyword
        # names off processor.__call__, and nn.Module's generic one would hide them.
        hidden_states, saved = self._begin(attn, hidden_states, temb)
        batch_size = hidden_states.shape[0]
        query, key, value = self._query_and_text(attn, hidden_states, encoder_hidden_states)
        mask = self._attention_mask(attn, attention_mask, key.shape[1], batch_size)
        out = self._attend(attn, query, key, value, mask)

        if graph_hidden_states is not None and graph_scale != 0:
            graph_hidden_states, graph_mask = _match_graph_batch(graph_hidden_states, graph_mask, batch_size)
            graph_key = self.to_k_graph(graph_hidden_states)  # (N, L, inner)
            graph_value = self.to_v_graph(graph_hidden_states)  # (N, L, inner)
            graph_query = self._with_position(query, graph_positions)
            graph_out = self._attend(attn, graph_query, graph_key, graph_value, _graph_sdpa_mask(graph_mask))
            out = out + graph_scale * graph_out
        return self._end(attn, out, saved)


# ---------------------------------------------------------------------------------------------------- xformers


class _XFormersAttention:
    """:meth:`_attend` with ``xformers.ops.memory_efficient_attention`` (diffusers' 3D layout)."""

    def _attend(self, attn, query, key, value, mask):
        import xformers.ops

        batch_size, num_queries = query.shape[:2]
        query = attn.head_to_batch_dim(query).contiguous()  # (N*heads, M, d)
        key = attn.head_to_batch_dim(key).contiguous()  # (N*heads, L, d)
        value = attn.head_to_batch_dim(value).contiguous()  # (N*heads, L, d)
        bias = None
        if mask is not None:
            bias = _xformers_bias(mask, batch_size, attn.heads, num_queries, key.shape[1], query.dtype)
        out = xformers.ops.memory_efficient_attention(
            query, key, value, attn_bias=bias, op=self.attention_op, scale=attn.scale
        )
        return attn.batch_to_head_dim(out.to(query.dtype))  # (N, M, inner)


def _xformers_bias(
    mask: torch.Tensor, batch_size: int, heads: int, num_queries: int, num_keys: int, dtype: torch.dtype
) -> torch.Tensor:
    """A mask broadcastable to (N, heads, M, L) (bool: True = attend, or additive) -> an additive
    (N*heads, M, L) bias that xformers accepts: stored with its last dimension padded to a multiple
    of 8 (xformers' alignment rule) and expanded, not copied, along the queries."""
    if mask.dtype == torch.bool:
        mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, float("-inf"))
    mask = mask.to(dtype)
    rows = mask.shape[-2]  # 1 when the mask is the same for every query
    mask = mask.expand(batch_size, heads, rows, num_keys).reshape(batch_size * heads, rows, num_keys)
    padded = mask.new_zeros(batch_size * heads, rows, (num_keys + 7) // 8 * 8)
    padded[..., :num_keys] = mask
    return padded[..., :num_keys].expand(-1, num_queries, -1)


class XFormersPlainAttnProcessor(_XFormersAttention, PlainAttnProcessor):
    """:class:`PlainAttnProcessor` with xformers' memory-efficient attention."""

    def __init__(self, attention_op: Callable | None = None):
        _require_xformers()
        self.attention_op = attention_op


class XFormersGraphAttnProcessor(_XFormersAttention, GraphAttnProcessor):
    """:class:`GraphAttnProcessor` with xformers' memory-efficient attention (same weights)."""

    def __init__(self, attention_op: Callable | None = None, hidden_size: int | None = None, position_dim: int = 0):
        _require_xformers()
        super().__init__(hidden_size, position_dim)
        self.attention_op = attention_op


class XFormersDecoupledGraphAttnProcessor(_XFormersAttention, DecoupledGraphAttnProcessor):
    """:class:`DecoupledGraphAttnProcessor` with xformers' memory-efficient attention (same weights)."""

    def __init__(
        self, hidden_size: int, cross_attention_dim: int, attention_op: Callable | None = None, position_dim: int = 0
    ):
        _require_xformers()
        super().__init__(hidden_size, cross_attention_dim, position_dim)
        self.attention_op = attention_op


# ---------------------------------------------------------------------------------------------------- installing


def is_graph_attention_layer(processor_name: str) -> bool:
    """Whether a layer (named as in ``unet.attn_processors``) receives graph tokens: the spatial
    cross-attention layers ``*.attentions.*.transformer_blocks.*.attn2`` only (not ``temp_attentions``
    nor ``transformer_in``, whose ``attn2`` is a temporal self-attention)."""
    parts = processor_name.split(".")
    if parts[-1] == "processor":
        parts = parts[:-1]
    return parts[-1] == "attn2" and "attentions" in parts and "transformer_blocks" in parts


def install_graph_processors(
    unet: nn.Module,
    mode: str,
    *,
    position_dim: int = 0,
    xformers: bool = False,
    attention_op: Callable | None = None,
) -> dict[str, object]:
    r"""Put graph processors on the spatial cross-attention layers of ``unet`` and
    :class:`PlainAttnProcessor` on every other attention layer.

    Args:
        unet: a model with diffusers' ``attn_processors`` / ``set_attn_processor`` (UNet3D and kin).
        mode: ``"graph_only"`` (:class:`GraphAttnProcessor`) or ``"decoupled"``
            (:class:`DecoupledGraphAttnProcessor`).
        position_dim: width of the graph queries' position features (0: none, SGDiff's attention).
        xformers: use the ``XFormers...`` variants (raises ModuleNotFoundError without xformers).
        attention_op: xformers' attention operator (None lets xformers choose).

    Graph processors already installed keep their weights (switching between the SDPA and the
    xformers variant included; ``to_q_pos`` between modes too); new weights are initialised as a new model's (decoupled ones by
    :meth:`DecoupledGraphAttnProcessor.reset_parameters`, ``to_q_pos`` at zero).

    Returns:
        The installed processors by name (as ``unet.attn_processors``).
    """
    if mode not in GRAPH_MODES:
        raise ValueError(f"mode must be one of {GRAPH_MODES}, got {mode!r}")
    if xformers:
        _require_xformers()
    layers = {name: module for name, module in unet.named_modules() if isinstance(module, Attention)}
    processors = {}
    for name in unet.attn_processors:
        layer_name = name.removesuffix(".processor")
        attn = layers[layer_name]
        if not is_graph_attention_layer(name):
            processors[name] = XFormersPlainAttnProcessor(attention_op) if xformers else PlainAttnProcessor()
            continue
        if mode == "graph_only":
            cls = XFormersGraphAttnProcessor if xformers else GraphAttnProcessor
        else:
            cls = XFormersDecoupledGraphAttnProcessor if xformers else DecoupledGraphAttnProcessor
        kwargs = {"attention_op": attention_op} if xformers else {}
        processor = cls.for_layer(attn, position_dim=position_dim, **kwargs)
        _keep_weights(processor, attn.processor)
        processors[name] = processor
    unet.set_attn_processor(dict(processors))
    return processors


def _keep_weights(processor: nn.Module, previous) -> None:
    """Carry the weights ``processor`` shares (same name and shape) with the one it replaces: the
    decoupled projections between the SDPA and xformers variants, ``to_q_pos`` across modes too."""
    if not isinstance(previous, nn.Module):
        return
    own = processor.state_dict()
    shared = {key: value for key, value in previous.state_dict().items() if key in own and own[key].shape == value.shape}
    processor.load_state_dict(shared, strict=False)
    processor.train(previous.training)
    params = list(previous.parameters())
    if params:
        processor.requires_grad_(params[0].requires_grad)
