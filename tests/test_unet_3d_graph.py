"""SceneGraphUNet3DConditionModel: graph context, forward in both modes, loading, checkpointing, LoRA."""

import logging

import pytest
import torch
from diffusers import DiffusionPipeline, UNet3DConditionModel
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict

from sg2vid_diffusers import GraphContext, SceneGraphUNet3DConditionModel
from sg2vid_diffusers.models import (
    DecoupledGraphAttnProcessor,
    GraphAttnProcessor,
    PlainAttnProcessor,
    lora_target_modules,
)
from sg2vid_diffusers.models.graph_attention import is_xformers_available
from test_graph_attention import fake_xformers

B, F, N = 2, 4, 3  # videos, frames, local tokens
C, DT, DG = 16, 12, 6  # cross_attention_dim, graph_token_dim, graph_global_dim
BASE = dict(
    sample_size=8,
    block_out_channels=(8, 16),
    layers_per_block=1,
    norm_num_groups=4,
    cross_attention_dim=C,
    attention_head_dim=4,
    down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
    up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
)
GRAPH = dict(graph_token_dim=DT, graph_global_dim=DG)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def plain_unet():
    torch.manual_seed(0)
    return UNet3DConditionModel(**BASE).eval()


def graph_unet(mode, seed=0):
    torch.manual_seed(seed)
    return SceneGraphUNet3DConditionModel(**BASE, **GRAPH, graph_mode=mode).eval()


def perturb_graph_values(unet):
    """Make the decoupled graph branch non-zero, as training would."""
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for proc in unet.attn_processors.values():
            if isinstance(proc, DecoupledGraphAttnProcessor):
                proc.to_v_graph.weight.normal_(generator=gen)


def encoder_outputs(seed=1, per_frame=False):
    """Random stand-ins for SceneGraphEncoderOutput: local tokens, mask (one padded slot), global."""
    gen = torch.Generator().manual_seed(seed)
    shape = (B, F, N) if per_frame else (B, N)
    tokens = torch.randn(*shape, DT, generator=gen)
    mask = torch.ones(shape, dtype=torch.bool)
    mask[..., -1] = False
    mask[0, ..., -2] = False
    tokens = tokens * mask[..., None]  # the encoder zero-pads
    return tokens, mask, torch.randn(B, DG, generator=gen)


def inputs(seed=2):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(B, 4, F, 8, 8, generator=gen), torch.randn(B, 3, C, generator=gen)


@pytest.fixture
def diffusers_warnings():
    """Warnings logged by diffusers (its logger does not propagate to pytest's caplog)."""
    records = []
    handler = logging.Handler(level=logging.WARNING)
    handler.emit = records.append
    logger = logging.getLogger("diffusers")
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


# ------------------------------------------------------------------ graph context


def test_build_graph_context_projects_local_and_global_tokens_per_frame():
    unet = graph_unet("graph_only")
    tokens, mask, global_embeds = encoder_outputs()
    context = unet.build_graph_context(tokens, mask, global_embeds, num_frames=F)

    assert context.hidden_states.shape == (B * F, N + 1, C)
    assert context.mask.shape == (B * F, N + 1) and context.mask.dtype == torch.bool
    assert context.mask[:, -1].all()  # the global token: no row is ever fully masked
    assert torch.equal(context.mask[:, :N], mask.repeat_interleave(F, dim=0))
    with torch.no_grad():
        expected_local = unet.graph_local_proj(tokens).repeat_interleave(F, dim=0)
        expected_global = unet.graph_global_proj(global_embeds).repeat_interleave(F, dim=0)
    real = context.mask[:, :N]
    torch.testing.assert_close(context.hidden_states[:, :N][real], expected_local[real])
    assert torch.all(context.hidden_states[:, :N][~real] == 0)
    torch.testing.assert_close(context.hidden_states[:, -1], expected_global)


def test_per_frame_tokens_give_a_context_per_frame():
    unet = graph_unet("graph_only")
    tokens, mask, global_embeds = encoder_outputs(per_frame=True)
    mask[1, 2] = False  # video 1 has no active relation in frame 2
    context = unet.build_graph_context(tokens, mask, global_embeds, num_frames=F)
    row = 1 * F + 2
    assert context.mask[row].tolist() == [False] * N + [True]
    with torch.no_grad():
        torch.testing.assert_close(context.hidden_states[1 * F + 1, 0], unet.graph_local_proj(tokens[1, 1, 0]))

    static = unet.build_graph_context(tokens[:, 0], mask[:, 0], global_embeds, num_frames=F)
    repeated = unet.build_graph_context(
        tokens[:, :1].expand(-1, F, -1, -1), mask[:, :1].expand(-1, F, -1), global_embeds, num_frames=F
    )
    torch.testing.assert_close(static.hidden_states, repeated.hidden_states)
    assert torch.equal(static.mask, repeated.mask)
    with pytest.raises(ValueError, match="F=5"):
        unet.build_graph_context(tokens, mask, global_embeds, num_frames=5)


