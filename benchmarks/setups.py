"""What the benchmarks run: model sizes, scene graphs, graph contexts, pipelines, and a sampling call
timed part by part. Every model has random weights: speed and memory do not depend on them.

Sizes (UNet, latents, encoder, VAE):

- ``tiny``: the test suite's tiny UNet (16, 32); Python overhead dominates, the worst case for a ratio.
- ``builtin``: what the built-in SG-Shapes model would plausibly be (CALIBRATION.md): a 6.3 M UNet3D
  (64, 128), one layer per block, on 16 x 8 x 8 latents of a 1.0 M f8 VAE (64 x 64 frames), and the
  SG-Shapes encoder of docs/pretraining.md (128 wide, 4 graph layers). Untrained.
- ``builtin-f4``: the same UNet on 4 x 16 x 16 latents of train_vae.py's default f4 VAE (5x the cost).
- ``modelscope``: ModelScope text-to-video's UNet3D (1.41 B: (320, 640, 1280, 1280), 2 layers per
  block, head dim 64, cross-attention 1024) with SGDiff's Visual Genome encoder (512 wide, 6 layers).
"""

from __future__ import annotations

import random
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet3DConditionModel
from diffusers.models.attention_processor import Attention

from sg2vid_diffusers import SceneGraphEncoder, Vocabulary, collate_scene_graphs
from sg2vid_diffusers.batching import SceneGraphBatch
from sg2vid_diffusers.data.sg_shapes import sg_shapes_vocabulary
from sg2vid_diffusers.models.graph_attention import is_graph_attention_layer
from sg2vid_diffusers.models.unet_3d_graph import GraphContext, SceneGraphUNet3DConditionModel
from sg2vid_diffusers.pipelines import SceneGraphToVideoPipeline

TWO_LEVELS = dict(
    down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"), up_block_types=("UpBlock3D", "CrossAttnUpBlock3D")
)


@dataclass(frozen=True)
class Size:
    """A model size: UNet3D config, latent shape per frame, encoder config, VAE config (or None)."""

    name: str
    unet: dict[str, Any]
    latent_size: int  # h = w of the latents the benchmarks use by default
    encoder: dict[str, Any]
    vae: dict[str, Any] | None
    vocab: str  # "sg_shapes" or "visual_genome"

    @property
    def graph_token_dim(self) -> int:
        return 3 * self.encoder["output_dim"]

    @property
    def cross_attention_dim(self) -> int:
        return self.unet["cross_attention_dim"]

    @property
    def latent_channels(self) -> int:
        return self.unet["in_channels"]


SIZES: dict[str, Size] = {
    "tiny": Size(
        name="tiny",
        unet=dict(
            block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=4, cross_attention_dim=16,
            attention_head_dim=4, in_channels=4, out_channels=4, sample_size=8, **TWO_LEVELS,
        ),
        latent_size=8,
        encoder=dict(embedding_dim=8, hidden_dim=8, output_dim=8, num_graph_layers=2),
        vae=dict(
            block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4, layers_per_block=1,
        ),
        vocab="sg_shapes",
    ),
    "builtin": Size(
        name="builtin",
        unet=dict(
            block_out_channels=(64, 128), layers_per_block=1, norm_num_groups=32, cross_attention_dim=128,
            attention_head_dim=32, in_channels=16, out_channels=16, sample_size=8, **TWO_LEVELS,
        ),
        latent_size=8,
        encoder=dict(embedding_dim=128, hidden_dim=128, output_dim=128, num_graph_layers=4),
        vae=dict(
            block_out_channels=(16, 32, 64, 64), down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=16, norm_num_groups=16, layers_per_block=1,
        ),
        vocab="sg_shapes",
    ),
    "builtin-f4": Size(
        name="builtin-f4",
        unet=dict(
            block_out_channels=(64, 128), layers_per_block=1, norm_num_groups=32, cross_attention_dim=128,
            attention_head_dim=32, in_channels=4, out_channels=4, sample_size=16, **TWO_LEVELS,
        ),
        latent_size=16,
        encoder=dict(embedding_dim=128, hidden_dim=128, output_dim=128, num_graph_layers=4),
        vae=dict(
            block_out_channels=(32, 64, 64), down_block_types=("DownEncoderBlock2D",) * 3,
            up_block_types=("UpDecoderBlock2D",) * 3, latent_channels=4, norm_num_groups=16, layers_per_block=1,
        ),
        vocab="sg_shapes",
    ),
    "modelscope": Size(
        name="modelscope",
        unet=dict(
            block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, attention_head_dim=64,
            cross_attention_dim=1024, in_channels=4, out_channels=4, sample_size=32, norm_num_groups=32,
        ),
        latent_size=32,
        encoder=dict(embedding_dim=512, hidden_dim=512, output_dim=512, num_graph_layers=6),
        vae=None,  # Stable Diffusion's VAE in the real model; not needed for a UNet step
        vocab="visual_genome",
    ),
}


