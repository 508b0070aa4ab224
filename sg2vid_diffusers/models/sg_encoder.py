"""The scene-graph encoder: SGDiff's graph tower (their ``CGIPModel``) as a diffusers model.

Objects and predicates are embedded, refined by sg2im's graph convolution (one
:class:`GraphTripleConv`, then a :class:`GraphTripleConvNet` of the remaining layers), and read out
as SGDiff does:

- local tokens: one per triple, ``[obj[s], pred, obj[o]]`` after the graph layers, the first N of
  each graph, zero padded;
- a global vector: ``graph_projection([mean of the object vectors, mean of the predicate vectors])``.

Parameter names equal the keys of SGDiff's checkpoints (``sip_vg.pt``), so converting one is a
rename-free load (``sg2vid_diffusers.conversion_sgdiff``). See ``SGDIFF_REFERENCE.md``.
"""

from __future__ import annotations

import functools

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import nn

from ..batching import SceneGraphBatch, active_triples, collate_scene_graphs
from ..vocabulary import VOCAB_NAME, Vocabulary

__all__ = ["GraphTripleConv", "GraphTripleConvNet", "SceneGraphEncoder", "SceneGraphEncoderOutput", "layout_readout"]


@functools.lru_cache(maxsize=8)
def _layout_readout(width: int) -> torch.Tensor:
    draw = torch.randn(width, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return torch.linalg.qr(draw).Q.float()


def layout_readout(width: int) -> torch.Tensor:
    """(width, 4) the fixed readout of the layout loss (``training_utils.layout_loss``): orthonormal
    columns drawn from seed 0, the same on every machine and for every run (no weights to train or
    save). ``object vector @ layout_readout(D)`` is the box ``[x0, y0, x1, y1]`` (in [-1, 1], y
    downwards) an encoder trained with that loss infers for the object; the UNet's layout bias
    (``graph_layout_bias``) reads it from the subject third of each local token."""
    if width < 4:
        raise ValueError(f"the layout readout needs object vectors of width >= 4, got {width}")
    return _layout_readout(width).clone()


@functools.lru_cache(maxsize=8)
def _motion_readout(width: int) -> torch.Tensor:
    layout = _layout_readout(width).double()
    draw = torch.randn(width, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return torch.linalg.qr(draw - layout @ (layout.T @ draw)).Q.float()


def motion_readout(width: int) -> torch.Tensor:
    """(width, 4) the fixed readout of the layout loss's motion term (``layout_loss(..., motion=True)``):
    orthonormal columns drawn from seed 1, orthogonal to :func:`layout_readout`'s. ``object vector @
    motion_readout(D)`` is how far the object's box ``[x0, y0, x1, y1]`` moves over the whole clip
    (in the same [-1, 1] units) in the encoder's inferred layout; the UNet's moving layout bias
    (``graph_layout_motion``) reads it to place each object at each frame's time."""
    if width < 8:
        raise ValueError(f"the motion readout needs object vectors of width >= 8, got {width}")
    return _motion_readout(width).clone()


def motion_frame_offsets(num_frames: int, device: torch.device | str | None = None) -> torch.Tensor:
    """(F,) where each frame of a clip of F sits along its move: ``(f + 0.5) / F - 0.5``, from about
    -0.5 to 0.5. In the inferred moving layout, frame f's box is the clip-mean box plus this times the
    move (:func:`motion_readout`); for constant-velocity motion that is each frame's box exactly
    (``training_utils.clip_motion``)."""
    return (torch.arange(num_frames, device=device, dtype=torch.float32) + 0.5) / num_frames - 0.5


def _mlp(dims: list[int]) -> nn.Sequential:
    """Linear, ReLU, Linear, ReLU, ...: sg2im's ``build_mlp`` without normalisation or dropout, with
    the final ReLU SGDiff keeps (so Linear layers sit at indices 0, 2, ... as in its checkpoints)."""
    layers: list[nn.Module] = []
    for dim_in, dim_out in zip(dims[:-1], dims[1:]):
        layers += [nn.Linear(dim_in, dim_out), nn.ReLU()]
    return nn.Sequential(*layers)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.kaiming_normal_(module.weight)


class GraphTripleConv(nn.Module):
    """One graph convolution layer over (subject, predicate, object) triples (sg2im).

    Each triple ``[obj[s], pred, obj[o]]`` goes through ``net1``; its output is split into a
    message to the subject, the new predicate vector and a message to the object. Each object
    pools the messages it receives (sum or average over its edges) and ``net2`` turns the pooled
    vector into the new object vector. An object with no edges pools zeros.

    Args:
        input_dim: Din, width of the incoming object and predicate vectors.
        output_dim: Dout, width of the outgoing vectors (defaults to ``input_dim``).
        hidden_dim: H, width of the messages.
        pooling: ``"avg"`` (SGDiff) or ``"sum"``.
    """

    def __init__(self, input_dim: int, output_dim: int | None = None, hidden_dim: int = 512, pooling: str = "avg"):
        super().__init__()
        if pooling not in ("avg", "sum"):
            raise ValueError(f"pooling must be 'avg' or 'sum', got {pooling!r}")
        output_dim = input_dim if output_dim is None else output_dim
        self.input_dim, self.output_dim, self.hidden_dim, self.pooling = input_dim, output_dim, hidden_dim, pooling
        self.net1 = _mlp([3 * input_dim, hidden_dim, 2 * hidden_dim + output_dim])
        self.net2 = _mlp([hidden_dim, hidden_dim, output_dim])
        self.net1.apply(_init_weights)
        self.net2.apply(_init_weights)

    def forward(
        self, obj_vecs: torch.Tensor, pred_vecs: torch.Tensor, edges: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            obj_vecs: (O, Din) object vectors.
            pred_vecs: (T, Din) predicate vectors, one per triple.
            edges: (T, 2) long, ``[s, o]`` indices into ``obj_vecs``.

        Returns:
            new_obj_vecs (O, Dout) and new_pred_vecs (T, Dout).
        """
        num_objs = obj_vecs.size(0)
        H, Dout = self.hidden_dim, self.output_dim
        s_idx, o_idx = edges[:, 0], edges[:, 1]  # (T,), (T,)

        cur_t_vecs = torch.cat([obj_vecs[s_idx], pred_vecs, obj_vecs[o_idx]], dim=1)  # (T, 3 * Din)
        new_t_vecs = self.net1(cur_t_vecs)  # (T, 2 * H + Dout)
        new_s_vecs = new_t_vecs[:, :H]  # (T, H)
        new_p_vecs = new_t_vecs[:, H : H + Dout]  # (T, Dout)
        new_o_vecs = new_t_vecs[:, H + Dout :]  # (T, H)

        # Buffers take the messages' dtype, which differs from the inputs' under autocast.
        pooled = new_t_vecs.new_zeros(num_objs, H)  # (O, H)
        pooled = pooled.index_add(0, s_idx, new_s_vecs).index_add(0, o_idx, new_o_vecs)
        if self.pooling == "avg":
            ones = new_t_vecs.new_ones(edges.size(0))  # (T,)
            counts = new_t_vecs.new_zeros(num_objs).index_add(0, s_idx, ones).index_add(0, o_idx, ones)  # (O,)
            pooled = pooled / counts.clamp(min=1).unsqueeze(1)

        new_obj_vecs = self.net2(pooled)  # (O, Dout)
        return new_obj_vecs, new_p_vecs


class GraphTripleConvNet(nn.Module):
    """A stack of ``num_layers`` :class:`GraphTripleConv` of constant width ``input_dim`` (sg2im)."""

    def __init__(self, input_dim: int, num_layers: int = 5, hidden_dim: int = 512, pooling: str = "avg"):
        super().__init__()
        self.gconvs = nn.ModuleList(
            GraphTripleConv(input_dim, hidden_dim=hidden_dim, pooling=pooling) for _ in range(num_layers)
        )

    def forward(
        self, obj_vecs: torch.Tensor, pred_vecs: torch.Tensor, edges: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(O, D) objects, (T, D) predicates, (T, 2) edges -> (O, D) objects, (T, D) predicates."""
        for gconv in self.gconvs:
            obj_vecs, pred_vecs = gconv(obj_vecs, pred_vecs, edges)
        return obj_vecs, pred_vecs


@dataclass
class SceneGraphEncoderOutput(BaseOutput):
    """What :class:`SceneGraphEncoder` returns (B graphs, N = ``max_local_triples``, D = ``output_dim``).

    Args:
        local_tokens: (B, N, 3D) the first N triples of each graph as ``[obj[s], pred, obj[o]]``,
            zero padded.
        local_mask: (B, N) bool, True on real tokens.
        global_embeds: (B, D) one vector per graph.
        frame_local_tokens: (B, F, N, 3D) per frame, the triples active in that frame, compacted into
            the first slots and zero padded; only when ``num_frames`` is given.
        frame_mask: (B, F, N) bool, True on real tokens; only when ``num_frames`` is given.
    """

    local_tokens: torch.Tensor
    local_mask: torch.Tensor
    global_embeds: torch.Tensor
    frame_local_tokens: torch.Tensor | None = None
    frame_mask: torch.Tensor | None = None


class SceneGraphEncoder(ModelMixin, ConfigMixin):
    r"""SGDiff's scene-graph encoder: embeddings, graph convolution, local triple tokens and a global
    vector. The defaults are SGDiff's Visual Genome model (about 13.2 M parameters).

    Args:
        num_objects: object vocabulary size, ``__image__`` included. The embedding table has
            ``num_objects + 1`` rows, as in SGDiff.
        num_predicates: predicate vocabulary size, ``__in_image__`` included.
        embedding_dim: E, width of the object and predicate embeddings.
        hidden_dim: H, width of the graph convolution's messages.
        output_dim: D, width of the object and predicate vectors after the graph layers; local
            tokens are 3D wide, the global vector D.
        num_graph_layers: graph convolution layers in all (one ``graph_conv``, then a
            ``graph_net`` of ``num_graph_layers - 1``).
        pooling: ``"avg"`` or ``"sum"``, how an object pools the messages of its edges.
        max_local_triples: N, local tokens per graph (later triples are dropped).

    Differences from SGDiff, both additions that leave its numbers unchanged:

    - a mask (``local_mask``) marks the real tokens among the zero padding (SGDiff has none);
    - with ``num_frames``, per-frame tokens hold only the triples active in each frame (the graph
      convolution still runs once, over the whole graph).

    The model's vocabulary (``vocab``, a :class:`~sg2vid_diffusers.Vocabulary` or None) is saved
    beside the weights as ``vocab.json`` and read back by :meth:`from_pretrained`.
    """

    @register_to_config
    def __init__(
        self,
        num_objects: int = 179,
        num_predicates: int = 46,
        embedding_dim: int = 512,
        hidden_dim: int = 512,
        output_dim: int = 512,
        num_graph_layers: int = 6,
        pooling: str = "avg",
        max_local_triples: int = 15,
    ):
        super().__init__()
        if num_graph_layers < 1:
            raise ValueError(f"num_graph_layers must be >= 1, got {num_graph_layers}")
        if max_local_triples < 1:
            raise ValueError(f"max_local_triples must be >= 1, got {max_local_triples}")
        self.obj_embeddings = nn.Embedding(num_objects + 1, embedding_dim)
        self.pred_embeddings = nn.Embedding(num_predicates, embedding_dim)
        self.graph_conv = GraphTripleConv(embedding_dim, output_dim, hidden_dim=hidden_dim, pooling=pooling)
        self.graph_net = (
            GraphTripleConvNet(output_dim, num_graph_layers - 1, hidden_dim=hidden_dim, pooling=pooling)
            if num_graph_layers > 1
            else None
        )
        self.graph_projection = nn.Linear(2 * output_dim, output_dim)
        # Only SGDiff's contrastive pretraining uses it; kept so converted checkpoints are lossless.
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self._vocab: Vocabulary | None = None

    # ------------------------------------------------------------------ vocabulary

    @property
    def vocab(self) -> Vocabulary | None:
        """The vocabulary whose indices this model embeds (None when unknown)."""
        return self._vocab

    @vocab.setter
    def vocab(self, vocab: Vocabulary | None) -> None:
        if vocab is not None:
            if not isinstance(vocab, Vocabulary):
                raise TypeError(f"vocab must be a Vocabulary or None, got {type(vocab).__name__}")
            for kind, expected, got in (
                ("num_objects", self.config.num_objects, vocab.num_objects),
                ("num_predicates", self.config.num_predicates, vocab.num_predicates),
            ):
                if expected != got:
                    raise ValueError(
                        f"vocabulary does not fit this encoder: {kind} is {got} in the vocabulary "
                        f"but {expected} in the model's config"
                    )
        self._vocab = vocab

    @classmethod
    def from_vocab(cls, vocab: Vocabulary, **config: Any) -> "SceneGraphEncoder":
        """A freshly initialised encoder sized for ``vocab`` (other config values as keywords)."""
        model = cls(num_objects=vocab.num_objects, num_predicates=vocab.num_predicates, **config)
        model.vocab = vocab
        return model

    def save_pretrained(self, save_directory: str | os.PathLike, is_main_process: bool = True, **kwargs):
        """Save as diffusers does (``config.json`` + safetensors), plus ``vocab.json`` when the model
        has a vocabulary. Keywords go to :meth:`diffusers.ModelMixin.save_pretrained`."""
        if is_main_process:
            # Written first, so that push_to_hub (which uploads at the end of the parent call) takes it.
            os.makedirs(save_directory, exist_ok=True)
            vocab_file = Path(save_directory) / VOCAB_NAME
            if self.vocab is not None:
                self.vocab.save(vocab_file)
            elif vocab_file.exists():
                vocab_file.unlink()  # a stale vocabulary would be read back as this model's
        return super().save_pretrained(save_directory, is_main_process=is_main_process, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs):
        """Load as diffusers does, and read ``vocab.json`` from the same folder when it is there.

        Raises:
            ValueError: when the saved vocabulary's sizes disagree with the saved config.
        """
        loaded = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded  # output_loading_info=True
        vocab_file = _find_vocab_file(pretrained_model_name_or_path, kwargs)
        if vocab_file is not None:
            try:
                model.vocab = Vocabulary.load(vocab_file)
            except ValueError as err:
                raise ValueError(f"{vocab_file}: {err}") from None
        return loaded

    # ------------------------------------------------------------------ forward

    def forward(
        self, batch: SceneGraphBatch, num_frames: int | None = None, return_dict: bool = True
    ) -> SceneGraphEncoderOutput | tuple:
        r"""Encode a batch of scene graphs.

        Args:
            batch: B = ``batch.num_graphs`` graphs in the SGDiff layout (``collate_scene_graphs``);
                boxes are ignored, as in SGDiff.
            num_frames: F; when given, also return per-frame tokens built from the triples active in
                each frame (``active_triples(batch.triple_spans, F)``).
            return_dict: return a :class:`SceneGraphEncoderOutput` rather than a tuple.

        Returns:
            :class:`SceneGraphEncoderOutput` with ``local_tokens`` (B, N, 3D), ``local_mask``
            (B, N), ``global_embeds`` (B, D) and, with ``num_frames``, ``frame_local_tokens``
            (B, F, N, 3D) and ``frame_mask`` (B, F, N). Local tokens keep each graph's first N
            triples in batch order (its real triples, then the ``__in_image__`` ones), as SGDiff;
            padding is exactly zero.
        """
        self._check_batch(batch)
        num_graphs, num_slots = batch.num_graphs, self.config.max_local_triples
        s, p, o = batch.triples.unbind(dim=1)  # (T,) each
        obj_vecs, pred_vecs = self._convolve(batch)  # (O, D), (T, D)

        obj_mean = _mean_per_graph(obj_vecs, batch.obj_to_img, num_graphs)  # (B, D)
        pred_mean = _mean_per_graph(pred_vecs, batch.triples_to_img, num_graphs)  # (B, D)
        global_embeds = self.graph_projection(torch.cat([obj_mean, pred_mean], dim=1))  # (B, D)

        triple_vecs = torch.cat([obj_vecs[s], pred_vecs, obj_vecs[o]], dim=1)  # (T, 3D)
        every_triple = torch.ones(1, triple_vecs.size(0), dtype=torch.bool, device=triple_vecs.device)
        local_tokens, local_mask = _assign_to_slots(
            triple_vecs, batch.triples_to_img, every_triple, num_graphs, num_slots
        )  # (B, 1, N, 3D), (B, 1, N)
        frame_local_tokens = frame_mask = None
        if num_frames is not None:
            # float64 spans stay on the CPU (some accelerators lack float64); the (F, T) mask is small.
            active = active_triples(batch.triple_spans.cpu(), num_frames).to(triple_vecs.device)  # (F, T)
            frame_local_tokens, frame_mask = _assign_to_slots(
                triple_vecs, batch.triples_to_img, active, num_graphs, num_slots
            )  # (B, F, N, 3D), (B, F, N)

        output = SceneGraphEncoderOutput(
            local_tokens=local_tokens[:, 0],
            local_mask=local_mask[:, 0],
            global_embeds=global_embeds,
            frame_local_tokens=frame_local_tokens,
            frame_mask=frame_mask,
        )
        return output if return_dict else output.to_tuple()

    def _convolve(self, batch: SceneGraphBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings and graph convolution: (O, D) object vectors and (T, D) predicate vectors."""
        s, p, o = batch.triples.unbind(dim=1)
        edges = torch.stack([s, o], dim=1)  # (T, 2)
        obj_vecs = self.obj_embeddings(batch.objs)  # (O, E)
        pred_vecs = self.pred_embeddings(p)  # (T, E)
        obj_vecs, pred_vecs = self.graph_conv(obj_vecs, pred_vecs, edges)  # (O, D), (T, D)
        if self.graph_net is not None:
            obj_vecs, pred_vecs = self.graph_net(obj_vecs, pred_vecs, edges)
        return obj_vecs, pred_vecs

    def object_vectors(self, batch: SceneGraphBatch) -> torch.Tensor:
        """(O, D) every object's vector after the graph convolution, rows as ``batch.objs`` (the
        ``__image__`` nodes included): the subject and object thirds of the local tokens are these rows.
        Training's layout loss (``--layout_loss_weight``) reads them through a fixed projection."""
        self._check_batch(batch)
        return self._convolve(batch)[0]

    def encode(self, scene_graphs: Any, num_frames: int | None = None) -> SceneGraphEncoderOutput:
        """Collate scene graphs with the model's vocabulary and encode them on the model's device.

        Args:
            scene_graphs: one graph or a list (any form ``parse_scene_graphs`` accepts).
            num_frames: F, for per-frame tokens (see :meth:`forward`).
        """
        if self.vocab is None:
            raise ValueError("this encoder has no vocabulary: set `encoder.vocab` (a Vocabulary) first")
        batch = collate_scene_graphs(scene_graphs, self.vocab).to(self.device)
        return self(batch, num_frames=num_frames)

    def _check_batch(self, batch: SceneGraphBatch) -> None:
        """Index errors named by field, index and value (an embedding lookup would only say
        "index out of range"). One device sync when all is well."""
        if batch.triples.ndim != 2 or batch.triples.size(1) != 3:
            raise ValueError(f"batch.triples must have shape (T, 3), got {tuple(batch.triples.shape)}")
        num_objs = batch.objs.size(0)
        checks = (
            ("objs", batch.objs, self.obj_embeddings.num_embeddings),
            ("triples[:, 1] (predicate)", batch.triples[:, 1], self.config.num_predicates),
            ("triples[:, 0] (subject)", batch.triples[:, 0], num_objs),
            ("triples[:, 2] (object)", batch.triples[:, 2], num_objs),
            ("obj_to_img", batch.obj_to_img, batch.num_graphs),
            ("triples_to_img", batch.triples_to_img, batch.num_graphs),
        )
        bad = [(values < 0) | (values >= size) for _, values, size in checks]
        if not torch.stack([b.any() for b in bad]).any():
            return
        for (field, values, size), wrong in zip(checks, bad):
            if wrong.any():
                i = int(wrong.nonzero()[0])
                raise ValueError(f"batch.{field}[{i}] = {int(values[i])} is out of range: expected 0..{size - 1}")


def _mean_per_graph(samples: torch.Tensor, sample_to_graph: torch.Tensor, num_graphs: int) -> torch.Tensor:
    """(S, C) samples, (S,) graph index -> (B, C) mean per graph; zeros for a graph with none
    (SGDiff's ``pool_samples`` with average pooling)."""
    sums = samples.new_zeros(num_graphs, samples.size(1)).index_add(0, sample_to_graph, samples)
    counts = samples.new_zeros(num_graphs).index_add(0, sample_to_graph, samples.new_ones(samples.size(0)))
    return sums / counts.clamp(min=1).unsqueeze(1)


def _assign_to_slots(
    samples: torch.Tensor, sample_to_graph: torch.Tensor, active: torch.Tensor, num_graphs: int, num_slots: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per graph and frame, the active samples in batch order, moved into the first slots.

    Args:
        samples: (T, C).
        sample_to_graph: (T,) long, graph index of each sample.
        active: (F, T) bool, which samples take part in each frame.
        num_graphs: B.
        num_slots: N; samples past the first N of a graph and frame are dropped.

    Returns:
        tokens (B, F, N, C), zero where unused, and mask (B, F, N) bool, True on used slots.
    """
    num_frames = active.size(0)
    order = torch.argsort(sample_to_graph, stable=True)  # (T,) each graph contiguous, batch order kept
    graph = sample_to_graph[order]  # (T,)
    active = active[:, order].long()  # (F, T)
    before = active.cumsum(dim=1) - active  # (F, T) active samples at earlier sorted positions
    counts = torch.bincount(sample_to_graph, minlength=num_graphs)  # (B,)
    first = counts.cumsum(0) - counts  # (B,) sorted position of each graph's first sample
    rank = before - before[:, first[graph]]  # (F, T) slot of each sample within its graph and frame
    frame_idx, pos = ((active > 0) & (rank < num_slots)).nonzero(as_tuple=True)
    index = (graph[pos], frame_idx, rank[frame_idx, pos])
    tokens = samples.new_zeros(num_graphs, num_frames, num_slots, samples.size(1))
    tokens = tokens.index_put(index, samples[order[pos]])
    mask = torch.zeros(num_graphs, num_frames, num_slots, dtype=torch.bool, device=samples.device)
    mask[index] = True
    return tokens, mask


def _find_vocab_file(pretrained_model_name_or_path: str | os.PathLike, kwargs: dict) -> str | None:
    """The ``vocab.json`` beside the weights: in the local folder, or from the Hub repo (None when
    there is none)."""
    subfolder = kwargs.get("subfolder") or ""
    if Path(pretrained_model_name_or_path).is_dir():
        local = Path(pretrained_model_name_or_path) / subfolder / VOCAB_NAME
        return str(local) if local.is_file() else None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        return hf_hub_download(
            str(pretrained_model_name_or_path),
            VOCAB_NAME,
            subfolder=subfolder or None,
            revision=kwargs.get("revision"),
            cache_dir=kwargs.get("cache_dir"),
            token=kwargs.get("token"),
            local_files_only=kwargs.get("local_files_only", False),
        )
    except EntryNotFoundError:
        return None