def test_null_graph_context_is_the_null_token_alone():
    unet = graph_unet("graph_only")
    tokens, mask, global_embeds = encoder_outputs()
    null = unet.null_graph_context(B, F, num_local_tokens=N)

    assert null.hidden_states.shape == (B * F, N + 1, C)
    assert not null.mask[:, :N].any() and null.mask[:, -1].all()
    assert torch.equal(null.hidden_states[:, -1], unet.null_graph_token.detach().expand(B * F, C))
    real = unet.build_graph_context(tokens, mask, global_embeds, num_frames=F)
    assert not torch.allclose(null.hidden_states[:, -1], real.hidden_states[:, -1])

    all_dropped = unet.build_graph_context(tokens, mask, global_embeds, F, drop=torch.tensor([True, True]))
    torch.testing.assert_close(all_dropped.hidden_states, null.hidden_states)
    assert torch.equal(all_dropped.mask, null.mask)

    mixed = unet.build_graph_context(tokens, mask, global_embeds, F, drop=torch.tensor([False, True]))
    torch.testing.assert_close(mixed.hidden_states[:F], real.hidden_states[:F])
    assert torch.equal(mixed.mask[:F], real.mask[:F])
    torch.testing.assert_close(mixed.hidden_states[F:], null.hidden_states[F:])
    assert torch.equal(mixed.mask[F:], null.mask[F:])


def test_null_graph_token_learns_from_dropped_graphs():
    unet = graph_unet("graph_only")
    tokens, mask, global_embeds = encoder_outputs()
    sample, _ = inputs()
    context = unet.build_graph_context(tokens, mask, global_embeds, F, drop=torch.tensor([False, True]))
    unet(sample, 10, graph_context=context).sample.square().mean().backward()
    for param in (unet.null_graph_token, unet.graph_local_proj.weight, unet.graph_global_proj.weight):
        assert param.grad is not None and param.grad.abs().sum() > 0


def test_cat_pads_contexts_with_masked_tokens_that_change_nothing():
    unet = graph_unet("graph_only")
    sample, _ = inputs()
    real = unet.build_graph_context(*encoder_outputs(), num_frames=F)
    short_null = unet.null_graph_context(B, F)  # (B*F, 1, C)
    both = GraphContext.cat([short_null, real])
    assert both.hidden_states.shape == (2 * B * F, N + 1, C)
    assert both.mask[: B * F].tolist() == [[True] + [False] * N] * (B * F)

    with torch.no_grad():
        cfg = unet(torch.cat([sample, sample]), 10, graph_context=both).sample
        uncond = unet(sample, 10, graph_context=short_null).sample
        cond = unet(sample, 10, graph_context=real).sample
    torch.testing.assert_close(cfg[:B], uncond, rtol=0, atol=1e-5)
    torch.testing.assert_close(cfg[B:], cond, rtol=0, atol=1e-5)


# ------------------------------------------------------------------ forward


@pytest.mark.parametrize("mode", ["graph_only", "decoupled"])
def test_masked_graph_tokens_do_not_change_the_output(mode):
    unet = graph_unet(mode)
    perturb_graph_values(unet)
    sample, text = inputs()
    context = unet.build_graph_context(*encoder_outputs(), num_frames=F)
    masked = ~context.mask[..., None]
    noise = torch.randn(context.hidden_states.shape, generator=torch.Generator().manual_seed(4))

    def run(states):
        with torch.no_grad():
            return unet(sample, 10, text, graph_context=GraphContext(states, context.mask)).sample

    out = run(context.hidden_states)
    torch.testing.assert_close(run(torch.where(masked, context.hidden_states + 10 * noise, context.hidden_states)), out)
    assert not torch.allclose(run(torch.where(masked, context.hidden_states, context.hidden_states + noise)), out)


def test_a_frames_context_changes_that_frame():
    unet = graph_unet("graph_only")
    sample, _ = inputs()
    tokens, mask, global_embeds = encoder_outputs(per_frame=True)
    changed = tokens.clone()
    changed[0, 2, 0] += 1.0  # video 0, frame 2, first token
    with torch.no_grad():
        out = unet(sample, 10, graph_context=unet.build_graph_context(tokens, mask, global_embeds, F)).sample
        new = unet(sample, 10, graph_context=unet.build_graph_context(changed, mask, global_embeds, F)).sample
    difference = (new - out).abs().amax(dim=(1, 3, 4))  # (B, F)
    assert difference[0, 2] > 0
    assert torch.all(difference[1] == 0)  # the other video
    assert torch.all(difference[0, [0, 1, 3]] > 0)  # the temporal layers carry it to the other frames


@pytest.mark.parametrize("mode", ["graph_only", "decoupled"])
def test_a_per_video_context_equals_it_repeated_per_frame(mode):
    unet = graph_unet(mode)
    perturb_graph_values(unet)
    sample, text = inputs()
    per_frame = unet.build_graph_context(*encoder_outputs(), num_frames=F)
    per_video = GraphContext(per_frame.hidden_states[::F], per_frame.mask[::F])  # (B, L, C)
    with torch.no_grad():
        torch.testing.assert_close(
            unet(sample, 10, text, graph_context=per_video).sample,
            unet(sample, 10, text, graph_context=per_frame).sample,
            rtol=0,
            atol=0,
        )


def test_graph_only_ignores_text():
    unet = graph_unet("graph_only")
    sample, text = inputs()
    context = unet.build_graph_context(*encoder_outputs(), num_frames=F)
    with torch.no_grad():
        torch.testing.assert_close(
            unet(sample, 10, text, graph_context=context).sample, unet(sample, 10, graph_context=context).sample
        )


