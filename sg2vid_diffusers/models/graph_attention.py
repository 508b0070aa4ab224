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
    "graph_layout_weights",
    "graph_position_features",
    "graph_position_table",
    "graph_query_coordinates",
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
    graph_hidden_states: torch.Tensor,
    graph_mask: torch.Tensor | None,
    batch_size: int,
    graph_boxes: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Bring a graph context to the batch of the attention's queries.

    Args:
        graph_hidden_states: (G, L, C), G = B*F (one context per frame) or B (one per video).
        graph_mask: (G, L) bool, True = attend, or None (attend to every token).
        batch_size: B*F, the batch of ``hidden_states`` in a spatial layer (frames folded ``(b f)``).
        graph_boxes: (G, L, 4) the tokens' boxes (layout bias), or None.

    Returns:
        (B*F, L, C) states, (B*F, L) mask and (B*F, L, 4) boxes (each None when given None); a
        per-video context is repeated per frame.
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
    if graph_boxes is not None and graph_boxes.shape != (num_graphs, num_tokens, 4):
        raise ValueError(
            f"graph_boxes has shape {tuple(graph_boxes.shape)} but graph_hidden_states has "
            f"{tuple(graph_hidden_states.shape)}: expected ({num_graphs}, {num_tokens}, 4)"
        )
    if num_graphs == batch_size:
        return graph_hidden_states, graph_mask, graph_boxes
    if num_graphs == 0 or batch_size % num_graphs != 0:
        raise ValueError(
            f"graph_hidden_states has batch {num_graphs}, which does not fit hidden_states' batch {batch_size}: "
            "expected one context per frame (B*F) or one per video (B)"
        )
    repeats = batch_size // num_graphs  # F: the batch is folded (b f), so contexts repeat per frame
    repeat = lambda t: None if t is None else t.repeat_interleave(repeats, dim=0)  # noqa: E731
    return repeat(graph_hidden_states), repeat(graph_mask), repeat(graph_boxes)


def graph_query_coordinates(height: int, width: int, *, device: torch.device | str | None = None) -> torch.Tensor:
    """(height * width, 2) the centres (x, y) in (-1, 1) of an ``height`` x ``width`` grid's cells, x to
    the right and y downwards, row-major as the queries of a spatial attention layer are."""
    if height <= 0 or width <= 0:
        raise ValueError(f"query coordinates need a positive grid size, got {height} x {width}")
    y = (torch.arange(height, dtype=torch.float32, device=device) + 0.5) / height * 2 - 1
    x = (torch.arange(width, dtype=torch.float32, device=device) + 0.5) / width * 2 - 1
    y, x = torch.meshgrid(y, x, indexing="ij")
    return torch.stack([x.reshape(-1), y.reshape(-1)], dim=-1)