def get_size(name: str) -> Size:
    if name not in SIZES:
        raise ValueError(f"unknown size {name!r}: expected one of {', '.join(SIZES)}")
    return SIZES[name]


# ---------------------------------------------------------------------------------------------------- vocabularies, graphs


def visual_genome_sized_vocabulary() -> Vocabulary:
    """Visual Genome's sizes as SGDiff uses them (179 objects, 46 predicates, specials included)."""
    return Vocabulary.from_names([f"object {i}" for i in range(178)], [f"predicate {i}" for i in range(45)])


def vocabulary(size: Size) -> Vocabulary:
    return sg_shapes_vocabulary() if size.vocab == "sg_shapes" else visual_genome_sized_vocabulary()


def random_graph(
    vocab: Vocabulary, num_objects: int, num_relationships: int, rng: random.Random, dynamic: bool = False
) -> dict:
    """A scene graph of random names; ``dynamic`` gives it time spans (:func:`with_time_spans`)."""
    objects = [rng.choice(vocab.object_names[1:]) for _ in range(num_objects)]
    relationships = []
    for _ in range(num_relationships if num_objects > 1 else 0):
        subject, object_ = rng.sample(range(num_objects), 2)
        relationships.append(
            {"subject": subject, "predicate": rng.choice(vocab.predicate_names[1:]), "object": object_}
        )
    graph = {"objects": objects, "relationships": relationships}
    return with_time_spans(graph) if dynamic else graph