def test_missing_or_mismatched_inputs_are_clear_errors():
    sample, text = inputs()
    graph_only, decoupled = graph_unet("graph_only"), graph_unet("decoupled")
    context = graph_only.build_graph_context(*encoder_outputs(), num_frames=F)
    with pytest.raises(ValueError, match="graph_context is required in graph_only mode"):
        graph_only(sample, 10, text)
    with pytest.raises(ValueError, match="encoder_hidden_states .* required in decoupled mode"):
        decoupled(sample, 10, graph_context=context)
    with pytest.raises(ValueError, match=r"graph_context has batch 6, but sample has B=2 videos of F=4 frames"):
        graph_only(sample, 10, graph_context=GraphContext(context.hidden_states[:6], context.mask[:6]))
    with pytest.raises(ValueError, match="graph_mode must be one of"):
        SceneGraphUNet3DConditionModel(**BASE, graph_mode="text")


@pytest.mark.parametrize("mode", ["graph_only", "decoupled"])
def test_every_processor_takes_the_graph_arguments_without_warnings(mode, diffusers_warnings):
    unet = graph_unet(mode)
    sample, text = inputs()
    context = unet.build_graph_context(*encoder_outputs(), num_frames=F)
    with torch.no_grad():
        unet(sample, 10, text, graph_context=context)
    assert [record.getMessage() for record in diffusers_warnings] == []

    # the check can fail: one processor that does not name the graph keywords warns on every call
    unet.transformer_in.transformer_blocks[0].attn1.set_processor(AttnProcessor2_0())
    with torch.no_grad():
        unet(sample, 10, text, graph_context=context)
    assert any("graph_hidden_states" in record.getMessage() for record in diffusers_warnings)


@pytest.mark.parametrize(
    "mode, graph_class", [("graph_only", GraphAttnProcessor), ("decoupled", DecoupledGraphAttnProcessor)]
)
def test_graph_processors_sit_on_spatial_cross_attention_only(mode, graph_class):
    unet = graph_unet(mode)
    processors = unet.attn_processors
    assert len(processors) == sum(isinstance(m, Attention) for m in unet.modules())
    for name, proc in processors.items():
        spatial_cross = ".attentions." in name and name.endswith("attn2.processor")
        assert type(proc) is (graph_class if spatial_cross else PlainAttnProcessor), name
    assert sum(isinstance(p, graph_class) for p in processors.values()) == 4


# ------------------------------------------------------------------ from a text-to-video UNet


def test_decoupled_from_unet3d_is_the_base_model_until_trained(plain_unet):
    sample, text = inputs()
    with torch.no_grad():
        expected = plain_unet(sample, 10, text).sample
    unet = SceneGraphUNet3DConditionModel.from_unet3d(plain_unet, graph_mode="decoupled", **GRAPH)
    assert not unet.training
    context = unet.build_graph_context(*encoder_outputs(), num_frames=F)
    with torch.no_grad():
        torch.testing.assert_close(unet(sample, 10, text, graph_context=context).sample, expected, rtol=0, atol=1e-6)
        torch.testing.assert_close(unet(sample, 10, text).sample, expected, rtol=0, atol=1e-6)
        perturb_graph_values(unet)
        assert not torch.allclose(unet(sample, 10, text, graph_context=context).sample, expected, atol=1e-4)
        torch.testing.assert_close(
            unet(sample, 10, text, graph_context=context, graph_scale=0.0).sample, expected, rtol=0, atol=1e-6
        )


def test_decoupled_from_unet3d_with_positions_and_layout_bias_is_still_the_base_model(plain_unet):
    unet = SceneGraphUNet3DConditionModel.from_unet3d(
        plain_unet, graph_token_dim=3 * DG, graph_global_dim=DG, graph_position_dim=8, graph_layout_bias=True
    ).eval()
    assert unet.config.graph_position_dim == 8 and unet.config.graph_layout_bias
    perturb_graph_values(unet)  # the graph branch is live; its position and layout weights are still zero
    sample, text = inputs()
    _, mask, global_embeds = encoder_outputs()
    tokens = torch.randn(B, N, 3 * DG, generator=torch.Generator().manual_seed(8)) * mask[..., None]
    context = unet.build_graph_context(tokens, mask, global_embeds, num_frames=F)
    with torch.no_grad():
        with_graph = unet(sample, 10, text, graph_context=context).sample
        torch.testing.assert_close(unet(sample, 10, text).sample, plain_unet(sample, 10, text).sample, rtol=0, atol=1e-6)
        unet.enable_graph_positions(0)
        unet.enable_graph_layout_bias(False)
        torch.testing.assert_close(unet(sample, 10, text, graph_context=context).sample, with_graph, rtol=0, atol=1e-5)


def test_forward_matches_unet3d_on_odd_sizes_timestep_forms_and_residuals(plain_unet):
    unet = SceneGraphUNet3DConditionModel.from_unet3d(plain_unet, graph_mode="decoupled", **GRAPH)
    gen = torch.Generator().manual_seed(6)
    text = torch.randn(B, 3, C, generator=gen)
    odd = torch.randn(B, 4, F, 7, 9, generator=gen)  # not a multiple of the upsampling factor
    timesteps = torch.tensor([3, 700])
    down_residuals = tuple(
        torch.randn(B * F, channels, size, size, generator=gen) for channels, size in [(8, 8), (8, 8), (8, 4), (16, 4)]
    )
    mid_residual = torch.randn(B * F, 16, 4, 4, generator=gen)
    sample, _ = inputs()
    with torch.no_grad():
        torch.testing.assert_close(unet(odd, timesteps, text).sample, plain_unet(odd, timesteps, text).sample)
        torch.testing.assert_close(
            unet(sample, 10.5, text, down_block_additional_residuals=down_residuals).sample,
            plain_unet(sample, 10.5, text, down_block_additional_residuals=down_residuals).sample,
        )
        torch.testing.assert_close(
            unet(sample, torch.tensor(10), text, mid_block_additional_residual=mid_residual, return_dict=False)[0],
            plain_unet(sample, torch.tensor(10), text, mid_block_additional_residual=mid_residual).sample,
        )


