"""sg2vid-diffusers: video generation from scene graphs with diffusion models."""

__version__ = "0.1.0.dev0"

from .batching import SceneGraphBatch, active_triples, collate_scene_graphs
from .scene_graph import (
    Relationship,
    SceneGraph,
    SceneGraphError,
    SceneObject,
    normalize_name,
    parse_scene_graph,
    parse_scene_graphs,
    validate_scene_graph,
)
from .vocabulary import Vocabulary

# Models import diffusers (seconds); the scene-graph contract above stays light.
_LAZY = {
    "SceneGraphEncoder": ".models",
    "SceneGraphEncoderOutput": ".models",
    "SceneGraphToVideoPipeline": ".pipelines",
    "SceneGraphToVideoPipelineOutput": ".pipelines",
    "SceneGraphUNet3DConditionModel": ".models",
    "GraphContext": ".models",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


from . import _diffusers_hook  # noqa: E402

_diffusers_hook.install()
