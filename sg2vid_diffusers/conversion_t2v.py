"""Conversion of a diffusers text-to-video pipeline into a :class:`SceneGraphToVideoPipeline`.

The source is a local diffusers folder in the ModelScope layout (``damo-vilab/text-to-video-ms-1.7b``,
Zeroscope, or any folder of the same shape): ``model_index.json`` naming ``unet``
(``UNet3DConditionModel``), ``vae``, ``text_encoder``, ``tokenizer`` and ``scheduler``, one subfolder
each. The result keeps every one of those components as it is, adds a scene-graph encoder (a
:class:`SceneGraphEncoder` folder with its vocabulary), and turns the UNet into a
:class:`SceneGraphUNet3DConditionModel` in ``"decoupled"`` graph mode: new graph projections and
decoupled graph attention (IP-Adapter's scheme) whose value projections start at zero, so that the
converted pipeline generates exactly what the text-to-video pipeline generates, for any graph,
until the adapters are trained (``training/train_video.py``).

``conversion/convert_t2v_to_sg2vid.py`` is the command-line front end.
"""

from __future__ import annotations

import importlib
import json
import os
import re
from pathlib import Path
from typing import Any

import torch

from .models.sg_encoder import SceneGraphEncoder
from .models.unet_3d_graph import SceneGraphUNet3DConditionModel, is_graph_weight
from .pipelines.pipeline_sg2vid import SceneGraphToVideoPipeline
from .utils import PipelineFolder, save_folder_atomically

__all__ = [
    "DTYPES",
    "T2VConversionError",
    "convert_t2v_to_sg2vid",
    "load_t2v_as_sg2vid",
    "read_t2v_model_index",
]

#: ``--dtype`` names and the torch dtypes they stand for.
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

#: The components a text-to-video folder must have, and what each must be.
REQUIRED_COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
_UNET_CLASS = "UNet3DConditionModel"
# Component classes are looked up in these libraries only: a model_index.json never makes us import
# an arbitrary module.
_LIBRARIES = ("diffusers", "transformers")
_LICENSE_FILES = ("LICENSE", "LICENSE.md", "LICENSE.txt", "LICENCE", "NOTICE")


class T2VConversionError(ValueError):
    """A text-to-video folder, scene-graph encoder or output folder that the conversion cannot use.
    Raised before anything is written."""


# ---------------------------------------------------------------------------------------------- inputs


def _parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise T2VConversionError(f"dtype must be one of {sorted(DTYPES)} (or their torch dtypes), got {dtype}")
        return dtype
    if dtype not in DTYPES:
        raise T2VConversionError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def read_t2v_model_index(t2v_path: str | os.PathLike) -> dict[str, tuple[str, str]]:
    """Check a text-to-video folder's layout without loading any weight.

    Returns:
        ``{component: (library, class name)}`` for the five required components.

    Raises:
        T2VConversionError: when the folder, its ``model_index.json``, a component entry or subfolder
            is missing or malformed, the UNet is not a ``UNet3DConditionModel``, or the folder is
            already a scene-graph pipeline.
    """
    root = Path(t2v_path)
    if not root.is_dir():
        raise T2VConversionError(
            f"{root} is not a folder: give a local diffusers text-to-video folder (download one first, e.g. "
            "`huggingface-cli download damo-vilab/text-to-video-ms-1.7b --local-dir text-to-video-ms-1.7b`)"
        )
    index_file = root / "model_index.json"
    if not index_file.is_file():
        raise T2VConversionError(f"{root} has no model_index.json: not a diffusers pipeline folder")
    try:
        index = json.loads(index_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise T2VConversionError(f"{index_file} is not valid JSON: {err}") from None
    if not isinstance(index, dict):
        raise T2VConversionError(f"{index_file} must hold a JSON object, got {type(index).__name__}")
    pipeline_class = index.get("_class_name")
    if pipeline_class == SceneGraphToVideoPipeline.__name__:
        raise T2VConversionError(f"{root} is already a {pipeline_class} folder; nothing to convert")

    components: dict[str, tuple[str, str]] = {}
    missing = []
    for name in REQUIRED_COMPONENTS:
        entry = index.get(name)
        if entry is None or (isinstance(entry, (list, tuple)) and all(part is None for part in entry)):
            missing.append(name)
            continue
        if (
            not isinstance(entry, (list, tuple))
            or len(entry) != 2
            or not all(isinstance(part, str) and part for part in entry)
        ):
            raise T2VConversionError(
                f"{index_file}: entry {name!r} must be [library, class name], got {json.dumps(entry)}"
            )
        library, class_name = entry
        if library not in _LIBRARIES:
            raise T2VConversionError(
                f"{index_file}: component {name!r} comes from library {library!r}; only {list(_LIBRARIES)} "
                "components are supported"
            )
        components[name] = (library, class_name)
    if missing:
        raise T2VConversionError(
            f"{root} ({pipeline_class or 'unknown pipeline'}) lacks the component(s) {missing}: a text-to-video "
            f"folder needs {list(REQUIRED_COMPONENTS)} (the ModelScope / TextToVideoSDPipeline layout)"
        )

    if components["unet"] != ("diffusers", _UNET_CLASS):
        raise T2VConversionError(
            f"{root}: the unet is a {components['unet'][1]}, not a {_UNET_CLASS}; this converter takes "
            "text-to-video pipelines in the ModelScope layout (TextToVideoSDPipeline)"
        )
    for name in REQUIRED_COMPONENTS:
        if not (root / name).is_dir():
            raise T2VConversionError(f"{index_file} lists {name!r} but {root} has no {name}/ subfolder")
    unet_config_file = root / "unet" / "config.json"
    try:
        unet_class = json.loads(unet_config_file.read_text()).get("_class_name")
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, AttributeError) as err:
        raise T2VConversionError(f"cannot read the UNet's config {unet_config_file}: {err}") from None
    if unet_class != _UNET_CLASS:
        raise T2VConversionError(
            f"{unet_config_file} describes a {unet_class}, not a {_UNET_CLASS}: this converter takes "
            "text-to-video UNets (ModelScope layout)"
        )
    return components