@pytest.mark.parametrize("low_cpu_mem_usage", [False, True])
def test_loading_a_plain_unet3d_folder_initialises_the_graph_weights(plain_unet, tmp_path, low_cpu_mem_usage):
    plain_unet.save_pretrained(tmp_path)
    unet = SceneGraphUNet3DConditionModel.from_pretrained(
        tmp_path, graph_mode="decoupled", low_cpu_mem_usage=low_cpu_mem_usage, **GRAPH
    )
    assert unet.config.graph_mode == "decoupled" and unet.config.graph_token_dim == DT
    assert not [name for name, p in unet.named_parameters() if p.is_meta]
    base = plain_unet.state_dict()
    state = unet.state_dict()
    assert all(torch.equal(state[key], value) for key, value in base.items())
    for name, module in unet.named_modules():
        if isinstance(getattr(module, "processor", None), DecoupledGraphAttnProcessor):
            assert torch.equal(module.processor.to_k_graph.weight, module.to_k.weight), name
            assert torch.count_nonzero(module.processor.to_v_graph.weight) == 0, name
    for key in ("graph_local_proj.weight", "graph_global_proj.weight", "null_graph_token"):
        assert torch.isfinite(state[key]).all() and 0 < state[key].abs().max() < 10, key

    sample, text = inputs()
    context = unet.build_graph_context(*encoder_outputs(), num_frames=F)
    with torch.no_grad():
        torch.testing.assert_close(
            unet(sample, 10, text, graph_context=context).sample, plain_unet(sample, 10, text).sample, rtol=0, atol=1e-6
        )


@pytest.mark.parametrize("mode", ["graph_only", "decoupled"])
def test_save_and_load_round_trip(mode, tmp_path):
    unet = graph_unet(mode)
    perturb_graph_values(unet)
    unet.save_pretrained(tmp_path)
    loaded = SceneGraphUNet3DConditionModel.from_pretrained(tmp_path)

    assert loaded.config.graph_mode == mode
    assert loaded.state_dict().keys() == unet.state_dict().keys()
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in unet.state_dict().items())
    assert (mode == "decoupled") == any(".processor.to_v_graph" in k for k in loaded.state_dict())
    sample, text = inputs()
    context = unet.build_graph_context(*encoder_outputs(), num_frames=F)
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(sample, 10, text, graph_context=context).sample, unet(sample, 10, text, graph_context=context).sample
        )


def perturb_positions(unet, seed=7):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if "to_q_pos" in name:
                param.normal_(generator=gen)


@pytest.mark.parametrize("mode", ["graph_only", "decoupled"])
def test_graph_positions_start_as_the_model_without_them_then_move_it(mode):
    unet = graph_unet(mode)
    perturb_graph_values(unet)
    torch.manual_seed(0)
    positioned = SceneGraphUNet3DConditionModel(**BASE, **GRAPH, graph_mode=mode, graph_position_dim=8).eval()
    missing, unexpected = positioned.load_state_dict(unet.state_dict(), strict=False)
    assert not unexpected and missing and all(".processor.to_q_pos.weight" in key for key in missing)
    gen = torch.Generator().manual_seed(3)
    sample, text = torch.randn(B, 4, F, 8, 6, generator=gen), torch.randn(B, 3, C, generator=gen)  # not square
    context = unet.build_graph_context(*encoder_outputs(), num_frames=F)
    with torch.no_grad():
        before = unet(sample, 10, text, graph_context=context).sample
        torch.testing.assert_close(positioned(sample, 10, text, graph_context=context).sample, before, rtol=0, atol=0)
        perturb_positions(positioned)
        after = positioned(sample, 10, text, graph_context=context).sample
        assert (after - before).abs().max() > 1e-3
        if mode == "decoupled":  # the text-only model (no graph) is untouched
            torch.testing.assert_close(positioned(sample, 10, text).sample, unet(sample, 10, text).sample, rtol=0, atol=0)