def with_time_spans(graph: dict) -> dict:
    """The same graph with every other relationship holding over half the clip only (the first
    half, the middle, the second half in turn), so that per-frame tokens differ between frames."""
    spans = ([0.0, 0.5], [0.25, 0.75], [0.5, 1.0])
    relationships = [
        {**relationship, "time": spans[(i // 2) % 3]} if i % 2 == 0 else dict(relationship)
        for i, relationship in enumerate(graph["relationships"])
    ]
    return {**graph, "relationships": relationships}


def graph_with_triples(vocab: Vocabulary, num_triples: int, rng: random.Random, dynamic: bool = False) -> dict:
    """A graph whose collated form has ``num_triples`` triples (its relationships plus one
    ``__in_image__`` triple per object): about a third objects, the rest relationships."""
    num_objects = min(num_triples, max(2 if num_triples >= 2 else 1, round(num_triples / 3)))
    return random_graph(vocab, num_objects, num_triples - num_objects, rng, dynamic)


def graph_batch(vocab: Vocabulary, graphs: list[dict]) -> SceneGraphBatch:
    return collate_scene_graphs(graphs, vocab)


# ---------------------------------------------------------------------------------------------------- models


def build_encoder(size: Size, seed: int = 0, **overrides) -> SceneGraphEncoder:
    torch.manual_seed(seed)
    return SceneGraphEncoder.from_vocab(vocabulary(size), **{**size.encoder, **overrides}).eval()


def build_unet(size: Size, graph_mode: str = "graph_only", seed: int = 0, device: str | torch.device = "cpu"):
    torch.manual_seed(seed)
    with torch.device(device):
        unet = SceneGraphUNet3DConditionModel(
            **size.unet,
            graph_mode=graph_mode,
            graph_token_dim=size.graph_token_dim,
            graph_global_dim=size.encoder["output_dim"],
        )
    return unet.eval()


def build_plain_unet(size: Size, seed: int = 0, device: str | torch.device = "cpu") -> UNet3DConditionModel:
    """diffusers' own ``UNet3DConditionModel`` of the size: the plain text-conditioned baseline."""
    torch.manual_seed(seed)
    with torch.device(device):
        return UNet3DConditionModel(**size.unet).eval()


def graph_unet_sharing_weights(base: UNet3DConditionModel, size: Size, graph_mode: str) -> SceneGraphUNet3DConditionModel:
    """A graph-conditioned UNet whose UNet3D weights ARE ``base``'s tensors (no copy: three ModelScope-
    sized models fit in the memory of one), with new graph weights, on ``base``'s device and dtype.

    Sharing makes "the same UNet3D with plain text cross-attention" literally the same weights."""
    with torch.device("meta"):
        model = SceneGraphUNet3DConditionModel(
            **size.unet,
            graph_mode=graph_mode,
            graph_token_dim=size.graph_token_dim,
            graph_global_dim=size.encoder["output_dim"],
        )
    missing, unexpected = model.load_state_dict(base.state_dict(), strict=False, assign=True)
    if unexpected:
        raise RuntimeError(f"unexpected weights when sharing: {unexpected[:5]}")
    model.initialize_graph_weights(missing)
    # The new graph weights were materialised in float32; bring them to base's dtype (shared tensors
    # already have it and are not copied).
    torch.nn.Module.to(model, device=base.device, dtype=base.dtype)
    on_meta = [name for name, tensor in [*model.named_parameters(), *model.named_buffers()] if tensor.is_meta]
    if on_meta:
        raise RuntimeError(f"weights left on the meta device: {on_meta[:5]}")
    return model.eval()


def build_vae(size: Size, seed: int = 0) -> AutoencoderKL:
    if size.vae is None:
        raise ValueError(f"size {size.name!r} has no VAE")
    torch.manual_seed(seed)
    return AutoencoderKL(in_channels=3, out_channels=3, **size.vae).eval()


def build_pipeline(size: Size, seed: int = 0, encoder: dict[str, Any] | None = None) -> SceneGraphToVideoPipeline:
    """A complete pipeline of the size (graph-only UNet, DDIM); ``encoder`` overrides the encoder config."""
    if encoder is not None:
        size = Size(size.name, size.unet, size.latent_size, {**size.encoder, **encoder}, size.vae, size.vocab)
    pipe = SceneGraphToVideoPipeline(
        vae=build_vae(size, seed),
        unet=build_unet(size, "graph_only", seed),
        scheduler=DDIMScheduler(num_train_timesteps=1000),
        sg_encoder=build_encoder(size, seed),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_pipeline(model: str) -> SceneGraphToVideoPipeline:
    """``"builtin"``: the model shipped in the package; otherwise a pipeline folder."""
    if model == "builtin":
        pipe = SceneGraphToVideoPipeline.from_builtin()
    else:
        pipe = SceneGraphToVideoPipeline.from_pretrained(model)
    pipe.set_progress_bar_config(disable=True)
    for component in (pipe.unet, pipe.vae, pipe.sg_encoder):
        component.eval()
    return pipe


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------------------------------------------- contexts


def random_graph_context(
    batch_size: int, num_frames: int, num_tokens: int, num_real: int, channels: int, generator: torch.Generator,
    dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
) -> GraphContext:
    """A per-frame graph context (B*F, L, C): ``num_real`` real local tokens (of ``num_tokens - 1``)
    and the global token, the rest masked, as ``build_graph_context`` returns it."""
    states = torch.randn(batch_size * num_frames, num_tokens, channels, generator=generator).to(device, dtype)
    mask = torch.zeros(batch_size * num_frames, num_tokens, dtype=torch.bool)
    mask[:, :num_real] = True
    mask[:, -1] = True
    states = states * mask[..., None].to(device, dtype)
    return GraphContext(states, mask.to(device))


# ---------------------------------------------------------------------------------------------------- timed sampling call


class PartTimer:
    """Seconds spent inside named parts of a pipeline call (forward hooks and method wrappers)."""

    def __init__(self, device: torch.device | str | None = None):
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.device = device
        self._handles: list[Any] = []
        self._restore: list[tuple[Any, str]] = []

    def _sync(self) -> None:
        if self.device is not None and torch.device(self.device).type == "cuda":
            torch.cuda.synchronize(self.device)

    def hook_module(self, name: str, module: torch.nn.Module) -> None:
        starts: list[float] = []

        def pre(_module, _args):
            self._sync()
            starts.append(time.perf_counter())

        def post(_module, _args, _output):
            self._sync()
            self.seconds[name] += time.perf_counter() - starts.pop()
            self.calls[name] += 1

        self._handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]

    def wrap_method(self, name: str, owner: Any, method: str) -> None:
        original = getattr(owner, method)

        def timed(*args, **kwargs):
            self._sync()
            start = time.perf_counter()
            result = original(*args, **kwargs)
            self._sync()
            self.seconds[name] += time.perf_counter() - start
            self.calls[name] += 1
            return result

        setattr(owner, method, timed)  # an instance attribute shadows the class's method
        self._restore.append((owner, method))

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        for owner, method in self._restore:
            delattr(owner, method)
        self._handles, self._restore = [], []


@contextmanager
def timed_parts(pipe: SceneGraphToVideoPipeline, device: torch.device | str | None = None) -> Iterator[PartTimer]:
    """Time a pipeline call by parts: ``graph encoding`` (collate + encoder + graph context, once per
    call), ``sg_encoder`` (the encoder's forward alone), ``unet`` (all steps), ``graph cross-attention``
    (the spatial attn2 layers, inside ``unet``) and ``vae decode``."""
    timer = PartTimer(device)
    timer.wrap_method("graph encoding", pipe, "encode_scene_graph")
    timer.hook_module("sg_encoder", pipe.sg_encoder)
    timer.hook_module("unet", pipe.unet)
    for name, module in pipe.unet.named_modules():
        if isinstance(module, Attention) and is_graph_attention_layer(name):
            timer.hook_module("graph cross-attention", module)
    timer.wrap_method("vae decode", pipe, "decode_latents")
    try:
        yield timer
    finally:
        timer.remove()


def sampling_call(pipe: SceneGraphToVideoPipeline, graph: Any, **kwargs) -> Any:
    """One full sampling call with a fixed seed (output_type "np", as a user gets frames)."""
    generator = torch.Generator(device="cpu").manual_seed(0)
    return pipe(scene_graph=graph, generator=generator, **kwargs).frames


# ---------------------------------------------------------------------------------------------------- steps


def cfg_context(unet: SceneGraphUNet3DConditionModel, context: GraphContext, batch_size: int, num_frames: int) -> GraphContext:
    """[null graph, graph] as the pipeline builds it for classifier-free guidance (batch 2B)."""
    return GraphContext.cat([unet.null_graph_context(batch_size, num_frames), context])


@torch.no_grad()
def sampling_step(unet, latents: torch.Tensor, context: GraphContext, timestep: int = 500) -> torch.Tensor:
    """One denoising step's UNet call with guidance: latents (B, C, F, h, w) doubled, ``context`` of batch 2B*F."""
    return unet(torch.cat([latents] * 2), timestep, graph_context=context).sample


def training_step(
    unet, optimizer, local_tokens, local_mask, global_embeds, latents: torch.Tensor,
    generator: torch.Generator, autocast_dtype: torch.dtype | None = None, graph_dropout: float = 0.1,
    text_states: torch.Tensor | None = None,
) -> float:
    """One training step as training/train_video.py takes it (epsilon objective, graph dropout, frozen
    encoder whose outputs are given): add noise, build the graph context (its projections train), UNet
    forward, MSE, backward, optimizer step. ``text_states`` (B, T, C) for a decoupled UNet. Returns the loss."""
    batch_size, num_frames, device = latents.shape[0], latents.shape[2], latents.device
    noise = torch.randn(latents.shape, generator=generator).to(device, latents.dtype)
    timesteps = torch.randint(0, 1000, (batch_size,), generator=generator).to(device)
    alphas = torch.linspace(0.9999, 0.0001, 1000, dtype=torch.float32).to(device)[timesteps].view(-1, 1, 1, 1, 1)
    noisy = (alphas.sqrt() * latents + (1 - alphas).sqrt() * noise).to(latents.dtype)
    drop = (torch.rand(batch_size, generator=generator) < graph_dropout).to(device)
    with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        context = unet.build_graph_context(local_tokens, local_mask, global_embeds, num_frames, drop=drop)
        prediction = unet(noisy, timesteps, encoder_hidden_states=text_states, graph_context=context).sample
    loss = torch.nn.functional.mse_loss(prediction.float(), noise.float())
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()
