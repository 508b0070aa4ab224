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