@pytest.mark.parametrize("low_cpu_mem_usage", [False, True])
def test_a_model_without_positions_gains_them_unchanged_and_keeps_them_through_save_and_load(tmp_path, low_cpu_mem_usage):
    unet = graph_unet("graph_only")
    unet.save_pretrained(tmp_path / "plain")
    sample, text = inputs()
    context = unet.build_graph_context(*encoder_outputs(), num_frames=F)
    with torch.no_grad():
        before = unet(sample, 10, text, graph_context=context).sample
    loaded = SceneGraphUNet3DConditionModel.from_pretrained(
        tmp_path / "plain", graph_position_dim=8, low_cpu_mem_usage=low_cpu_mem_usage
    ).eval()
    assert loaded.config.graph_position_dim == 8
    positions = {k: v for k, v in loaded.state_dict().items() if "to_q_pos" in k}
    assert len(positions) == 4 and all(not v.is_meta and not v.any() for v in positions.values())
    with torch.no_grad():
        torch.testing.assert_close(loaded(sample, 10, text, graph_context=context).sample, before, rtol=0, atol=0)

    unet.enable_graph_positions(8)  # in place, the same
    assert unet.config.graph_position_dim == 8
    assert sorted(k for k in unet.state_dict() if "to_q_pos" in k) == sorted(positions)
    perturb_positions(unet)
    with torch.no_grad():
        moved = unet(sample, 10, text, graph_context=context).sample
        unet.set_default_attn_processor()  # keeps them
        torch.testing.assert_close(unet(sample, 10, text, graph_context=context).sample, moved, rtol=0, atol=0)
    unet.save_pretrained(tmp_path / "positioned")
    reloaded = SceneGraphUNet3DConditionModel.from_pretrained(tmp_path / "positioned", low_cpu_mem_usage=low_cpu_mem_usage)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(sample, 10, text, graph_context=context).sample, moved, rtol=0, atol=0)
    reloaded.enable_graph_positions(0)
    assert not [k for k in reloaded.state_dict() if "processor" in k]
    with torch.no_grad():
        torch.testing.assert_close(reloaded(sample, 10, text, graph_context=context).sample, before, rtol=0, atol=0)


def test_the_layout_bias_reads_each_tokens_subject_box_and_starts_as_the_model_without_it(tmp_path):
    from sg2vid_diffusers.models.sg_encoder import layout_readout
    from sg2vid_diffusers.training_utils import _window_context

    sgdiff_widths = dict(graph_token_dim=3 * DG, graph_global_dim=DG)  # the encoder's: [subject, predicate, object]
    torch.manual_seed(0)
    unet = SceneGraphUNet3DConditionModel(**BASE, **sgdiff_widths).eval()
    torch.manual_seed(0)
    with_bias = SceneGraphUNet3DConditionModel(**BASE, **sgdiff_widths, graph_layout_bias=True).eval()
    missing, _ = with_bias.load_state_dict(unet.state_dict(), strict=False)
    assert sorted(missing) == sorted(f"{name}.layout_scale" for name in unet.attn_processors
                                     if isinstance(unet.attn_processors[name], GraphAttnProcessor))  # fmt: skip
    _, mask, global_embeds = encoder_outputs(per_frame=True)
    tokens = torch.randn(B, F, N, 3 * DG, generator=torch.Generator().manual_seed(6)) * mask[..., None]
    context = with_bias.build_graph_context(tokens, mask, global_embeds, num_frames=F)
    assert context.boxes.shape == (B * F, N + 1, 4)
    expected = (tokens[..., :DG] @ layout_readout(DG)).reshape(B * F, N, 4)  # the subject third of each token
    torch.testing.assert_close(context.boxes[:, :N], expected)
    assert context.boxes[:, N].isnan().all()  # the global token has no box
    assert unet.build_graph_context(tokens, mask, global_embeds, num_frames=F).boxes is None
    # CFG's batch: the null graph's tokens have no boxes
    both = GraphContext.cat([with_bias.null_graph_context(B, F), context])
    assert both.boxes.shape == (2 * B * F, N + 1, 4) and both.boxes[: B * F].isnan().all()
    # frame windows keep their frames' boxes
    windows = _window_context(context, torch.tensor([1, 0]), F, 2)
    torch.testing.assert_close(windows.boxes.view(B, 2, N + 1, 4)[0], context.boxes.view(B, F, N + 1, 4)[0, 1:3], equal_nan=True)

    sample, text = inputs()
    with torch.no_grad():
        before = unet(sample, 10, text, graph_context=context).sample
        torch.testing.assert_close(with_bias(sample, 10, text, graph_context=context).sample, before, rtol=0, atol=1e-6)
        for name, param in with_bias.named_parameters():
            if name.endswith("layout_scale"):
                param.fill_(0.5)
        after = with_bias(sample, 10, text, graph_context=context).sample
        assert (after - before).abs().max() > 1e-3
    with_bias.save_pretrained(tmp_path)
    loaded = SceneGraphUNet3DConditionModel.from_pretrained(tmp_path)
    assert loaded.config.graph_layout_bias
    with torch.no_grad():
        torch.testing.assert_close(loaded(sample, 10, text, graph_context=context).sample, after, rtol=0, atol=0)
    unet.enable_graph_layout_bias()
    assert unet.config.graph_layout_bias and len([k for k in unet.state_dict() if k.endswith("layout_scale")]) == 4
    with pytest.raises(ValueError, match="graph_token_dim must be 3 x graph_global_dim"):
        SceneGraphUNet3DConditionModel(**BASE, **GRAPH, graph_layout_bias=True)
    with pytest.raises(ValueError, match="graph_token_dim must be 3 x graph_global_dim"):
        graph_unet("graph_only").enable_graph_layout_bias()


def perturb_frame_times(unet, seed=8):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in unet.frame_time_embedding.linear_2.parameters():
            param.normal_(generator=gen)