def _load_sg_encoder(sg_encoder: str | os.PathLike | SceneGraphEncoder) -> SceneGraphEncoder:
    if isinstance(sg_encoder, SceneGraphEncoder):
        encoder = sg_encoder
        where = "the given SceneGraphEncoder"
    else:
        folder = Path(sg_encoder)
        if not (folder / "config.json").is_file() and (folder / "sg_encoder" / "config.json").is_file():
            folder = folder / "sg_encoder"  # a scene-graph pipeline folder: reuse its encoder
        where = str(folder)
        config_file = folder / "config.json"
        if not config_file.is_file():
            raise T2VConversionError(
                f"{folder} is not a SceneGraphEncoder folder (no config.json, no sg_encoder/config.json); make "
                "one with conversion/convert_sgdiff_to_diffusers.py or training/train_sg_encoder.py"
            )
        try:
            class_name = json.loads(config_file.read_text()).get("_class_name")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as err:
            raise T2VConversionError(f"cannot read {config_file}: {err}") from None
        if class_name != SceneGraphEncoder.__name__:
            raise T2VConversionError(f"{folder} holds a {class_name}, not a {SceneGraphEncoder.__name__}")
        try:
            encoder = SceneGraphEncoder.from_pretrained(folder)
        except (OSError, ValueError, RuntimeError) as err:
            raise T2VConversionError(f"cannot load the scene-graph encoder from {folder}: {err}") from None
    if encoder.vocab is None:
        raise T2VConversionError(
            f"{where} has no vocabulary (vocab.json): the pipeline could not parse scene graphs; save the "
            "encoder with its vocabulary (encoder.vocab = Vocabulary...; encoder.save_pretrained(...))"
        )
    return encoder


def _check_output(output_dir: Path, inputs: list[Path], overwrite: bool) -> None:
    """Refuse, before any loading, an output that would clobber something."""
    output = output_dir.resolve()
    for source in inputs:
        source = source.resolve()
        if output == source or output in source.parents or source in output.parents:
            raise T2VConversionError(f"the output folder {output_dir} must not be, contain or lie inside the input {source}")
    if output_dir.exists() and not output_dir.is_dir():
        raise FileExistsError(f"{output_dir} exists and is not a folder")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{output_dir} exists and is not empty (pass --overwrite / overwrite=True to replace it)")


def _component_class(name: str, library: str, class_name: str) -> type:
    cls = getattr(importlib.import_module(library), class_name, None)
    if not isinstance(cls, type):
        raise T2VConversionError(f"component {name!r}: {library} has no class {class_name!r}")
    return cls


