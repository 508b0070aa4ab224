"""Models: the scene-graph encoder (and, later, the graph-conditioned denoiser)."""

from .sg_encoder import GraphTripleConv, GraphTripleConvNet, SceneGraphEncoder, SceneGraphEncoderOutput

__all__ = ["GraphTripleConv", "GraphTripleConvNet", "SceneGraphEncoder", "SceneGraphEncoderOutput"]