@pytest.mark.parametrize("low_cpu_mem_usage", [False, True])
def test_frame_times_start_as_the_model_without_them_then_tell_frames_apart(tmp_path, low_cpu_mem_usage):
    """Without frame times, frames with the same input get the same output wherever they are in the
    clip but for the temporal convolutions' padding; with them, each frame knows its time."""
    unet = graph_unet("graph_only")
    unet.save_pretrained(tmp_path / "plain")
    gen = torch.Generator().manual_seed(3)
    still = torch.randn(B, 4, 1, 8, 8, generator=gen).expand(B, 4, F, 8, 8).contiguous()  # one frame, F times
    context = unet.build_graph_context(*encoder_outputs(), num_frames=F)
    with torch.no_grad():
        before = unet(still, 10, graph_context=context).sample
    loaded = SceneGraphUNet3DConditionModel.from_pretrained(
        tmp_path / "plain", frame_time_dim=8, low_cpu_mem_usage=low_cpu_mem_usage
    ).eval()
    assert loaded.config.frame_time_dim == 8
    weights = {k: v for k, v in loaded.state_dict().items() if k.startswith("frame_time_embedding.")}
    assert len(weights) == 4 and all(not v.is_meta for v in weights.values())
    assert not weights["frame_time_embedding.linear_2.weight"].any() and weights["frame_time_embedding.linear_1.weight"].any()
    with torch.no_grad():
        torch.testing.assert_close(loaded(still, 10, graph_context=context).sample, before, rtol=0, atol=0)

    unet.enable_frame_times(8)  # in place, the same
    assert sorted(k for k in unet.state_dict() if k.startswith("frame_time_embedding.")) == sorted(weights)
    perturb_frame_times(unet)
    with torch.no_grad():
        timed = unet(still, 10, graph_context=context).sample
        assert (timed - before).abs().max() > 1e-3
        # the default times are the frames of a whole clip, f / F ...
        whole = torch.arange(F) / F
        torch.testing.assert_close(unet(still, 10, graph_context=context, frame_times=whole).sample, timed, rtol=0, atol=0)
        # ... and a frame's output follows its time: reversed times, another output
        swapped = unet(still, 10, graph_context=context, frame_times=whole.flip(0).expand(B, F)).sample
        assert (swapped - timed).abs().max() > 1e-3
        plain_swapped = graph_unet("graph_only")(still, 10, graph_context=context, frame_times=whole.flip(0)).sample
        torch.testing.assert_close(plain_swapped, before, rtol=0, atol=0)  # a model without frame times ignores them
        with pytest.raises(ValueError, match=r"frame_times must have shape \(4,\) or \(2, 4\)"):
            unet(still, 10, graph_context=context, frame_times=torch.zeros(3))
    unet.save_pretrained(tmp_path / "timed")
    reloaded = SceneGraphUNet3DConditionModel.from_pretrained(tmp_path / "timed", low_cpu_mem_usage=low_cpu_mem_usage)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(still, 10, graph_context=context).sample, timed, rtol=0, atol=0)
    reloaded.enable_frame_times(0)
    assert reloaded.frame_time_embedding is None and reloaded.config.frame_time_dim == 0
    with torch.no_grad():
        torch.testing.assert_close(reloaded(still, 10, graph_context=context).sample, before, rtol=0, atol=0)
    for bad in (-2, 3, 2.0, True):
        with pytest.raises(ValueError, match="frame_time_dim must be 0 or a positive even number"):
            SceneGraphUNet3DConditionModel(**BASE, **GRAPH, frame_time_dim=bad)