def graph_position_features(coordinates: torch.Tensor, dim: int) -> torch.Tensor:
    r"""Fixed Fourier features of query positions: ``sin(f x), cos(f x), sin(f y), cos(f y)`` for
    ``f = pi / 2 * 2**k``, k = 0 .. dim / 4 - 1 (the first pair is monotonic in x across the grid, the
    last ones resolve neighbouring cells).

    Args:
        coordinates: (M, 2) x, y in (-1, 1) (:func:`graph_query_coordinates`).
        dim: a positive multiple of 4.

    Returns:
        (M, dim), float32.
    """
    if dim <= 0 or dim % 4:
        raise ValueError(f"position features need a positive multiple of 4 dimensions, got {dim}")
    coordinates = coordinates.float()
    freqs = torch.pi / 2 * 2.0 ** torch.arange(dim // 4, dtype=torch.float32, device=coordinates.device)  # (K,)
    x, y = coordinates[:, :1] * freqs, coordinates[:, 1:] * freqs  # (M, K)
    return torch.stack([x.sin(), x.cos(), y.sin(), y.cos()], dim=-1).flatten(1)  # (M, 4K)


def graph_position_table(
    height: int, width: int, num_levels: int, *, device: torch.device | str | None = None
) -> dict[int, torch.Tensor]:
    """:func:`graph_query_coordinates` of every resolution of a UNet whose ``num_levels`` levels each
    halve the size (diffusers' stride-2 downsampling: ``ceil(size / 2)``), keyed by the number of
    positions, which is how a processor, seeing only (N, H*W, C) queries, finds its own.

    Returns:
        {H*W: (H*W, 2)} for the latent's ``height`` x ``width`` and every smaller level.
    """
    table = {}
    for _ in range(num_levels):
        table.setdefault(height * width, graph_query_coordinates(height, width, device=device))
        height, width = (height + 1) // 2, (width + 1) // 2
    return table


LAYOUT_MIN_HALF_SIZE = 0.1  # of the latent's half-width: 3.2 px of a 64 px frame
LAYOUT_EDGE = 0.1  # the softness of a box's edge, same units
# ``layout_scale`` is stored divided by this: Adam moves a weight by about the learning rate per step,
# and a bias worth having is several units, so unscaled it would take ~10,000 steps to matter.
LAYOUT_SCALE_GAIN = 20.0


def graph_layout_weights(coordinates: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    r"""How much each query lies inside each token's box: a soft indicator in [0, 1].

    ``sigmoid((h_x - |x - c_x|) / e) * sigmoid((h_y - |y - c_y|) / e)`` with the box's centre c and
    half-size h (at least ``LAYOUT_MIN_HALF_SIZE``), e = ``LAYOUT_EDGE``; 0 for a token without a
    box (NaN).

    Args:
        coordinates: (M, 2) query positions x, y in (-1, 1).
        boxes: (N, L, 4) ``[x0, y0, x1, y1]`` in the same coordinates, NaN rows for tokens without one.

    Returns:
        (N, M, L).
    """
    boxes = boxes.float()
    centre = (boxes[..., :2] + boxes[..., 2:]) / 2  # (N, L, 2)
    half = ((boxes[..., 2:] - boxes[..., :2]).abs() / 2).clamp(min=LAYOUT_MIN_HALF_SIZE)  # (N, L, 2)
    distance = (coordinates.float()[None, :, None, :] - centre[:, None]).abs()  # (N, M, L, 2)
    inside = torch.sigmoid((half[:, None] - distance) / LAYOUT_EDGE).prod(dim=-1)  # (N, M, L)
    return torch.nan_to_num(inside, nan=0.0)


class _GraphQueryExtras(nn.Module):
    """What a graph processor may add to its attention (ours, both off by default):

    - ``to_q_pos`` (position_dim -> inner, no bias): position features added to the query;
    - ``layout_scale`` (heads,): per head, ``LAYOUT_SCALE_GAIN`` x this x :func:`graph_layout_weights`
      added to the attention scores, so that queries inside a token's box attend to it more.

    Both start at zero, so a processor gains them without changing its output."""

    def __init__(self, hidden_size: int | None = None, position_dim: int = 0, layout_heads: int = 0):
        super().__init__()
        if not isinstance(position_dim, int) or position_dim < 0 or position_dim % 4:
            raise ValueError(f"position_dim must be 0 or a positive multiple of 4, got {position_dim!r}")
        if position_dim and hidden_size is None:
            raise ValueError("a graph processor with position_dim > 0 needs hidden_size (the layer's inner dimension)")
        if layout_heads < 0:
            raise ValueError(f"layout_heads must be >= 0, got {layout_heads}")
        self.position_dim = position_dim
        self.to_q_pos = nn.Linear(position_dim, hidden_size, bias=False) if position_dim else None
        self.layout_scale = nn.Parameter(torch.zeros(layout_heads)) if layout_heads else None
        if self.to_q_pos is not None:
            nn.init.zeros_(self.to_q_pos.weight)  # a no-op on the meta device (diffusers' empty-weight loading)

    @torch.no_grad()
    def reset_extras(self, device: torch.device | str | None = None) -> None:
        """``to_q_pos`` and ``layout_scale`` = 0 (materialised on ``device`` when on the meta device)."""
        if self.to_q_pos is not None:
            if self.to_q_pos.weight.is_meta:
                self.to_q_pos.to_empty(device=device or "cpu")
            self.to_q_pos.weight.zero_()
        if self.layout_scale is not None:
            if self.layout_scale.is_meta:
                self.layout_scale = nn.Parameter(torch.zeros(self.layout_scale.shape, device=device or "cpu"))
            self.layout_scale.zero_()

    @staticmethod
    def _coordinates(query: torch.Tensor, graph_positions: dict[int, torch.Tensor] | None, what: str) -> torch.Tensor:
        if graph_positions is None:
            raise ValueError(
                f"this graph processor has {what} and needs `graph_positions` (the UNet sends them; see "
                "graph_position_table)"
            )
        coordinates = graph_positions.get(query.shape[1])
        if coordinates is None:
            raise ValueError(
                f"graph_positions has no coordinates for {query.shape[1]} query positions (it has sizes "
                f"{sorted(graph_positions)})"
            )
        return coordinates.to(query.device)

    def _with_position(self, query: torch.Tensor, graph_positions: dict[int, torch.Tensor] | None) -> torch.Tensor:
        """(N, M, inner) query + ``to_q_pos`` of the M positions' features (the query unchanged when off)."""
        if self.to_q_pos is None:
            return query
        coordinates = self._coordinates(query, graph_positions, "position_dim > 0")
        features = graph_position_features(coordinates, self.position_dim)
        return query + self.to_q_pos(features.to(query.dtype))[None]

    def _graph_mask(
        self,
        query: torch.Tensor,
        graph_mask: torch.Tensor | None,
        graph_boxes: torch.Tensor | None,
        graph_positions: dict[int, torch.Tensor] | None,
        heads: int,
        layout_multiplier: float = 1.0,
    ) -> torch.Tensor | None:
        """The graph attention's SDPA mask: the bool token mask (N, 1, 1, L), or with the layout bias
        an additive float mask (N, heads, M, L) (-inf on masked tokens); ``layout_multiplier`` scales
        the learned bias (the pipeline's sampling-time ``layout_scale``; 1 = as trained)."""
        if self.layout_scale is None or graph_boxes is None:
            return _graph_sdpa_mask(graph_mask)
        coordinates = self._coordinates(query, graph_positions, "a layout bias")
        weights = graph_layout_weights(coordinates, graph_boxes)  # (N, M, L)
        scale = self.layout_scale.float() * (LAYOUT_SCALE_GAIN * layout_multiplier)
        bias = scale[None, :, None, None] * weights[:, None]  # (N, heads, M, L)
        if graph_mask is not None:
            bias = bias.masked_fill(~graph_mask[:, None, None, :], float("-inf"))
        return bias.to(query.dtype)


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
    ``graph_mask``, ``graph_scale``, ``graph_positions``, ``graph_boxes`` and ``graph_layout_scale`` and ignores them, so that the UNet can send them to every layer
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
        graph_boxes: torch.Tensor | None = None,
        graph_layout_scale: float = 1.0,
    ) -> torch.Tensor:
        hidden_states, saved = self._begin(attn, hidden_states, temb)
        batch_size = hidden_states.shape[0]
        query, key, value = self._query_and_text(attn, hidden_states, encoder_hidden_states)
        mask = self._attention_mask(attn, attention_mask, key.shape[1], batch_size)
        out = self._attend(attn, query, key, value, mask)
        return self._end(attn, out, saved)


class GraphAttnProcessor(_AttentionProcessorBase, _GraphQueryExtras):
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
        layout_heads: 0 (no layout bias) or the layer's number of heads: then ``layout_scale``
            (heads,), zero at the start, times :func:`graph_layout_weights` of the tokens' boxes is
            added to the attention scores.

    Call arguments beyond diffusers' usual ones:
        graph_hidden_states: (B*F or B, L, C) graph context (``GraphContext.hidden_states``); required.
        graph_mask: (B*F or B, L) bool, True = attend; None attends to every token.
        graph_positions: {H*W: (H*W, 2)} query coordinates (:func:`graph_position_table`); required
            with positions or a layout bias, ignored without.
        graph_boxes: (B*F or B, L, 4) each token's box ``[x0, y0, x1, y1]`` in (-1, 1) (NaN: none), for
            the layout bias; None: no bias.
        graph_layout_scale: multiplies the layout bias (1: as trained; 0: none); our sampling-time
            setting, not SGDiff's, which has no layout bias.
    """

    def __init__(self, hidden_size: int | None = None, position_dim: int = 0, layout_heads: int = 0):
        _GraphQueryExtras.__init__(self, hidden_size, position_dim, layout_heads)

    @classmethod
    def for_layer(
        cls, attn: Attention, position_dim: int = 0, layout_bias: bool = False, **kwargs
    ) -> "GraphAttnProcessor":
        """A processor sized for ``attn``, on its device and dtype."""
        processor = cls(
            hidden_size=attn.to_q.out_features, position_dim=position_dim,
            layout_heads=attn.heads if layout_bias else 0, **kwargs,
        )  # fmt: skip
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
        graph_boxes: torch.Tensor | None = None,
        graph_layout_scale: float = 1.0,
    ) -> torch.Tensor:
        if graph_hidden_states is None:
            raise ValueError(
                "GraphAttnProcessor needs `graph_hidden_states` (graph-only mode has no other context): pass a "
                "graph_context to the UNet"
            )
        hidden_states, saved = self._begin(attn, hidden_states, temb)
        graph_hidden_states, graph_mask, graph_boxes = _match_graph_batch(
            graph_hidden_states, graph_mask, hidden_states.shape[0], graph_boxes
        )
        query, key, value = self._query_and_text(attn, hidden_states, graph_hidden_states)
        mask = self._graph_mask(query, graph_mask, graph_boxes, graph_positions, attn.heads, graph_layout_scale)
        query = self._with_position(query, graph_positions)
        out = self._attend(attn, query, key, value, mask)
        return self._end(attn, out, saved)


class DecoupledGraphAttnProcessor(_AttentionProcessorBase, _GraphQueryExtras):
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
        position_dim, layout_heads: as :class:`GraphAttnProcessor`'s; the position term and the layout
            bias act on the graph branch only, so the text branch stays the base model's.

    Call arguments beyond diffusers' usual ones:
        graph_hidden_states: (B*F or B, L, C) graph context, or None for text only.
        graph_mask: (B*F or B, L) bool, True = attend; None attends to every token.
        graph_scale: weight of the graph branch (0 gives the text-only model).
        graph_positions, graph_boxes: as :class:`GraphAttnProcessor`'s.
    """

    def __init__(self, hidden_size: int, cross_attention_dim: int, position_dim: int = 0, layout_heads: int = 0):
        _GraphQueryExtras.__init__(self, hidden_size, position_dim, layout_heads)
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
        layout_heads = attn.heads if kwargs.pop("layout_bias", False) else 0
        processor = cls(attn.to_k.out_features, attn.to_k.in_features, layout_heads=layout_heads, **kwargs)
        if not weight.is_meta:
            processor.to(device=weight.device, dtype=weight.dtype)
        processor.reset_parameters(attn)
        return processor

    @torch.no_grad()
    def reset_parameters(self, attn: Attention) -> None:
        """``to_k_graph`` = a copy of ``attn.to_k``, ``to_v_graph`` = 0, ``to_q_pos`` and
        ``layout_scale`` (if any) = 0 (materialising meta tensors)."""
        if any(param.is_meta for param in self.parameters()):
            self.to_empty(device=attn.to_k.weight.device)
        self.to_k_graph.weight.copy_(attn.to_k.weight)
        self.to_v_graph.weight.zero_()
        self.reset_extras()

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
        graph_boxes: torch.Tensor | None = None,
        graph_layout_scale: float = 1.0,
    ) -> torch.Tensor:
        # Defined as __call__ (as IP-Adapter's processors are), not forward: diffusers reads the keyword
        # names off processor.__call__, and nn.Module's generic one would hide them.
        hidden_states, saved = self._begin(attn, hidden_states, temb)
        batch_size = hidden_states.shape[0]
        query, key, value = self._query_and_text(attn, hidden_states, encoder_hidden_states)
        mask = self._attention_mask(attn, attention_mask, key.shape[1], batch_size)
        out = self._attend(attn, query, key, value, mask)

        if graph_hidden_states is not None and graph_scale != 0:
            graph_hidden_states, graph_mask, graph_boxes = _match_graph_batch(
                graph_hidden_states, graph_mask, batch_size, graph_boxes
            )
            graph_key = self.to_k_graph(graph_hidden_states)  # (N, L, inner)
            graph_value = self.to_v_graph(graph_hidden_states)  # (N, L, inner)
            graph_mask = self._graph_mask(
                query, graph_mask, graph_boxes, graph_positions, attn.heads, graph_layout_scale
            )
            graph_query = self._with_position(query, graph_positions)
            graph_out = self._attend(attn, graph_query, graph_key, graph_value, graph_mask)
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

    def __init__(
        self,
        attention_op: Callable | None = None,
        hidden_size: int | None = None,
        position_dim: int = 0,
        layout_heads: int = 0,
    ):
        _require_xformers()
        super().__init__(hidden_size, position_dim, layout_heads)
        self.attention_op = attention_op


class XFormersDecoupledGraphAttnProcessor(_XFormersAttention, DecoupledGraphAttnProcessor):
    """:class:`DecoupledGraphAttnProcessor` with xformers' memory-efficient attention (same weights)."""

    def __init__(
        self,
        hidden_size: int,
        cross_attention_dim: int,
        attention_op: Callable | None = None,
        position_dim: int = 0,
        layout_heads: int = 0,
    ):
        _require_xformers()
        super().__init__(hidden_size, cross_attention_dim, position_dim, layout_heads)
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
    layout_bias: bool = False,
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
        layout_bias: give the graph processors a layout bias (``layout_scale``).
        xformers: use the ``XFormers...`` variants (raises ModuleNotFoundError without xformers).
        attention_op: xformers' attention operator (None lets xformers choose).

    Graph processors already installed keep their weights (switching between the SDPA and the
    xformers variant included; ``to_q_pos`` and ``layout_scale`` between modes too); new weights are initialised as a new model's (decoupled ones by
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
        processor = cls.for_layer(attn, position_dim=position_dim, layout_bias=layout_bias, **kwargs)
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
