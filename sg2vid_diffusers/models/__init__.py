"""Models: the scene-graph encoder (and, later, the graph-conditioned denoiser)."""

from .sg_encoder import GraphTripleConv, GraphTripleConvNet, SceneGraphEncoder, SceneGraphEncoderOutput

__all__ = ["GraphTripleConv", "GraphTripleConvNet", "SceneGraphEncoder", "SceneGraphEncoderOutput"]
from .graph_attention import (
    DecoupledGraphAttnProcessor,
    GraphAttnProcessor,
    PlainAttnProcessor,
    XFormersDecoupledGraphAttnProcessor,
    XFormersGraphAttnProcessor,
    XFormersPlainAttnProcessor,
    install_graph_processors,
)
from .unet_3d_graph import GraphContext, SceneGraphUNet3DConditionModel, lora_target_modules

__all__ += [
    "DecoupledGraphAttnProcessor",
    "GraphAttnProcessor",
    "GraphContext",
    "PlainAttnProcessor",
    "SceneGraphUNet3DConditionModel",
    "XFormersDecoupledGraphAttnProcessor",
    "XFormersGraphAttnProcessor",
    "XFormersPlainAttnProcessor",
    "install_graph_processors",
    "lora_target_modules",
]