@pytest.mark.parametrize("low_cpu_mem_usage", [False, True])
def test_the_moving_layout_moves_each_frames_box_through_a_gate_that_starts_at_zero(tmp_path, low_cpu_mem_usage):
    from sg2vid_diffusers.models.sg_encoder import layout_readout, motion_readout

    widths = dict(graph_token_dim=3 * 8, graph_global_dim=8)
    torch.manual_seed(0)
    still = SceneGraphUNet3DConditionModel(**BASE, **widths, graph_layout_bias=True).eval()
    with torch.no_grad():
        for name, param in still.named_parameters():
            if name.endswith("layout_scale"):  # a trained layout bias
                param.fill_(0.5)
    still.save_pretrained(tmp_path / "still")
    moving = SceneGraphUNet3DConditionModel.from_pretrained(
        tmp_path / "still", graph_layout_motion=True, low_cpu_mem_usage=low_cpu_mem_usage
    ).eval()
    assert moving.config.graph_layout_motion and not moving.graph_layout_motion_gate.is_meta
    assert moving.graph_layout_motion_gate.item() == 0.0
    _, mask, _ = encoder_outputs()
    gen = torch.Generator().manual_seed(6)
    tokens, global_embeds = torch.randn(B, N, 24, generator=gen) * mask[..., None], torch.randn(B, 8, generator=gen)
    context = moving.build_graph_context(tokens, mask, global_embeds, num_frames=F)
    torch.testing.assert_close(context.boxes, still.build_graph_context(tokens, mask, global_embeds, num_frames=F).boxes,
                               equal_nan=True)  # fmt: skip
    sample, text = inputs()
    with torch.no_grad():
        before = still(sample, 10, text, graph_context=context).sample
        torch.testing.assert_close(moving(sample, 10, text, graph_context=context).sample, before, rtol=0, atol=0)
        moving.graph_layout_motion_gate.fill_(0.1)  # x LAYOUT_MOTION_GAIN 10: the whole move
        moved = moving.build_graph_context(tokens, mask, global_embeds, num_frames=F)
    boxes = moved.boxes.view(B, F, N + 1, 4)[:, :, :N]
    mean = tokens[..., :8] @ layout_readout(8)  # (B, N, 4)
    move = tokens[..., :8] @ motion_readout(8)
    centres = (torch.arange(F) + 0.5) / F - 0.5
    torch.testing.assert_close(boxes, mean[:, None] + centres[None, :, None, None] * move[:, None])
    torch.testing.assert_close(boxes.mean(dim=1), mean)  # the frames' boxes average to the clip's
    assert moved.boxes.view(B, F, N + 1, 4)[:, :, N].isnan().all()  # the global token still has none
    with torch.no_grad():  # a sampling-time scale multiplies the gate: half the move, or none
        half = moving.build_graph_context(tokens, mask, global_embeds, num_frames=F, motion_scale=0.5)
        none = moving.build_graph_context(tokens, mask, global_embeds, num_frames=F, motion_scale=0)
    torch.testing.assert_close(half.boxes.view(B, F, N + 1, 4)[:, :, :N], mean[:, None] + 0.5 * centres[None, :, None, None] * move[:, None])
    torch.testing.assert_close(none.boxes.view(B, F, N + 1, 4)[:, :, :N], mean[:, None].expand(B, F, N, 4))
    with pytest.raises(ValueError, match="motion_scale=2 scales the moving layout, and this UNet has none"):
        still.build_graph_context(tokens, mask, global_embeds, num_frames=F, motion_scale=2)
    with torch.no_grad():
        assert (moving(sample, 10, text, graph_context=moved).sample - before).abs().max() > 1e-4
    moving.save_pretrained(tmp_path / "moving")
    reloaded = SceneGraphUNet3DConditionModel.from_pretrained(tmp_path / "moving", low_cpu_mem_usage=low_cpu_mem_usage)
    assert reloaded.graph_layout_motion_gate.item() == pytest.approx(0.1)

    with pytest.raises(ValueError, match="switch it off first"):
        moving.enable_graph_layout_bias(False)
    moving.enable_graph_layout_motion(False)
    assert moving.graph_layout_motion_gate is None and not moving.config.graph_layout_motion
    with pytest.raises(ValueError, match="needs graph_layout_bias"):
        SceneGraphUNet3DConditionModel(**BASE, **widths, graph_layout_motion=True)
    with pytest.raises(ValueError, match="graph_global_dim >= 8"):
        SceneGraphUNet3DConditionModel(**BASE, graph_token_dim=18, graph_global_dim=6, graph_layout_bias=True,
                                       graph_layout_motion=True)  # fmt: skip


def test_bad_graph_position_dims_are_clear_errors():
    for bad in (-4, 6, 2.0):
        with pytest.raises(ValueError, match="graph_position_dim must be 0 or a positive multiple of 4"):
            SceneGraphUNet3DConditionModel(**BASE, **GRAPH, graph_position_dim=bad)
    with pytest.raises(ValueError, match="position_dim must be 0 or a positive multiple of 4"):
        graph_unet("graph_only").enable_graph_positions(10)


def test_a_pipeline_saves_and_loads_the_unet_as_a_component(tmp_path):
    class UNetOnlyPipeline(DiffusionPipeline):
        def __init__(self, unet):
            super().__init__()
            self.register_modules(unet=unet)

    unet = graph_unet("decoupled")
    perturb_graph_values(unet)
    UNetOnlyPipeline(unet).save_pretrained(tmp_path)
    loaded = UNetOnlyPipeline.from_pretrained(tmp_path).unet

    assert type(loaded) is SceneGraphUNet3DConditionModel and loaded.config.graph_mode == "decoupled"
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in unet.state_dict().items())


# ------------------------------------------------------------------ gradient checkpointing


@pytest.mark.parametrize("mode", ["graph_only", "decoupled"])
def test_gradient_checkpointing_gives_the_same_outputs_and_gradients(mode):
    sample, text = inputs()
    tokens, mask, global_embeds = encoder_outputs()
    results = []
    for checkpointing in (False, True):
        unet = graph_unet(mode)  # eval: no dropout, so both runs are deterministic
        perturb_graph_values(unet)
        if checkpointing:
            unet.enable_gradient_checkpointing()
        context = unet.build_graph_context(tokens, mask, global_embeds, F)
        out = unet(sample, 10, text, graph_context=context).sample
        out.square().mean().backward()
        results.append((out.detach(), {n: p.grad.clone() for n, p in unet.named_parameters() if p.grad is not None}))

    (out_plain, grads_plain), (out_ckpt, grads_ckpt) = results
    torch.testing.assert_close(out_ckpt, out_plain)
    assert grads_ckpt.keys() == grads_plain.keys()
    assert "graph_local_proj.weight" in grads_plain and "down_blocks.0.resnets.0.conv1.weight" in grads_plain
    for name in grads_plain:
        torch.testing.assert_close(grads_ckpt[name], grads_plain[name], msg=name)


