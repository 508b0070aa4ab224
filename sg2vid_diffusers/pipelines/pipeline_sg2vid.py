"""``SceneGraphToVideoPipeline``: scene graph (+ optional text) -> video.

The whole sampling loop is in :meth:`SceneGraphToVideoPipeline.__call__`, top to bottom:
validate every input, encode the graphs (once), encode the prompt (if any), draw the noise,
denoise with classifier-free guidance against the null graph, decode the frames.
"""

from __future__ import annotations

import inspect
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import PIL.Image
import torch
from diffusers import DiffusionPipeline
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.loaders import StableDiffusionLoraLoaderMixin
from diffusers.schedulers import KarrasDiffusionSchedulers
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from diffusers.video_processor import VideoProcessor
from einops import rearrange
from huggingface_hub import create_repo

from ..batching import collate_scene_graphs
from ..conditioning import encode_graph_context
from ..models.sg_encoder import SceneGraphEncoder
from ..models.unet_3d_graph import (
    GraphContext,
    SceneGraphUNet3DConditionModel,
    check_layout_scale,
    check_motion_scale,
)
from ..scene_graph import SceneGraph, parse_scene_graphs
from ..utils import atomic_write_text, vae_scale_factor

__all__ = ["GRAPH_FIT_LEVELS", "SceneGraphToVideoPipeline", "SceneGraphToVideoPipelineOutput", "check_num_candidates"]

OUTPUT_TYPES = ("np", "pt", "pil", "latent")

EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> from sg2vid_diffusers import SceneGraphToVideoPipeline
        >>> from sg2vid_diffusers.video_io import write_video

        >>> pipe = SceneGraphToVideoPipeline.from_builtin()
        >>> graph = {
        ...     "objects": ["red circle", "blue square"],
        ...     "relationships": [[0, "left of", 1, [0.0, 0.5]], [0, "right of", 1, [0.75, 1.0]]],
        ... }
        >>> video = pipe(scene_graph=graph, generator=torch.Generator().manual_seed(0)).frames[0]
        >>> write_video("crossing.mp4", video)
        ```
"""


def _repeat_videos(context: GraphContext, num_videos: int, repeats: int) -> GraphContext:
    """A context of ``num_videos`` videos (their rows, one per frame or one per video, in order) with
    each video's rows repeated ``repeats`` times in a row."""
    repeat = lambda t: None if t is None else t.unflatten(0, (num_videos, -1)).repeat_interleave(repeats, 0).flatten(0, 1)  # noqa: E731
    return GraphContext(repeat(context.hidden_states), repeat(context.mask), repeat(context.boxes))


def check_num_candidates(num_candidates, drop_graph: bool = False) -> None:
    """``num_candidates`` is a positive integer, and 1 with ``drop_graph`` (no graph to select by)."""
    if not isinstance(num_candidates, int) or isinstance(num_candidates, bool) or num_candidates < 1:
        raise ValueError(f"num_candidates must be a positive integer, got {num_candidates!r}")
    if drop_graph and num_candidates > 1:
        raise ValueError(
            f"num_candidates={num_candidates} selects videos by their graph, and drop_graph has none: leave it out"
        )


# The noise levels at which :meth:`SceneGraphToVideoPipeline.graph_fit` compares the graph with the
# null graph, as fractions of the scheduler's training steps (100, 200, ..., 900 of 1,000).
GRAPH_FIT_LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass
class SceneGraphToVideoPipelineOutput(BaseOutput):
    """``frames``: (B, F, H, W, 3) floats in [0, 1] for ``"np"``, (B, F, 3, H, W) for ``"pt"``, a list
    of B lists of F PIL images for ``"pil"``, or the latents (B, C, F, h, w) for ``"latent"``.
    ``candidate_scores``: with ``num_candidates`` N > 1, (B, N) each candidate's
    :meth:`~SceneGraphToVideoPipeline.graph_fit` (the video returned is the highest); else None."""

    frames: np.ndarray | torch.Tensor | list[list[PIL.Image.Image]]
    candidate_scores: torch.Tensor | None = None


class SceneGraphToVideoPipeline(DiffusionPipeline, StableDiffusionLoraLoaderMixin):
    r"""Generate videos that obey scene graphs.

    Components:
        vae: an autoencoder (``AutoencoderKL`` or compatible) that decodes each frame's latent.
        unet: a :class:`SceneGraphUNet3DConditionModel` (graph-only or decoupled graph attention).
        scheduler: any diffusers scheduler (DDIM, DPM-Solver, ...).
        sg_encoder: a :class:`SceneGraphEncoder` with its vocabulary (``sg_encoder.vocab``).
        text_encoder, tokenizer: optional; a text-to-video backbone's text tower (decoupled mode).

    Classifier-free guidance runs against the *null graph* (every graph token masked, a learned
    null token in place of the global one: ``unet.null_graph_context``), which the training script
    teaches by graph dropout. SGDiff has no guidance; ``guidance_scale=1`` turns it off.
    """

    model_cpu_offload_seq = "text_encoder->sg_encoder->unet->vae"
    _optional_components = ["text_encoder", "tokenizer"]
    _callback_tensor_inputs = ["latents"]

    def __init__(
        self,
        vae,
        unet: SceneGraphUNet3DConditionModel,
        scheduler: KarrasDiffusionSchedulers,
        sg_encoder: SceneGraphEncoder,
        text_encoder=None,
        tokenizer=None,
        default_guidance_scale: float = 4.0,
        default_motion_scale: float = 1.0,
        default_layout_scale: float = 1.0,
        default_num_candidates: int = 1,
    ):
        super().__init__()
        self.register_modules(
            vae=vae, unet=unet, scheduler=scheduler, sg_encoder=sg_encoder, text_encoder=text_encoder, tokenizer=tokenizer
        )
        # The guidance a model was tuned with travels with it (model_index.json), as diffusers'
        # `requires_safety_checker` does, and so do the moving layout's and the layout bias's scales
        # (1 for models without them); `pipe(guidance_scale=..., motion_scale=..., layout_scale=...)`
        # overrides them.
        self.register_to_config(
            default_guidance_scale=float(default_guidance_scale),
            default_motion_scale=float(default_motion_scale),
            default_layout_scale=float(default_layout_scale),
            default_num_candidates=int(default_num_candidates),
        )
        self.vae_scale_factor = vae_scale_factor(self.vae) if getattr(self, "vae", None) else 8
        self.video_processor = VideoProcessor(do_resize=False, vae_scale_factor=self.vae_scale_factor)
        self._vae_slicing = False

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_builtin(cls, **kwargs) -> "SceneGraphToVideoPipeline":
        """The SG-Shapes model that ships inside the package (offline, a few MB)."""
        from ..builtin import builtin_model_path

        kwargs.setdefault("dtype", torch.float32)  # shipped in fp16 to stay small; computed in fp32
        return cls.from_pretrained(builtin_model_path(), **kwargs)

    # ------------------------------------------------------------------ saving and sharing

    def model_card(self) -> str:
        """A model card for this pipeline: what it is, its vocabulary, how to use it."""
        vocab = self.vocab
        objects = vocab.object_names if vocab is not None else []
        predicates = vocab.predicate_names if vocab is not None else []
        unet = self.unet.config
        size = unet.sample_size * self.vae_scale_factor
        lines = [
            "---",
            "library_name: diffusers",
            "pipeline_tag: text-to-video",
            "tags:",
            "- sg2vid-diffusers",
            "- scene-graph-to-video",
            "- diffusers",
            "---",
            "",
            "# Scene graph to video (sg2vid-diffusers)",
            "",
            "A `SceneGraphToVideoPipeline`: it generates videos that obey a scene graph (objects and",
            "relationships, optionally with time spans). SGDiff's method carried to video on diffusers'",
            f"`UNet3DConditionModel` ({unet.graph_mode.replace('_', '-')} graph attention, "
            f"{'with' if self.text_encoder is not None else 'without'} a text encoder), {size} x {size} frames.",
            "",
            f"Vocabulary: {len(objects)} object categories ({', '.join(objects[:8])}{', ...' if len(objects) > 8 else ''}),",
            f"{len(predicates)} predicates ({', '.join(predicates[:8])}{', ...' if len(predicates) > 8 else ''}).",
            "",
            "```python",
            "import torch",
            "import sg2vid_diffusers",
            "from sg2vid_diffusers import SceneGraphToVideoPipeline",
            "",
            'pipe = SceneGraphToVideoPipeline.from_pretrained("REPO_OR_FOLDER")',
        ]
        if len(objects) >= 2 and predicates:
            lines.append(
                f'graph = {{"objects": ["{objects[0]}", "{objects[1]}"], "relationships": [[0, "{predicates[0]}", 1]]}}'
            )
        else:
            lines.append('graph = {"objects": [...], "relationships": [...]}')
        lines += [
            "video = pipe(scene_graph=graph, generator=torch.Generator().manual_seed(0)).frames[0]",
            "```",
        ]
        return "\n".join(lines) + "\n"

    def save_pretrained(self, save_directory: str | os.PathLike, push_to_hub: bool = False, **kwargs) -> None:
        """Save as diffusers does, plus a ``README.md`` model card when the folder has none (a training
        script's card is kept). With ``push_to_hub`` (``repo_id``, ``token``, ``private``,
        ``commit_message``, ``create_pr``), the folder, card included, is uploaded."""
        hub = {key: kwargs.pop(key) for key in ("repo_id", "token", "private", "commit_message", "create_pr") if key in kwargs}
        super().save_pretrained(save_directory, push_to_hub=False, **kwargs)
        card = Path(save_directory) / "README.md"
        if not card.exists():
            atomic_write_text(card, self.model_card())
        if push_to_hub:
            self._push_folder(save_directory, hub.pop("repo_id", Path(save_directory).name), **hub)

    def push_to_hub(self, repo_id: str, commit_message: str | None = None, private: bool | None = None,
                    token: str | None = None, create_pr: bool = False, **save_kwargs) -> str:  # fmt: skip
        """Upload the pipeline, with its model card, to the Hub repository ``repo_id``."""
        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(tmp, **save_kwargs)
            return self._push_folder(tmp, repo_id, commit_message=commit_message, private=private, token=token,
                                     create_pr=create_pr)  # fmt: skip

    def _push_folder(self, folder, repo_id, commit_message=None, private=None, token=None, create_pr=False):
        repo_id = create_repo(repo_id, exist_ok=True, private=private, token=token).repo_id
        return self._upload_folder(folder, repo_id, token=token, commit_message=commit_message, create_pr=create_pr)

    # ------------------------------------------------------------------ switches

    def enable_vae_slicing(self) -> None:
        """Decode one frame at a time: peak memory independent of the number of frames."""
        self._vae_slicing = True

    def disable_vae_slicing(self) -> None:
        self._vae_slicing = False

    def enable_xformers_memory_efficient_attention(self, attention_op=None) -> None:
        """Use xformers in the UNet, keeping the graph processors and their weights (diffusers' own
        switch would replace every processor with its plain xformers one). Raises when xformers is
        not installed."""
        self.unet.enable_xformers_memory_efficient_attention(attention_op=attention_op)

    def disable_xformers_memory_efficient_attention(self) -> None:
        self.unet.disable_xformers_memory_efficient_attention()

    # ------------------------------------------------------------------ inputs

    @property
    def vocab(self):
        return self.sg_encoder.vocab

    def check_inputs(
        self,
        scene_graph: Any,
        prompt: str | list[str] | None,
        negative_prompt: str | list[str] | None,
        num_frames: int,
        height: int,
        width: int,
        num_inference_steps: int,
        output_type: str,
        latents: torch.Tensor | None,
        callback_on_step_end_tensor_inputs: list[str] | None,
    ) -> list[SceneGraph]:
        """Validate everything before any compute. Returns the parsed graphs.

        Raises:
            SceneGraphError: for a graph the model can't take (field, index and value named).
            ValueError: for any other bad argument.
        """
        if self.vocab is None:
            raise ValueError("the pipeline's sg_encoder has no vocabulary (sg_encoder.vocab is None)")
        graphs = parse_scene_graphs(
            scene_graph, vocab=self.vocab, max_triples=self.sg_encoder.config.max_local_triples
        )
        for name, value in (("num_frames", num_frames), ("num_inference_steps", num_inference_steps)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name, value in (("height", height), ("width", width)):
            if not isinstance(value, int) or value < 1 or value % self.vae_scale_factor:
                raise ValueError(f"{name} must be a positive multiple of {self.vae_scale_factor}, got {value!r}")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        for name, value in (("prompt", prompt), ("negative_prompt", negative_prompt)):
            if value is None:
                continue
            if self.text_encoder is None or self.tokenizer is None:
                raise ValueError(f"{name} needs a pipeline with a text_encoder and a tokenizer; this one has none")
            if isinstance(value, list) and len(value) != len(graphs):
                raise ValueError(f"{name} has {len(value)} entries for {len(graphs)} scene graphs")
            if not isinstance(value, (str, list)):
                raise ValueError(f"{name} must be a string or a list of strings, got {type(value).__name__}")
        if latents is not None:
            expected = self._latent_shape(len(graphs), num_frames, height, width)
            if tuple(latents.shape) != expected:
                raise ValueError(f"latents must have shape {expected}, got {tuple(latents.shape)}")
        unknown = set(callback_on_step_end_tensor_inputs or []) - set(self._callback_tensor_inputs)
        if unknown:
            raise ValueError(
                f"callback_on_step_end_tensor_inputs may name {self._callback_tensor_inputs}, got {sorted(unknown)}"
            )
        return graphs

    def _latent_shape(self, batch_size: int, num_frames: int, height: int, width: int) -> tuple[int, ...]:
        return (
            batch_size,
            self.unet.config.in_channels,
            num_frames,
            height // self.vae_scale_factor,
            width // self.vae_scale_factor,
        )

    # ------------------------------------------------------------------ conditioning

    def encode_scene_graph(
        self, graphs: list[SceneGraph], num_frames: int, device: torch.device, motion_scale: float = 1.0
    ) -> GraphContext:
        """Graph context for the UNet: (B * F, L, C) tokens and mask. Per-frame tokens are used only
        when some graph changes over time (otherwise every frame's tokens are the same)."""
        batch = collate_scene_graphs(graphs, self.vocab).to(device)
        return encode_graph_context(self.sg_encoder, self.unet, batch, num_frames, motion_scale=motion_scale)

    def encode_prompt(self, prompt: str | list[str], batch_size: int, device: torch.device) -> torch.Tensor:
        """(B, T, D) text states from the text encoder."""
        prompts = [prompt] * batch_size if isinstance(prompt, str) else list(prompt)
        tokens = self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        use_mask = getattr(self.text_encoder.config, "use_attention_mask", False)
        attention_mask = tokens.attention_mask.to(device) if use_mask else None
        return self.text_encoder(tokens.input_ids.to(device), attention_mask=attention_mask)[0].to(self.unet.dtype)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, F, h, w) latents -> (B, 3, F, H, W) frames in [-1, 1] (frames folded through the VAE)."""
        batch_size, _, num_frames = latents.shape[:3]
        latents = latents / self.vae.config.scaling_factor
        folded = latents.permute(0, 2, 1, 3, 4).reshape(batch_size * num_frames, *latents.shape[1:2], *latents.shape[3:])
        chunk = 1 if self._vae_slicing else folded.shape[0]
        frames = torch.cat([self.vae.decode(part).sample for part in folded.split(chunk)])
        frames = frames.reshape(batch_size, num_frames, *frames.shape[1:]).permute(0, 2, 1, 3, 4)
        return frames.float()

    def _candidate_latents(self, latents: torch.Tensor, num_candidates: int, generator) -> torch.Tensor:
        """(B, C, F, h, w) noise -> (B * N, C, F, h, w): each video's own noise first (candidate 0, the
        video ``num_candidates=1`` gives), then N - 1 more from its generator (a list: each video's;
        one generator: drawn after the B first, video by video)."""
        num_graphs, extra_shape = latents.shape[0], (num_candidates - 1, *latents.shape[1:])
        draw = lambda shape, g: randn_tensor(shape, generator=g, device=latents.device, dtype=latents.dtype)  # noqa: E731
        if isinstance(generator, list):
            extra = torch.stack([draw(extra_shape, g) for g in generator])
        else:
            extra = draw((num_graphs, *extra_shape), generator)
        return torch.cat([latents[:, None], extra], dim=1).flatten(0, 1)

    @torch.no_grad()
    def graph_fit(
        self,
        latents: torch.Tensor,
        graph_context: GraphContext,
        generator: torch.Generator | list[torch.Generator] | None = None,
        group_size: int = 1,
        levels: tuple[float, ...] = GRAPH_FIT_LEVELS,
        encoder_hidden_states: torch.Tensor | None = None,
        graph_scale: float = 1.0,
        layout_scale: float = 1.0,
    ) -> torch.Tensor:
        r"""How much better its graph explains each clean latent video than the null graph does, by
        the denoiser itself: the mean of

        ``(|x0_null(x_t) - x0|^2 - |x0_graph(x_t) - x0|^2) / sigma_t^2``

        at the training steps t = ``levels`` x the scheduler's ``num_train_timesteps``,

        where ``x_t = alpha_t x0 + sigma_t noise`` is the same noisy video for both, and ``x0_c`` the
        clean video the UNet predicts from it given c (the null graph or the graph); the weight
        ``1 / sigma_t^2`` is the v-prediction loss the built-in model is trained with. A denoising
        error bounds ``-log p`` (the ELBO), so this estimates ``log p(video | graph) - log p(video)``
        up to weights: the diffusion classifier of Li et al. (2023, "Your Diffusion Model is Secretly
        a Zero-Shot Classifier") turned to candidates instead of classes. A video that leaves out an
        object or draws it in another colour is one the graph explains less well. (Ours, not SGDiff's.)

        Args:
            latents: (B, C, F, h, w) clean latents (the sampler's output before decoding).
            graph_context: their graphs' context (``encode_scene_graph``; B * F tokens).
            generator: draws the noise: one tensor per group of ``group_size`` videos, so that the
                candidates of one graph are compared on the same noise; a list gives one generator
                per group.
            group_size: videos per group (B must be a multiple).
            levels: the noise levels, as fractions in (0, 1) of the scheduler's training steps.
            encoder_hidden_states: text states (decoupled mode), the same for both conditions.
            graph_scale, layout_scale: as in ``__call__``.

        Returns:
            (B,) float32, higher = the graph fits better.
        """
        alphas_cumprod = getattr(self.scheduler, "alphas_cumprod", None)
        if alphas_cumprod is None:
            raise ValueError(f"graph_fit needs a scheduler with alphas_cumprod; {type(self.scheduler).__name__} has none")
        prediction_type = self.scheduler.config.get("prediction_type", "epsilon")
        if prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(f"graph_fit does not know the prediction type {prediction_type!r}")
        batch_size, num_frames = latents.shape[0], latents.shape[2]
        if group_size < 1 or batch_size % group_size:
            raise ValueError(f"group_size must divide the batch of {batch_size} latents, got {group_size}")
        num_groups = batch_size // group_size
        if not levels or not all(0 < level < 1 for level in levels):
            raise ValueError(f"levels must be fractions in (0, 1) of the training steps, got {levels!r}")
        timesteps = [min(round(level * len(alphas_cumprod)), len(alphas_cumprod) - 1) for level in levels]
        shape = (len(timesteps), *latents.shape[1:])
        if isinstance(generator, list):
            if len(generator) != num_groups:
                raise ValueError(f"graph_fit got {len(generator)} generators for {num_groups} groups of latents")
            noise = torch.stack([randn_tensor(shape, generator=g, device=latents.device, dtype=latents.dtype) for g in generator])
        else:
            noise = randn_tensor((num_groups, *shape), generator=generator, device=latents.device, dtype=latents.dtype)
        noise = noise.repeat_interleave(group_size, dim=0)  # (B, T, C, F, h, w)

        context = GraphContext.cat([self.unet.null_graph_context(batch_size, num_frames), graph_context])
        text = None if encoder_hidden_states is None else torch.cat([encoder_hidden_states] * 2)
        clean = torch.cat([latents, latents]).float()  # [null, graph] halves, as the UNet's batch
        fit = torch.zeros(batch_size, dtype=torch.float32, device=latents.device)
        for k, t in enumerate(timesteps):
            alpha_bar = alphas_cumprod[t].to(device=latents.device, dtype=torch.float32)
            alpha, sigma = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
            noisy = alpha * clean + sigma * noise[:, k].float().repeat(2, *[1] * (clean.ndim - 1))
            timestep = torch.full((2 * batch_size,), t, device=latents.device, dtype=torch.long)
            pred = self.unet(
                noisy.to(latents.dtype), timestep, encoder_hidden_states=text, graph_context=context,
                graph_scale=graph_scale, layout_scale=layout_scale,
            ).sample.float()  # fmt: skip
            if prediction_type == "epsilon":
                predicted = (noisy - sigma * pred) / alpha
            elif prediction_type == "v_prediction":
                predicted = alpha * noisy - sigma * pred
            else:
                predicted = pred
            error = (predicted - clean).pow(2).flatten(1).mean(1) / sigma**2
            error_null, error_graph = error.chunk(2)
            fit += error_null - error_graph
        return fit / len(timesteps)

    def prepare_extra_step_kwargs(self, generator, eta: float, num_frames: int = 1) -> dict:
        """The scheduler's ``eta`` and ``generator``. The scheduler steps with the frames folded into
        the batch (``(b f)``), so a list of one generator per video becomes one per frame (each
        video's generator repeated: its frames draw their noise from it in turn)."""
        params = set(inspect.signature(self.scheduler.step).parameters)
        kwargs = {}
        if "eta" in params:
            kwargs["eta"] = eta
        if "generator" in params:
            if isinstance(generator, list):
                generator = [g for g in generator for _ in range(num_frames)]
            kwargs["generator"] = generator
        return kwargs

    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self) -> bool:
        return self._guidance_scale > 1

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    # ------------------------------------------------------------------ sampling

    @torch.no_grad()
    def __call__(
        self,
        scene_graph: Any,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        num_frames: int = 16,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 25,
        guidance_scale: float | None = None,
        motion_scale: float | None = None,
        layout_scale: float | None = None,
        graph_scale: float = 1.0,
        eta: float = 0.0,
        num_candidates: int | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "np",
        return_dict: bool = True,
        callback_on_step_end: Callable | PipelineCallback | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        drop_graph: bool = False,
    ) -> SceneGraphToVideoPipelineOutput | tuple:
        r"""Generate one video per scene graph.

        Args:
            scene_graph: a graph or a list of graphs in the scene-graph JSON form (dict, JSON text,
                file path, :class:`SceneGraph`; see SCENE_GRAPH_FORMAT.md). Validated against the
                model's vocabulary before anything runs.
            prompt, negative_prompt: text for a pipeline with a text encoder (decoupled mode); one
                string for all graphs or one per graph. With a text encoder and no prompt, ``""``.
            num_frames: F, frames per video. Time spans map to frames by ``f / F``.
            height, width: in pixels, multiples of the VAE's factor (default: the UNet's sample size).
            num_inference_steps: denoising steps.
            guidance_scale: classifier-free guidance against the null graph; 1 disables it. Default:
                the model's ``default_guidance_scale`` (in ``model_index.json``; 4.0 unless the model
                was saved with another, as the built-in model is).
            motion_scale: for a UNet with the moving layout (``graph_layout_motion``), how much of the
                motion the encoder infers moves the layout bias's boxes: it multiplies the learnt gate
                (0: still boxes; 1: as trained). Default: the model's ``default_motion_scale`` (1.0
                unless the model was saved with another). Other models take only 1.
            layout_scale: for a UNet with the layout bias (``graph_layout_bias``), a multiplier of that
                learnt bias in every graph layer, which draws each place's attention to the objects
                whose inferred box covers it (1: as trained; more: the layout followed more strictly).
                Default: the model's ``default_layout_scale`` (1.0 unless the model was saved with
                another). Other models take only 1. Not in SGDiff, which has no layout bias.
            graph_scale: weight of the graph attention in decoupled mode (graph-only mode ignores it).
            eta: DDIM's eta (ignored by other schedulers).
            num_candidates: N, videos sampled per graph; the one the model itself finds the graph
                explains best (:meth:`graph_fit`, no detector or outside model) is returned, and
                ``candidate_scores`` holds every candidate's fit. Candidate 0 is the video
                ``num_candidates=1`` gives (the same noise); the others draw theirs from the same
                generator after it. Costs N times the sampling plus the fit. Default: the model's
                ``default_num_candidates`` (1 unless the model was saved with another); with
                ``drop_graph``, 1 (there is no graph to select by). Not in SGDiff, which samples once.
            generator: torch generator(s) for the noise: the same seed gives the same video.
            latents: (B, C, F, h, w) starting noise instead of drawing it.
            output_type: ``"np"``, ``"pt"``, ``"pil"`` or ``"latent"``.
            return_dict: return a :class:`SceneGraphToVideoPipelineOutput` (else a tuple).
            callback_on_step_end: called as ``fn(pipe, step, timestep, callback_kwargs)`` after each
                step; may return a dict that replaces tensors named in ``callback_kwargs``. With
                candidates, ``latents`` holds all B * N of them (each graph's N in a row).
            callback_on_step_end_tensor_inputs: which tensors the callback receives (``["latents"]``).
            cross_attention_kwargs: extra arguments for the attention processors.
            drop_graph: condition on the null graph instead (the graphs are still validated): the
                model's unconditional videos, to measure what the graph buys. No guidance then.

        Returns:
            :class:`SceneGraphToVideoPipelineOutput` (``frames``) or ``(frames,)``.
        """
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        callback_on_step_end_tensor_inputs = callback_on_step_end_tensor_inputs or ["latents"]
        default_size = self.unet.config.sample_size * self.vae_scale_factor
        height, width = height or default_size, width or default_size

        # 1. Validate everything before computing anything.
        graphs = self.check_inputs(
            scene_graph, prompt, negative_prompt, num_frames, height, width, num_inference_steps,
            output_type, latents, callback_on_step_end_tensor_inputs,
        )  # fmt: skip
        if guidance_scale is None:
            guidance_scale = self.config.default_guidance_scale
        moving = self.unet.config.graph_layout_motion
        if motion_scale is None:  # a saved default means nothing to a UNet without the moving layout
            motion_scale = self.config.default_motion_scale if moving else 1.0
        check_motion_scale(motion_scale, moving)
        layout_bias = self.unet.config.graph_layout_bias
        if layout_scale is None:  # as for the motion scale
            layout_scale = self.config.default_layout_scale if layout_bias else 1.0
        check_layout_scale(layout_scale, layout_bias)
        if num_candidates is None:
            num_candidates = 1 if drop_graph else self.config.default_num_candidates
        check_num_candidates(num_candidates, drop_graph)
        self._guidance_scale = 1.0 if drop_graph else guidance_scale
        num_graphs = len(graphs)
        # Each graph's candidates sit side by side in the batch: (b n), n = num_candidates.
        expand = lambda items: [x for x in items for _ in range(num_candidates)]  # noqa: E731
        batch_size = num_graphs * num_candidates
        if isinstance(prompt, list):
            prompt = expand(prompt)
        if isinstance(negative_prompt, list):
            negative_prompt = expand(negative_prompt)
        device = self._execution_device

        # 2. Conditioning: graph context (once for all steps), null graph, text.
        if drop_graph:
            graph_context = self.unet.null_graph_context(batch_size, num_frames)
        else:
            graph_context = self.encode_scene_graph(graphs, num_frames, device, motion_scale=motion_scale)
            if num_candidates > 1:  # each graph encoded once, its context repeated for its candidates
                graph_context = _repeat_videos(graph_context, num_graphs, num_candidates)
        cond_context = graph_context
        text_states = None
        if self.text_encoder is not None and self.tokenizer is not None:
            text_states = self.encode_prompt(prompt if prompt is not None else "", batch_size, device)
        cond_text_states = text_states
        if self.do_classifier_free_guidance:
            null_context = self.unet.null_graph_context(batch_size, num_frames)
            graph_context = GraphContext.cat([null_context, graph_context])
            if text_states is not None:
                negative = self.encode_prompt(negative_prompt if negative_prompt is not None else "", batch_size, device)
                text_states = torch.cat([negative, text_states])

        # 3. Noise and timesteps.
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        if latents is None:
            shape = self._latent_shape(num_graphs, num_frames, height, width)
            latents = randn_tensor(shape, generator=generator, device=device, dtype=self.unet.dtype)
        latents = latents.to(device=device, dtype=self.unet.dtype)
        if num_candidates > 1:
            latents = self._candidate_latents(latents, num_candidates, generator)
        latents = latents * self.scheduler.init_noise_sigma
        step_generator = generator
        if isinstance(generator, list):  # each video's generator serves its candidates in turn
            step_generator = expand(generator)
        extra_step_kwargs = self.prepare_extra_step_kwargs(step_generator, eta, latents.shape[2])

        # 4. Denoise.
        self._num_timesteps = len(timesteps)
        with self.progress_bar(total=num_inference_steps) as progress_bar:
            for i, t in enumerate(timesteps):
                model_input = torch.cat([latents] * 2) if self.do_classifier_free_guidance else latents
                model_input = self.scheduler.scale_model_input(model_input, t)
                noise_pred = self.unet(
                    model_input,
                    t,
                    encoder_hidden_states=text_states,
                    graph_context=graph_context,
                    graph_scale=graph_scale,
                    cross_attention_kwargs=cross_attention_kwargs,
                    layout_scale=layout_scale,
                ).sample
                if self.do_classifier_free_guidance:
                    uncond, cond = noise_pred.chunk(2)
                    noise_pred = uncond + guidance_scale * (cond - uncond)
                # Step with frames folded into the batch (as diffusers' text-to-video pipeline does), so
                # that schedulers drawing noise place it the same way and threshold per frame.
                num_latent_frames = latents.shape[2]
                latents = self.scheduler.step(
                    rearrange(noise_pred, "b c f h w -> (b f) c h w"),
                    t,
                    rearrange(latents, "b c f h w -> (b f) c h w"),
                    **extra_step_kwargs,
                ).prev_sample
                latents = rearrange(latents, "(b f) c h w -> b c f h w", f=num_latent_frames)

                if callback_on_step_end is not None:
                    callback_kwargs = {"latents": latents} if "latents" in callback_on_step_end_tensor_inputs else {}
                    outputs = callback_on_step_end(self, i, t, callback_kwargs) or {}
                    latents = outputs.pop("latents", latents)
                progress_bar.update()

        # 5. Keep each graph's best candidate.
        candidate_scores = None
        if num_candidates > 1:
            fit = self.graph_fit(
                latents, cond_context, generator=generator, group_size=num_candidates,
                encoder_hidden_states=cond_text_states, graph_scale=graph_scale, layout_scale=layout_scale,
            )  # fmt: skip
            candidate_scores = fit.view(num_graphs, num_candidates)
            best = candidate_scores.argmax(dim=1)
            latents = latents.view(num_graphs, num_candidates, *latents.shape[1:])[torch.arange(num_graphs), best]

        # 6. Decode.
        if output_type == "latent":
            frames = latents
        else:
            frames = self.video_processor.postprocess_video(self.decode_latents(latents), output_type=output_type)

        self.maybe_free_model_hooks()
        if not return_dict:
            return (frames,) if candidate_scores is None else (frames, candidate_scores)
        return SceneGraphToVideoPipelineOutput(frames=frames, candidate_scores=candidate_scores)


SceneGraphToVideoPipeline.__call__.__doc__ += EXAMPLE_DOC_STRING
