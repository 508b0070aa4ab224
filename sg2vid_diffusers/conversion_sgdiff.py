"""Conversion of SGDiff's published scene-graph encoder into a :class:`SceneGraphEncoder` folder.

Reads SGDiff's encoder file (``sip_vg.pt`` / ``sip_coco.pt``: a dict with ``epoch``, ``name``,
``state_dict``, ``optimizer``), a bare state dict, or a Lightning diffusion checkpoint whose encoder
lives under ``cond_stage_model.``. The model's parameter names equal SGDiff's keys, so the
conversion is a strict load with no renaming; anything that does not match is refused.
``conversion/convert_sgdiff_to_diffusers.py`` is the command-line front end.
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
from pathlib import Path
from typing import Any, Mapping

import torch

from .models.sg_encoder import SceneGraphEncoder
from .utils import save_folder_atomically
from .vocabulary import Vocabulary

__all__ = [
    "CheckpointMismatchError",
    "UnsafeCheckpointError",
    "convert_sgdiff_encoder",
    "load_sgdiff_checkpoint",
    "extract_sgdiff_encoder_state_dict",
    "sgdiff_encoder_config",
]

_CLIP_PREFIX = "clip_model."
_LIGHTNING_ENCODER_PREFIX = "cond_stage_model."
_DATA_PARALLEL_PREFIX = "module."
_GRAPH_NET_LAYER = re.compile(r"^graph_net\.gconvs\.(\d+)\.")


class CheckpointMismatchError(ValueError):
    """A checkpoint whose encoder keys or shapes are not those of a :class:`SceneGraphEncoder`.

    Attributes:
        missing: keys the model needs that the checkpoint lacks.
        unexpected: keys the checkpoint has that the model does not know.
        mismatched: ``(key, checkpoint shape, model shape)`` for keys of the wrong shape.
    """

    def __init__(
        self,
        reason: str,
        missing: list[str] | None = None,
        unexpected: list[str] | None = None,
        mismatched: list[tuple[str, tuple, tuple]] | None = None,
    ):
        self.missing = list(missing or [])
        self.unexpected = list(unexpected or [])
        self.mismatched = list(mismatched or [])
        lines = [reason]
        if self.missing:
            lines.append("missing keys: " + ", ".join(self.missing))
        if self.unexpected:
            lines.append("unexpected keys: " + ", ".join(self.unexpected))
        for key, got, expected in self.mismatched:
            lines.append(f"mis-shaped key: {key} has shape {list(got)}, expected {list(expected)}")
        super().__init__("\n  ".join(lines))


class UnsafeCheckpointError(ValueError):
    """A checkpoint that holds Python objects, which only an unsafe (pickle) load can read."""


def load_sgdiff_checkpoint(path: str | os.PathLike, unsafe_load: bool = False) -> Any:
    """``torch.load`` on the CPU, with ``weights_only=True`` unless ``unsafe_load``.

    Raises:
        UnsafeCheckpointError: when the file needs an unsafe load and ``unsafe_load`` is False.
    """
    if unsafe_load:
        warnings.warn(
            f"loading {path} with weights_only=False: unpickling can run arbitrary code; "
            "do this only for a file you trust",
            stacklevel=2,
        )
        return torch.load(path, map_location="cpu", weights_only=False)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's message is a page long; its "WeightsUnpickler error: ..." line names the culprit.
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        culprits = [line for line in lines if line.startswith("WeightsUnpickler error")]
        reason = (culprits or lines or [repr(err)])[0]
        raise UnsafeCheckpointError(
            f"{path}: cannot be loaded with weights_only=True ({reason}). If you trust the file, "
            "load it unsafely (--unsafe-load / unsafe_load=True)."
        ) from None


def extract_sgdiff_encoder_state_dict(checkpoint: Any) -> dict[str, torch.Tensor]:
    """The encoder's tensors from a loaded SGDiff checkpoint, named as :class:`SceneGraphEncoder`'s.

    Takes the ``state_dict`` of a container dict (or a bare state dict), strips a data-parallel
    ``module.`` prefix and drops the frozen CLIP model (``clip_model.*``). When some keys start with
    ``cond_stage_model.`` (a Lightning diffusion checkpoint) only those are kept, prefix stripped.
    Any other key is kept, so that the shape check reports it as unexpected.
    """
    if not isinstance(checkpoint, Mapping):
        raise CheckpointMismatchError(f"expected a dict of tensors, got a {type(checkpoint).__name__}")
    state_dict = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state_dict, Mapping):
        raise CheckpointMismatchError(f"checkpoint['state_dict'] is a {type(state_dict).__name__}, not a dict")

    keys = list(state_dict)
    if keys and all(key.startswith(_DATA_PARALLEL_PREFIX) for key in keys):
        state_dict = {key[len(_DATA_PARALLEL_PREFIX) :]: value for key, value in state_dict.items()}
    if any(key.startswith(_LIGHTNING_ENCODER_PREFIX) for key in state_dict):
        state_dict = {
            key[len(_LIGHTNING_ENCODER_PREFIX) :]: value
            for key, value in state_dict.items()
            if key.startswith(_LIGHTNING_ENCODER_PREFIX)
        }
    out = {key: value for key, value in state_dict.items() if not key.startswith(_CLIP_PREFIX)}
    not_tensors = [key for key, value in out.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        raise CheckpointMismatchError("the state dict holds values that are not tensors", unexpected=not_tensors)
    return out


def sgdiff_encoder_config(state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The :class:`SceneGraphEncoder` config a state dict was saved from, read off its shapes and
    key names (``max_local_triples`` and ``pooling`` are not in the weights: SGDiff's 15 and avg).

    Raises:
        CheckpointMismatchError: when the keys needed to read the sizes are missing or not matrices.
    """
    needed = ("obj_embeddings.weight", "pred_embeddings.weight", "graph_conv.net1.0.weight", "graph_conv.net2.2.weight")
    missing = [key for key in needed if key not in state_dict]
    if missing:
        raise CheckpointMismatchError("not an SGDiff scene-graph encoder checkpoint", missing=missing)
    for key in needed:
        if state_dict[key].ndim != 2:
            raise CheckpointMismatchError(
                f"not an SGDiff scene-graph encoder checkpoint: {key} has shape "
                f"{list(state_dict[key].shape)}, expected a matrix"
            )
    layers = {int(m.group(1)) for key in state_dict if (m := _GRAPH_NET_LAYER.match(key))}
    return {
        "num_objects": state_dict["obj_embeddings.weight"].shape[0] - 1,
        "num_predicates": state_dict["pred_embeddings.weight"].shape[0],
        "embedding_dim": state_dict["obj_embeddings.weight"].shape[1],
        "hidden_dim": state_dict["graph_conv.net1.0.weight"].shape[0],
        "output_dim": state_dict["graph_conv.net2.2.weight"].shape[0],
        "num_graph_layers": 1 + (max(layers) + 1 if layers else 0),
    }