def test_gradient_checkpointing_wraps_every_block(monkeypatch):
    unet = graph_unet("graph_only")
    unet.enable_gradient_checkpointing()
    assert unet.is_gradient_checkpointing
    calls = []
    checkpoint = torch.utils.checkpoint.checkpoint

    def counting_checkpoint(*args, **kwargs):
        calls.append(kwargs.get("use_reentrant"))
        return checkpoint(*args, **kwargs)

    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", counting_checkpoint)
    sample, _ = inputs()
    context = unet.null_graph_context(B, F)
    unet(sample, 10, graph_context=context)
    assert calls == [False] * (len(unet.down_blocks) + 1 + len(unet.up_blocks))
    with torch.no_grad():
        unet(sample, 10, graph_context=context)
    assert len(calls) == 5  # no checkpointing without gradients
    unet.disable_gradient_checkpointing()
    unet(sample, 10, graph_context=context)
    assert len(calls) == 5


# ------------------------------------------------------------------ attention implementations


def test_set_default_attn_processor_keeps_the_graph_processors_and_weights():
    unet = graph_unet("decoupled")
    perturb_graph_values(unet)
    sample, text = inputs()
    context = unet.build_graph_context(*encoder_outputs(), num_frames=F)
    with torch.no_grad():
        before = unet(sample, 10, text, graph_context=context).sample
        unet.set_default_attn_processor()
        after = unet(sample, 10, text, graph_context=context).sample
    assert sum(isinstance(p, DecoupledGraphAttnProcessor) for p in unet.attn_processors.values()) == 4
    torch.testing.assert_close(after, before, rtol=0, atol=0)


@pytest.mark.skipif(is_xformers_available(), reason="checks the error shown without xformers")
def test_enable_xformers_without_xformers_is_a_clear_error_that_changes_nothing():
    unet = graph_unet("decoupled")
    before = unet.attn_processors
    with pytest.raises(ModuleNotFoundError, match="xformers is not installed"):
        unet.enable_xformers_memory_efficient_attention()
    assert unet.attn_processors == before
    unet.disable_xformers_memory_efficient_attention()
    assert all(type(a) is type(b) for a, b in zip(unet.attn_processors.values(), before.values()))


def test_enable_xformers_keeps_graph_processors_and_weights(monkeypatch):
    device = "cpu"
    if is_xformers_available():
        if not torch.cuda.is_available():
            pytest.skip("xformers' memory-efficient attention needs a GPU")
        device = "cuda"
    else:
        fake_xformers(monkeypatch)  # torch stand-in with xformers' call signature
    from sg2vid_diffusers.models import XFormersDecoupledGraphAttnProcessor, XFormersPlainAttnProcessor

    unet = graph_unet("decoupled").to(device)
    perturb_graph_values(unet)
    sample, text = (t.to(device) for t in inputs())
    context = unet.build_graph_context(*(t.to(device) for t in encoder_outputs()), num_frames=F)
    with torch.no_grad():
        before = unet(sample, 10, text, graph_context=context).sample
        unet.enable_xformers_memory_efficient_attention()
        processors = list(unet.attn_processors.values())
        assert sum(isinstance(p, XFormersDecoupledGraphAttnProcessor) for p in processors) == 4
        assert sum(type(p) is XFormersPlainAttnProcessor for p in processors) == len(processors) - 4
        torch.testing.assert_close(unet(sample, 10, text, graph_context=context).sample, before, rtol=1e-4, atol=1e-4)
        unet.disable_xformers_memory_efficient_attention()
        assert sum(type(p) is DecoupledGraphAttnProcessor for p in unet.attn_processors.values()) == 4
        torch.testing.assert_close(unet(sample, 10, text, graph_context=context).sample, before, rtol=0, atol=0)


def test_processor_replacing_switches_raise():
    unet = graph_unet("graph_only")
    with pytest.raises(NotImplementedError, match="graph attention processors"):
        unet.set_attention_slice("auto")
    with pytest.raises(NotImplementedError, match="graph attention processors"):
        unet.fuse_qkv_projections()


# ------------------------------------------------------------------ LoRA


def test_lora_on_spatial_attention_leaves_temporal_layers_alone():
    unet = graph_unet("decoupled")
    targets = lora_target_modules(unet, scope="spatial")
    assert targets and all(".attentions." in t for t in targets)
    assert "mid_block.attentions.0.transformer_blocks.0.attn2.to_out.0" in targets
    temporal_targets = lora_target_modules(unet, "temporal")
    assert "transformer_in.transformer_blocks.0.attn1.to_q" in temporal_targets
    assert "up_blocks.1.temp_attentions.1.transformer_blocks.0.attn2.to_v" in temporal_targets
    assert not set(targets) & set(temporal_targets)
    assert set(lora_target_modules(unet, "all")) == set(targets) | set(temporal_targets)

    sample, text = inputs()
    context = unet.build_graph_context(*encoder_outputs(), num_frames=F)
    with torch.no_grad():
        before = unet(sample, 10, text, graph_context=context).sample
    unet.add_adapter(LoraConfig(r=2, lora_alpha=2, init_lora_weights="gaussian", target_modules=targets))

    lora_state = get_peft_model_state_dict(unet)
    assert lora_state
    assert all(".attentions." in key for key in lora_state)
    assert not [key for key in lora_state if "temp_attentions" in key or "transformer_in" in key]
    temporal = unet.down_blocks[0].temp_attentions[0].transformer_blocks[0].attn1
    assert type(temporal.to_q) is torch.nn.Linear
    with torch.no_grad():  # LoRA's B starts at zero
        torch.testing.assert_close(unet(sample, 10, text, graph_context=context).sample, before)
    with pytest.raises(ValueError, match="scope must be one of"):
        lora_target_modules(unet, "everything")