def _load_component(root: Path, name: str, library: str, class_name: str, variant: str | None) -> Any:
    from diffusers import ModelMixin, SchedulerMixin
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    cls = _component_class(name, library, class_name)
    expected = {
        "vae": ModelMixin,
        "scheduler": SchedulerMixin,
        "text_encoder": PreTrainedModel,
        "tokenizer": PreTrainedTokenizerBase,
    }[name]
    if not issubclass(cls, expected):
        raise T2VConversionError(f"component {name!r} is a {library}.{class_name}, expected a {expected.__name__}")
    kwargs = {"variant": variant} if variant is not None and name in ("vae", "text_encoder") else {}
    try:
        return cls.from_pretrained(root / name, **kwargs)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as err:
        raise T2VConversionError(f"cannot load {name} ({class_name}) from {root / name}: {err}") from None


# ---------------------------------------------------------------------------------------------- conversion


def load_t2v_as_sg2vid(
    t2v_path: str | os.PathLike,
    sg_encoder: str | os.PathLike | SceneGraphEncoder,
    dtype: str | torch.dtype = "fp32",
    variant: str | None = None,
    seed: int = 0,
) -> SceneGraphToVideoPipeline:
    """A :class:`SceneGraphToVideoPipeline` built in memory from a text-to-video folder and an encoder.

    The UNet becomes a decoupled :class:`SceneGraphUNet3DConditionModel` sized for the encoder
    (``graph_token_dim = 3 * output_dim``, ``graph_global_dim = output_dim``; the projections map
    them to the UNet's own ``cross_attention_dim``). Every other component is loaded unchanged.

    Args:
        t2v_path: local diffusers text-to-video folder (see :func:`read_t2v_model_index`).
        sg_encoder: a :class:`SceneGraphEncoder` folder (with ``vocab.json``), a scene-graph pipeline
            folder whose ``sg_encoder/`` to reuse, or the model itself.
        dtype: ``"fp32"``, ``"fp16"``, ``"bf16"`` (or the torch dtype) of every weight; the graph
            weights are initialised in float32 first.
        variant: weight-file variant to read (e.g. ``"fp16"`` for ``*.fp16.safetensors``) for the
            UNet, VAE and text encoder.
        seed: seed of the new graph weights (projections, null token); the global RNG is untouched,
            so a conversion is reproducible.

    Raises:
        T2VConversionError: for an unusable input.
    """
    dtype = _parse_dtype(dtype)
    root = Path(t2v_path)
    components = read_t2v_model_index(root)
    encoder = _load_sg_encoder(sg_encoder)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            unet = SceneGraphUNet3DConditionModel.from_unet3d(
                root,
                graph_mode="decoupled",
                graph_token_dim=3 * encoder.config.output_dim,
                graph_global_dim=encoder.config.output_dim,
                subfolder="unet",
                variant=variant,
            )
        except (OSError, ValueError, RuntimeError, KeyError, TypeError) as err:
            raise T2VConversionError(f"cannot load the UNet from {root / 'unet'}: {err}") from None
    loaded = {
        name: _load_component(root, name, *components[name], variant=variant)
        for name in ("vae", "text_encoder", "tokenizer", "scheduler")
    }
    vae, text_encoder = loaded["vae"], loaded["text_encoder"]

    latent_channels = getattr(vae.config, "latent_channels", None)
    if latent_channels is not None and latent_channels != unet.config.in_channels:
        raise T2VConversionError(
            f"{root}: the VAE has {latent_channels} latent channels but the UNet takes {unet.config.in_channels}"
        )
    text_width = getattr(text_encoder.config, "hidden_size", None)
    if text_width is not None and text_width != unet.config.cross_attention_dim:
        raise T2VConversionError(
            f"{root}: the text encoder's states are {text_width} wide but the UNet's cross_attention_dim is "
            f"{unet.config.cross_attention_dim}"
        )

    pipe = SceneGraphToVideoPipeline(
        vae=vae,
        unet=unet,
        scheduler=loaded["scheduler"],
        sg_encoder=encoder,
        text_encoder=text_encoder,
        tokenizer=loaded["tokenizer"],
    )
    for module in (unet, vae, text_encoder, encoder):
        # nn.Module.to: ModelMixin.to warns about float32-only modules even when there are none.
        torch.nn.Module.to(module, dtype=dtype)
        module.eval()
    return pipe


def _front_matter_license(readme: Path) -> str | None:
    """The ``license:`` of a model card's YAML front matter, if any."""
    try:
        text = readme.read_text()
    except (OSError, UnicodeDecodeError):
        return None
    match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", text, re.DOTALL)
    if not match:
        return None
    found = re.search(r"^license:\s*(\S+)\s*$", match.group(1), re.MULTILINE)
    return found.group(1).strip("'\"") if found else None


