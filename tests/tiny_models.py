"""Tiny, randomly initialised components for tests (no downloads; each runs in milliseconds)."""

import torch
from diffusers import AutoencoderKL, DDIMScheduler

from sg2vid_diffusers import SceneGraphEncoder
from sg2vid_diffusers.data.sg_shapes import sg_shapes_vocabulary
from sg2vid_diffusers.models.unet_3d_graph import SceneGraphUNet3DConditionModel
from sg2vid_diffusers.pipelines import SceneGraphToVideoPipeline

ENCODER_DIM = 8


def tiny_encoder(seed: int = 0) -> SceneGraphEncoder:
    torch.manual_seed(seed)
    return SceneGraphEncoder.from_vocab(
        sg_shapes_vocabulary(), embedding_dim=8, hidden_dim=8, output_dim=ENCODER_DIM, num_graph_layers=2
    )


def tiny_unet(graph_mode: str = "graph_only", seed: int = 0, cross_attention_dim: int = 16) -> SceneGraphUNet3DConditionModel:
    torch.manual_seed(seed)
    return SceneGraphUNet3DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
        up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
        block_out_channels=(16, 32),
        layers_per_block=1,
        norm_num_groups=4,
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=4,
        graph_mode=graph_mode,
        graph_token_dim=3 * ENCODER_DIM,
        graph_global_dim=ENCODER_DIM,
    )


def tiny_vae(seed: int = 0) -> AutoencoderKL:
    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        latent_channels=4,
        norm_num_groups=4,
        layers_per_block=1,
        sample_size=16,
    )


def tiny_pipeline(seed: int = 0) -> SceneGraphToVideoPipeline:
    pipe = SceneGraphToVideoPipeline(
        vae=tiny_vae(seed),
        unet=tiny_unet(seed=seed),
        scheduler=DDIMScheduler(num_train_timesteps=100),
        sg_encoder=tiny_encoder(seed),
    )
    pipe.set_progress_bar_config(disable=True)
    for module in (pipe.vae, pipe.unet, pipe.sg_encoder):
        module.eval()  # UNet3D's temporal convs have dropout
    return pipe


def tiny_text_encoder(seed: int = 0, hidden_size: int = 16, model_max_length: int = 12):
    """A tiny random ``CLIPTextModel`` and a ``CLIPTokenizer`` built offline (a-z BPE, a few merges):
    the text tower of a text-to-video pipeline. Returns ``(text_encoder, tokenizer)``."""
    import json
    import tempfile
    from pathlib import Path

    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        vocab.update({letter + suffix: len(vocab) + i for i, letter in enumerate(letters)})
    merges = ["r e", "re d</w>", "c i", "ci r", "cir c", "circ l", "circl e</w>", "b l", "bl u", "blu e</w>"]
    for merge in merges:
        vocab.setdefault(merge.replace(" ", ""), len(vocab))
    with tempfile.TemporaryDirectory() as folder:
        Path(folder, "vocab.json").write_text(json.dumps(vocab))
        Path(folder, "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
        tokenizer = CLIPTokenizer.from_pretrained(folder, model_max_length=model_max_length)

    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=model_max_length,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    return CLIPTextModel(config).eval(), tokenizer