def _check_keys_and_shapes(model: SceneGraphEncoder, state_dict: Mapping[str, torch.Tensor]) -> None:
    expected = model.state_dict()
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    mismatched = [
        (key, tuple(value.shape), tuple(expected[key].shape))
        for key, value in state_dict.items()
        if key in expected and value.shape != expected[key].shape
    ]
    if missing or unexpected or mismatched:
        raise CheckpointMismatchError(
            "the checkpoint does not match SGDiff's encoder", missing, unexpected, mismatched
        )


def convert_sgdiff_encoder(
    checkpoint_path: str | os.PathLike,
    vocab_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    unsafe_load: bool = False,
    overwrite: bool = False,
) -> SceneGraphEncoder:
    """Convert SGDiff's scene-graph encoder into a :class:`SceneGraphEncoder` folder.

    Args:
        checkpoint_path: ``sip_vg.pt`` / ``sip_coco.pt`` (or a bare state dict, or a Lightning
            diffusion ``.ckpt``; see :func:`extract_sgdiff_encoder_state_dict`).
        vocab_path: the ``vocab.json`` the checkpoint was trained with (file or folder).
        output_dir: the diffusers folder to write (config, safetensors, ``vocab.json``).
        unsafe_load: allow a pickle load that can run code (for files holding Python objects).
        overwrite: replace a non-empty ``output_dir``.

    Returns:
        The converted model, with its vocabulary.

    Raises:
        CheckpointMismatchError: when keys or shapes do not match, or the vocabulary's sizes
            disagree with the embedding tables; nothing is written.
        UnsafeCheckpointError: when the file needs ``unsafe_load``.
    """
    vocab = Vocabulary.load(vocab_path)
    state_dict = extract_sgdiff_encoder_state_dict(load_sgdiff_checkpoint(checkpoint_path, unsafe_load))
    config = sgdiff_encoder_config(state_dict)
    for key, size in (("num_objects", vocab.num_objects), ("num_predicates", vocab.num_predicates)):
        if config[key] != size:
            raise CheckpointMismatchError(
                f"{checkpoint_path} does not fit {vocab_path}: {key} is {config[key]} in the checkpoint "
                f"(embedding rows{' - 1' if key == 'num_objects' else ''}) but {size} in the vocabulary"
            )
    model = SceneGraphEncoder(**config)
    _check_keys_and_shapes(model, state_dict)
    model.load_state_dict(state_dict, strict=True)
    model.vocab = vocab
    model.eval()
    save_folder_atomically(model, Path(output_dir), overwrite)
    return model