def _model_card(pipe: SceneGraphToVideoPipeline, t2v_path: Path, sg_encoder: Any, license_name: str | None) -> str:
    unet = pipe.unet
    new = sum(p.numel() for key, p in unet.state_dict().items() if is_graph_weight(key))
    encoder = sg_encoder if isinstance(sg_encoder, (str, os.PathLike)) else "(a SceneGraphEncoder given in memory)"
    lines = ["---", "library_name: diffusers"]
    if license_name:
        lines.append(f"license: {license_name}")
    lines += [
        "tags:",
        "- sg2vid-diffusers",
        "- scene-graph",
        "- text-to-video",
        "---",
        "",
        "# Scene-graph-to-video pipeline (converted, graph adapters untrained)",
        "",
        f"Converted from the text-to-video pipeline `{t2v_path}` and the scene-graph encoder `{encoder}` with "
        "`conversion/convert_t2v_to_sg2vid.py` (sg2vid-diffusers).",
        "",
        f"- UNet: `SceneGraphUNet3DConditionModel`, `graph_mode=\"decoupled\"`: the text-to-video UNet's weights "
        f"unchanged, plus {new:,} new graph parameters (projections {unet.config.graph_token_dim} / "
        f"{unet.config.graph_global_dim} -> {unet.config.cross_attention_dim}, decoupled graph key/value "
        "projections with the value projections at zero).",
        "- VAE, text encoder, tokenizer and scheduler: those of the text-to-video pipeline, unchanged.",
        f"- dtype: {pipe.unet.dtype}.",
        "",
        "Until the graph adapters are trained (`training/train_video.py`), the pipeline generates exactly what "
        "the text-to-video pipeline generates for the same prompt, negative prompt, sampler settings and seed "
        "(with a deterministic sampler, e.g. DDIM with eta = 0, the default), whatever the graph.",
        "",
        "```python",
        "import torch",
        "from sg2vid_diffusers import SceneGraphToVideoPipeline",
        "",
        'pipe = SceneGraphToVideoPipeline.from_pretrained("<this folder>")',
        "video = pipe(scene_graph=graph, prompt=\"...\", generator=torch.Generator().manual_seed(0)).frames[0]",
        "```",
        "",
        "The weights carry the license of the text-to-video model they come from"
        + (f" ({license_name})." if license_name else "; check it before any use."),
    ]
    return "\n".join(lines) + "\n"


def convert_t2v_to_sg2vid(
    t2v_path: str | os.PathLike,
    sg_encoder: str | os.PathLike | SceneGraphEncoder,
    output_dir: str | os.PathLike,
    overwrite: bool = False,
    dtype: str | torch.dtype = "fp32",
    variant: str | None = None,
    seed: int = 0,
) -> SceneGraphToVideoPipeline:
    """Convert a diffusers text-to-video folder + a scene-graph encoder into a
    :class:`SceneGraphToVideoPipeline` folder with fresh, zero-initialised decoupled graph adapters.

    Args:
        t2v_path: local diffusers text-to-video folder (ModelScope layout: ``model_index.json``,
            ``unet/`` (``UNet3DConditionModel``), ``vae/``, ``text_encoder/``, ``tokenizer/``,
            ``scheduler/``).
        sg_encoder: a :class:`SceneGraphEncoder` folder with ``vocab.json`` (or the model).
        output_dir: the pipeline folder to write: ``model_index.json``, the five components,
            ``sg_encoder/``, a ``README.md`` model card and the source's license files.
        overwrite: replace a non-empty ``output_dir``.
        dtype, variant, seed: see :func:`load_t2v_as_sg2vid`.

    Returns:
        The converted pipeline (as saved).

    Raises:
        T2VConversionError: for an unusable input (nothing is written).
        FileExistsError: when ``output_dir`` is not empty and ``overwrite`` is False.
    """
    output_dir, t2v_path = Path(output_dir), Path(t2v_path)
    inputs = [t2v_path] + ([Path(sg_encoder)] if isinstance(sg_encoder, (str, os.PathLike)) else [])
    _parse_dtype(dtype)
    _check_output(output_dir, inputs, overwrite)  # fail before loading gigabytes
    pipe = load_t2v_as_sg2vid(t2v_path, sg_encoder, dtype=dtype, variant=variant, seed=seed)
    license_name = _front_matter_license(t2v_path / "README.md")
    license_files = [t2v_path / name for name in _LICENSE_FILES if (t2v_path / name).is_file()]
    card = _model_card(pipe, t2v_path, sg_encoder, license_name)
    save_folder_atomically(PipelineFolder(pipe, card, license_files), output_dir, overwrite)
    return pipe
