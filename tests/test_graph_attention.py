"""The graph attention processors, one attention layer at a time, and where they are installed."""

import importlib.machinery
import sys
import types

import pytest
import torch
from diffusers import UNet3DConditionModel
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from sg2vid_diffusers.models import (
    DecoupledGraphAttnProcessor,
    GraphAttnProcessor,
    PlainAttnProcessor,
    install_graph_processors,
)
from sg2vid_diffusers.models.graph_attention import (
    graph_layout_weights,
    graph_position_features,
    graph_query_coordinates,
    graph_position_table,
    is_graph_attention_layer,
    is_xformers_available,
)

B, F, M, L = 2, 3, 5, 4  # videos, frames, queries (pixels) per frame, graph tokens
QUERY_DIM, CONTEXT_DIM = 8, 6
TINY_UNET = dict(
    block_out_channels=(8, 16),
    layers_per_block=1,
    norm_num_groups=4,
    cross_attention_dim=CONTEXT_DIM,
    attention_head_dim=4,
    down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
    up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def attn():
    torch.manual_seed(0)
    return Attention(query_dim=QUERY_DIM, cross_attention_dim=CONTEXT_DIM, heads=2, dim_head=4).eval()


@pytest.fixture
def inputs():
    """Queries (B*F, M, C_q), text (B*F, 7, C), graph (B*F, L, C) and a mask with some tokens masked."""
    gen = torch.Generator().manual_seed(1)
    hidden = torch.randn(B * F, M, QUERY_DIM, generator=gen)
    text = torch.randn(B * F, 7, CONTEXT_DIM, generator=gen)
    graph = torch.randn(B * F, L, CONTEXT_DIM, generator=gen)
    mask = torch.ones(B * F, L, dtype=torch.bool)
    mask[:, 1] = False
    mask[0, 2] = False
    return hidden, text, graph, mask


def trained_decoupled(attn):
    """A decoupled processor whose graph branch is no longer zero (as after some training)."""
    processor = DecoupledGraphAttnProcessor.for_layer(attn)
    with torch.no_grad():
        processor.to_v_graph.weight.normal_(generator=torch.Generator().manual_seed(2))
    return processor


def graph_processors(attn):
    return [GraphAttnProcessor(), trained_decoupled(attn)]


# ------------------------------------------------------------------ plain


def test_plain_processor_equals_diffusers_sdpa_and_ignores_graph_arguments(inputs):
    _, _, graph, mask = inputs
    torch.manual_seed(0)
    # Every pre/post-processing switch of Attention at once: spatial norm, 4D input, group norm,
    # residual connection, output rescaling (SpatialNorm's group norm has 32 groups).
    attn = Attention(
        query_dim=32,
        heads=2,
        dim_head=4,
        norm_num_groups=2,
        spatial_norm_dim=3,
        residual_connection=True,
        rescale_output_factor=2.0,
    ).eval()
    image, zq = torch.randn(B * F, 32, 2, 3), torch.randn(B * F, 3, 1, 1)
    expected = AttnProcessor2_0()(attn, image, temb=zq)
    out = PlainAttnProcessor()(attn, image, temb=zq, graph_hidden_states=graph, graph_mask=mask, graph_scale=3.0)
    assert out.shape == image.shape
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


def test_plain_processor_applies_diffusers_attention_mask(attn, inputs):
    hidden, text, _, _ = inputs
    attention_mask = torch.zeros(B * F, 1, text.shape[1])
    attention_mask[:, :, :3] = -10000.0
    expected = AttnProcessor2_0()(attn, hidden, text, attention_mask=attention_mask)
    out = PlainAttnProcessor()(attn, hidden, text, attention_mask=attention_mask)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    assert not torch.allclose(out, PlainAttnProcessor()(attn, hidden, text))


# ------------------------------------------------------------------ graph-only


@pytest.mark.parametrize("cross_attention_norm", [None, "layer_norm"])
def test_graph_only_attends_over_the_graph_with_the_layers_own_projections(inputs, cross_attention_norm):
    hidden, text, graph, _ = inputs
    torch.manual_seed(0)
    attn = Attention(
        query_dim=QUERY_DIM,
        cross_attention_dim=CONTEXT_DIM,
        heads=2,
        dim_head=4,
        cross_attention_norm=cross_attention_norm,
    ).eval()
    expected = AttnProcessor2_0()(attn, hidden, encoder_hidden_states=graph)
    out = GraphAttnProcessor()(attn, hidden, encoder_hidden_states=text, graph_hidden_states=graph)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


def test_graph_only_needs_a_graph(attn, inputs):
    hidden, text, _, _ = inputs
    with pytest.raises(ValueError, match="graph_hidden_states"):
        GraphAttnProcessor()(attn, hidden, text)


# ------------------------------------------------------------------ masks and batches (both graph processors)


@pytest.mark.parametrize("which", [0, 1], ids=["graph_only", "decoupled"])
def test_masked_tokens_receive_no_attention(attn, inputs, which):
    hidden, text, graph, mask = inputs
    processor = graph_processors(attn)[which]
    out = processor(attn, hidden, text, graph_hidden_states=graph, graph_mask=mask)

    noise = torch.randn(graph.shape, generator=torch.Generator().manual_seed(3))
    masked_changed = torch.where(mask[..., None], graph, graph + 10 * noise)
    unmasked_changed = torch.where(mask[..., None], graph + noise, graph)
    torch.testing.assert_close(
        processor(attn, hidden, text, graph_hidden_states=masked_changed, graph_mask=mask), out, rtol=0, atol=1e-6
    )
    assert not torch.allclose(processor(attn, hidden, text, graph_hidden_states=unmasked_changed, graph_mask=mask), out)


@pytest.mark.parametrize("which", [0, 1], ids=["graph_only", "decoupled"])
def test_a_masked_token_is_as_if_it_were_absent(attn, inputs, which):
    hidden, text, graph, _ = inputs
    processor = graph_processors(attn)[which]
    mask = torch.ones(B * F, L, dtype=torch.bool)
    mask[:, 1] = False
    without = torch.cat([graph[:, :1], graph[:, 2:]], dim=1)
    torch.testing.assert_close(
        processor(attn, hidden, text, graph_hidden_states=graph, graph_mask=mask),
        processor(attn, hidden, text, graph_hidden_states=without),
        rtol=0,
        atol=1e-6,
    )


@pytest.mark.parametrize("which", [0, 1], ids=["graph_only", "decoupled"])
def test_a_per_frame_context_only_reaches_its_own_frame(attn, inputs, which):
    hidden, text, graph, mask = inputs
    processor = graph_processors(attn)[which]
    out = processor(attn, hidden, text, graph_hidden_states=graph, graph_mask=mask)
    frame = 1 * F + 2  # video 1, frame 2 (frames are folded (b f))
    changed = graph.clone()
    changed[frame] += 1.0
    new = processor(attn, hidden, text, graph_hidden_states=changed, graph_mask=mask)
    others = [row for row in range(B * F) if row != frame]
    torch.testing.assert_close(new[others], out[others], rtol=0, atol=0)
    assert not torch.allclose(new[frame], out[frame])


@pytest.mark.parametrize("which", [0, 1], ids=["graph_only", "decoupled"])
def test_a_per_video_context_equals_it_repeated_per_frame(attn, inputs, which):
    hidden, text, graph, mask = inputs
    processor = graph_processors(attn)[which]
    per_video, per_video_mask = graph[::F], mask[::F]  # (B, L, C), (B, L)
    repeated = per_video.repeat_interleave(F, dim=0)
    repeated_mask = per_video_mask.repeat_interleave(F, dim=0)
    torch.testing.assert_close(
        processor(attn, hidden, text, graph_hidden_states=per_video, graph_mask=per_video_mask),
        processor(attn, hidden, text, graph_hidden_states=repeated, graph_mask=repeated_mask),
        rtol=0,
        atol=0,
    )


def test_graph_batch_and_mask_errors_name_the_problem(attn, inputs):
    hidden, text, graph, mask = inputs
    processor = GraphAttnProcessor()
    with pytest.raises(ValueError, match="batch 4, which does not fit hidden_states' batch 6"):
        processor(attn, hidden, text, graph_hidden_states=graph[:4])
    with pytest.raises(TypeError, match="bool"):
        processor(attn, hidden, text, graph_hidden_states=graph, graph_mask=mask.float())
    with pytest.raises(ValueError, match="graph_mask has shape"):
        processor(attn, hidden, text, graph_hidden_states=graph, graph_mask=mask[:, :2])


# ------------------------------------------------------------------ decoupled


def test_new_decoupled_processor_is_the_text_attention_whatever_the_graph(attn, inputs):
    hidden, text, graph, mask = inputs
    processor = DecoupledGraphAttnProcessor.for_layer(attn)
    assert torch.equal(processor.to_k_graph.weight, attn.to_k.weight)
    assert torch.count_nonzero(processor.to_v_graph.weight) == 0
    assert sorted(processor.state_dict()) == ["to_k_graph.weight", "to_v_graph.weight"]

    text_only = AttnProcessor2_0()(attn, hidden, text)
    out = processor(attn, hidden, text, graph_hidden_states=graph, graph_mask=mask)
    torch.testing.assert_close(out, text_only, rtol=0, atol=1e-6)


def test_decoupled_graph_branch_is_scaled_by_graph_scale(attn, inputs):
    hidden, text, graph, mask = inputs
    processor = trained_decoupled(attn)

    def run(scale):
        return processor(attn, hidden, text, graph_hidden_states=graph, graph_mask=mask, graph_scale=scale)

    text_only = AttnProcessor2_0()(attn, hidden, text)
    assert not torch.allclose(run(1.0), text_only)
    torch.testing.assert_close(run(0.0), text_only, rtol=0, atol=1e-6)
    torch.testing.assert_close(processor(attn, hidden, text), text_only, rtol=0, atol=1e-6)
    # to_out is affine, so the output moves linearly with the scale
    torch.testing.assert_close(run(2.0) - run(0.0), 2 * (run(1.0) - run(0.0)), rtol=1e-5, atol=1e-5)


def test_decoupled_graph_weights_get_gradients(attn, inputs):
    hidden, text, graph, mask = inputs
    processor = DecoupledGraphAttnProcessor.for_layer(attn)
    processor(attn, hidden, text, graph_hidden_states=graph, graph_mask=mask).square().sum().backward()
    # to_v_graph starts at zero, so only it learns at first (the keys' effect is multiplied by it)
    assert processor.to_v_graph.weight.grad.abs().sum() > 0
    assert processor.to_k_graph.weight.grad.abs().sum() == 0


# ------------------------------------------------------------------ query positions

POS_DIM = 8


def test_position_features_say_where_each_query_is():
    coordinates = graph_query_coordinates(2, 3)  # row-major: (y0 x0, y0 x1, y0 x2, y1 x0, ...)
    torch.testing.assert_close(coordinates[:3, 0], torch.tensor([-2 / 3, 0.0, 2 / 3]))
    torch.testing.assert_close(coordinates[::3, 1], torch.tensor([-0.5, 0.5]))
    features = graph_position_features(coordinates, POS_DIM)
    assert features.shape == (6, POS_DIM)
    grid = features.view(2, 3, POS_DIM)
    # the lowest frequency's sine is monotonic across the grid: x grows to the right, y downwards
    assert (grid[:, 1:, 0] > grid[:, :-1, 0]).all() and torch.equal(grid[0, :, 0], grid[1, :, 0])
    assert (grid[1, :, 2] > grid[0, :, 2]).all() and torch.equal(grid[:, 0, 2], grid[:, 2, 2])
    assert torch.unique(features, dim=0).shape[0] == 6  # every cell is told apart
    torch.testing.assert_close(grid[0, 0, 0], -grid[0, 2, 0])  # centred: cells at -2/3 and +2/3
    for bad in (0, 6, -4):
        with pytest.raises(ValueError, match="multiple of 4"):
            graph_position_features(coordinates, bad)


def test_position_table_has_every_level_of_the_unet():
    # diffusers' stride-2 downsampling gives ceil(size / 2) at each level
    assert sorted(graph_position_table(8, 6, 3)) == [2 * 2, 4 * 3, 8 * 6]
    table = graph_position_table(5, 5, 3)
    assert sorted(table) == [2 * 2, 3 * 3, 5 * 5]
    torch.testing.assert_close(table[9], graph_query_coordinates(3, 3))


def positional(processor, seed=3):
    """``processor`` with its position projection no longer zero (as after some training)."""
    with torch.no_grad():
        processor.to_q_pos.weight.normal_(generator=torch.Generator().manual_seed(seed))
    return processor


POSITIONS = {M: graph_query_coordinates(1, M)}


@pytest.mark.parametrize("which", [0, 1], ids=["graph_only", "decoupled"])
def test_positions_change_nothing_until_trained_then_tell_queries_apart(attn, inputs, which):
    hidden, text, graph, mask = inputs
    base = graph_processors(attn)[which]
    if which == 0:
        with_positions = GraphAttnProcessor.for_layer(attn, position_dim=POS_DIM)
    else:
        with_positions = DecoupledGraphAttnProcessor.for_layer(attn, position_dim=POS_DIM)
        with_positions.load_state_dict({**base.state_dict(), "to_q_pos.weight": with_positions.to_q_pos.weight})
    args = dict(graph_hidden_states=graph, graph_mask=mask)
    torch.testing.assert_close(
        with_positions(attn, hidden, text, **args, graph_positions=POSITIONS), base(attn, hidden, text, **args),
        rtol=0, atol=0,
    )  # fmt: skip
    # the same content at every position: without positions every query gives the same output
    same = hidden[:, :1].expand_as(hidden)
    assert torch.allclose(base(attn, same, text, **args)[:, 1:], base(attn, same, text, **args)[:, :1])
    out = positional(with_positions)(attn, same, text, **args, graph_positions=POSITIONS)
    assert not torch.allclose(out[:, 1:], out[:, :1], atol=1e-4)


def test_decoupled_positions_reach_the_graph_branch_only(attn, inputs):
    hidden, text, graph, mask = inputs
    processor = positional(DecoupledGraphAttnProcessor.for_layer(attn, position_dim=POS_DIM))
    text_only = AttnProcessor2_0()(attn, hidden, encoder_hidden_states=text)
    out = processor(attn, hidden, text, graph_hidden_states=graph, graph_mask=mask, graph_scale=0.0,
                    graph_positions=POSITIONS)  # fmt: skip
    torch.testing.assert_close(out, text_only, rtol=0, atol=1e-6)


@pytest.mark.parametrize("which", [0, 1], ids=["graph_only", "decoupled"])
def test_position_projection_learns_from_zero(attn, inputs, which):
    hidden, text, graph, mask = inputs
    cls = (GraphAttnProcessor, DecoupledGraphAttnProcessor)[which]
    processor = cls.for_layer(attn, position_dim=POS_DIM)
    if which == 1:
        with torch.no_grad():
            processor.to_v_graph.weight.normal_(generator=torch.Generator().manual_seed(2))
    out = processor(attn, hidden, text, graph_hidden_states=graph, graph_mask=mask, graph_positions=POSITIONS)
    out.square().sum().backward()
    assert processor.to_q_pos.weight.grad.abs().sum() > 0


def test_layout_weights_say_how_much_a_query_lies_inside_each_box():
    coordinates = torch.tensor([[-0.5, 0.0], [0.5, 0.0], [0.0, 0.9]])  # left, right, bottom
    boxes = torch.tensor([[[-0.8, -0.3, -0.2, 0.3], [0.2, -0.3, 0.8, 0.3], [float("nan")] * 4]])  # left, right, none
    weights = graph_layout_weights(coordinates, boxes)
    assert weights.shape == (1, 3, 3)
    assert weights[0, 0, 0] > 0.9 and weights[0, 1, 1] > 0.9  # inside
    assert weights[0, 0, 1] < 0.01 and weights[0, 1, 0] < 0.01 and weights[0, 2, :2].max() < 0.05  # outside
    assert torch.equal(weights[0, :, 2], torch.zeros(3))  # no box, no weight
    # a degenerate (or inverted) box counts as a small one around its centre
    tiny = graph_layout_weights(coordinates[:1], torch.tensor([[[-0.5, 0.0, -0.5, 0.0], [-0.4, 0.1, -0.6, -0.1]]]))
    assert (tiny > 0.5).all()


@pytest.mark.parametrize("which", [0, 1], ids=["graph_only", "decoupled"])
def test_the_layout_bias_changes_nothing_until_trained_then_sends_queries_to_the_token_whose_box_holds_them(
    attn, inputs, which
):
    _, text, graph, _ = inputs
    gen = torch.Generator().manual_seed(4)
    hidden = torch.randn(1, 2, QUERY_DIM, generator=gen)  # two queries: left and right
    text, graph = text[:1], graph[:1, :2]  # two tokens
    positions = {2: graph_query_coordinates(1, 2)}
    boxes = torch.tensor([[[-1.0, -1.0, 0.0, 1.0], [0.0, -1.0, 1.0, 1.0]]])  # token 0 left half, token 1 right half
    base = graph_processors(attn)[which]
    cls = (GraphAttnProcessor, DecoupledGraphAttnProcessor)[which]
    processor = cls.for_layer(attn, layout_bias=True)
    if which == 1:  # the same (trained) decoupled projections as the processor without the bias
        processor.load_state_dict({**base.state_dict(), "layout_scale": processor.layout_scale})
    assert processor.layout_scale.shape == (attn.heads,) and not processor.layout_scale.any()
    args = dict(graph_hidden_states=graph, graph_positions=positions)
    before = base(attn, hidden, text, **args)
    # (an additive mask of zeros instead of none: the same up to float rounding)
    torch.testing.assert_close(processor(attn, hidden, text, **args, graph_boxes=boxes), before, rtol=0, atol=1e-6)
    with torch.no_grad():
        processor.layout_scale.fill_(5.0)  # x LAYOUT_SCALE_GAIN: far stronger than any content score
    out = processor(attn, hidden, text, **args, graph_boxes=boxes)
    only = [base(attn, hidden, text, **args, graph_mask=torch.tensor([[True, False], [False, True]][k])[None])
            for k in (0, 1)]  # fmt: skip
    torch.testing.assert_close(out[:, 0], only[0][:, 0], rtol=1e-4, atol=1e-4)  # the left query reads token 0
    torch.testing.assert_close(out[:, 1], only[1][:, 1], rtol=1e-4, atol=1e-4)  # the right one token 1
    # a masked token stays unread even where its box holds the query
    masked = processor(attn, hidden, text, **args, graph_boxes=boxes, graph_mask=torch.tensor([[False, True]]))
    torch.testing.assert_close(masked, only[1], rtol=1e-5, atol=1e-5)
    # the scale learns from zero
    processor.layout_scale.data.zero_()
    processor(attn, hidden, text, **args, graph_boxes=boxes).square().sum().backward()
    assert processor.layout_scale.grad.abs().sum() > 0


def test_positions_missing_or_of_another_size_are_clear_errors(attn, inputs):
    hidden, text, graph, mask = inputs
    processor = GraphAttnProcessor.for_layer(attn, position_dim=POS_DIM)
    with pytest.raises(ValueError, match="needs `graph_positions`"):
        processor(attn, hidden, text, graph_hidden_states=graph)
    with pytest.raises(ValueError, match=r"no coordinates for 5 query positions \(it has sizes \[4, 16\]\)"):
        processor(attn, hidden, text, graph_hidden_states=graph, graph_positions=graph_position_table(4, 4, 2))
    with pytest.raises(ValueError, match="needs hidden_size"):
        GraphAttnProcessor(position_dim=POS_DIM)
    with pytest.raises(ValueError, match="multiple of 4"):
        GraphAttnProcessor(hidden_size=8, position_dim=6)


# ------------------------------------------------------------------ installing in a UNet


@pytest.fixture
def unet3d():
    torch.manual_seed(0)
    return UNet3DConditionModel(**TINY_UNET).eval()


def test_layer_names_that_receive_the_graph():
    assert is_graph_attention_layer("down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor")
    assert is_graph_attention_layer("mid_block.attentions.0.transformer_blocks.0.attn2")
    assert not is_graph_attention_layer("down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor")
    assert not is_graph_attention_layer("down_blocks.0.temp_attentions.0.transformer_blocks.0.attn2.processor")
    assert not is_graph_attention_layer("transformer_in.transformer_blocks.0.attn2.processor")


@pytest.mark.parametrize(
    "mode, graph_class", [("graph_only", GraphAttnProcessor), ("decoupled", DecoupledGraphAttnProcessor)]
)
def test_install_puts_graph_processors_on_spatial_cross_attention_only(unet3d, mode, graph_class):
    num_layers = sum(isinstance(m, Attention) for m in unet3d.modules())
    install_graph_processors(unet3d, mode)
    processors = unet3d.attn_processors
    assert len(processors) == num_layers
    graph_layers = sorted(name for name, proc in processors.items() if isinstance(proc, graph_class))
    assert graph_layers == [
        "down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor",
        "mid_block.attentions.0.transformer_blocks.0.attn2.processor",
        "up_blocks.1.attentions.0.transformer_blocks.0.attn2.processor",
        "up_blocks.1.attentions.1.transformer_blocks.0.attn2.processor",
    ]
    others = [proc for name, proc in processors.items() if name not in graph_layers]
    assert all(type(proc) is PlainAttnProcessor for proc in others)
    assert any("temp_attentions" in name for name, proc in processors.items() if type(proc) is PlainAttnProcessor)


def test_reinstalling_keeps_trained_decoupled_weights(unet3d):
    install_graph_processors(unet3d, "decoupled")
    with torch.no_grad():
        for proc in unet3d.attn_processors.values():
            if isinstance(proc, DecoupledGraphAttnProcessor):
                proc.to_v_graph.weight.fill_(0.5)
    before = {k: v.clone() for k, v in unet3d.state_dict().items() if "processor" in k}
    assert len(before) == 8  # 4 layers x (to_k_graph, to_v_graph)

    install_graph_processors(unet3d, "decoupled")
    after = {k: v for k, v in unet3d.state_dict().items() if "processor" in k}
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_reinstalling_keeps_trained_position_weights_and_adds_or_drops_them(unet3d):
    install_graph_processors(unet3d, "graph_only", position_dim=POS_DIM)
    weights = {k: v for k, v in unet3d.state_dict().items() if "processor" in k}
    assert sorted(weights) == sorted(f"{name}.to_q_pos.weight" for name in unet3d.attn_processors
                                     if is_graph_attention_layer(name))  # fmt: skip
    assert all(not v.any() for v in weights.values())  # zero at the start
    with torch.no_grad():
        for proc in unet3d.attn_processors.values():
            if isinstance(proc, GraphAttnProcessor):
                proc.to_q_pos.weight.fill_(0.5)
    install_graph_processors(unet3d, "graph_only", position_dim=POS_DIM)
    assert all((v == 0.5).all() for k, v in unet3d.state_dict().items() if "processor" in k)
    install_graph_processors(unet3d, "decoupled", position_dim=POS_DIM)  # the position weights carry over
    after = {k: v for k, v in unet3d.state_dict().items() if "to_q_pos" in k}
    assert after.keys() == weights.keys() and all((v == 0.5).all() for v in after.values())
    install_graph_processors(unet3d, "graph_only")
    assert not [k for k in unet3d.state_dict() if "processor" in k]


def test_switching_to_graph_only_drops_the_graph_projections(unet3d):
    install_graph_processors(unet3d, "decoupled")
    install_graph_processors(unet3d, "graph_only")
    assert not [k for k in unet3d.state_dict() if "processor" in k]
    with pytest.raises(ValueError, match="mode must be one of"):
        install_graph_processors(unet3d, "text")


# ------------------------------------------------------------------ xformers


@pytest.mark.skipif(is_xformers_available(), reason="checks the message shown without xformers")
def test_xformers_processors_say_xformers_is_missing(unet3d):
    install_graph_processors(unet3d, "decoupled")
    before = unet3d.attn_processors
    with pytest.raises(ModuleNotFoundError, match="xformers is not installed"):
        install_graph_processors(unet3d, "decoupled", xformers=True)
    assert unet3d.attn_processors == before


def fake_xformers(monkeypatch):
    """Install a stand-in for xformers with the call signature of ``xformers.ops.memory_efficient_attention``
    (3D (batch*heads, tokens, head_dim) inputs, an additive bias of the full (batch*heads, M, L)
    shape), computed with plain torch: it checks how the XFormers processors call xformers."""

    def memory_efficient_attention(query, key, value, attn_bias=None, op=None, scale=None):
        assert query.ndim == key.ndim == value.ndim == 3
        scores = query @ key.transpose(1, 2) * scale  # (N*heads, M, L)
        if attn_bias is not None:
            assert attn_bias.shape == scores.shape and attn_bias.dtype == scores.dtype
            scores = scores + attn_bias
        return scores.softmax(dim=-1) @ value

    xformers = types.ModuleType("xformers")
    xformers.__spec__ = importlib.machinery.ModuleSpec("xformers", None)
    xformers.ops = types.SimpleNamespace(memory_efficient_attention=memory_efficient_attention)
    monkeypatch.setitem(sys.modules, "xformers", xformers)
    monkeypatch.setitem(sys.modules, "xformers.ops", xformers.ops)


def test_xformers_processors_call_xformers_as_the_sdpa_ones_compute(attn, inputs, monkeypatch):
    if is_xformers_available():
        pytest.skip("the real xformers is installed (see the next test)")
    fake_xformers(monkeypatch)
    check_xformers_processors(attn, inputs)


def test_xformers_processors_equal_the_sdpa_ones(attn, inputs):
    pytest.importorskip("xformers")
    if not torch.cuda.is_available():
        pytest.skip("xformers' memory-efficient attention needs a GPU")
    check_xformers_processors(attn.cuda(), [t.cuda() for t in inputs])


def check_xformers_processors(attn, inputs):
    from sg2vid_diffusers.models import (
        XFormersDecoupledGraphAttnProcessor,
        XFormersGraphAttnProcessor,
        XFormersPlainAttnProcessor,
    )

    hidden, text, graph, mask = inputs
    decoupled = trained_decoupled(attn)
    xformers_decoupled = XFormersDecoupledGraphAttnProcessor(decoupled.hidden_size, decoupled.cross_attention_dim)
    xformers_decoupled.to(hidden.device).load_state_dict(decoupled.state_dict())
    graph_pos = positional(GraphAttnProcessor.for_layer(attn, position_dim=POS_DIM))
    xformers_graph_pos = XFormersGraphAttnProcessor(hidden_size=graph_pos.to_q_pos.out_features, position_dim=POS_DIM)
    xformers_graph_pos.to(hidden.device).load_state_dict(graph_pos.state_dict())
    pairs = [
        (PlainAttnProcessor(), XFormersPlainAttnProcessor()),
        (GraphAttnProcessor(), XFormersGraphAttnProcessor()),
        (decoupled, xformers_decoupled),
        (graph_pos, xformers_graph_pos),
    ]
    positions = {M: POSITIONS[M].to(hidden.device)}
    for sdpa, xformers in pairs:
        torch.testing.assert_close(
            xformers(attn, hidden, text, graph_hidden_states=graph, graph_mask=mask, graph_positions=positions),
            sdpa(attn, hidden, text, graph_hidden_states=graph, graph_mask=mask, graph_positions=positions),
            rtol=1e-4,
            atol=1e-4,
        )
    # diffusers' additive attention_mask too
    attention_mask = torch.zeros(hidden.shape[0], 1, text.shape[1], device=hidden.device)
    attention_mask[:, :, :3] = -10000.0
    torch.testing.assert_close(
        XFormersPlainAttnProcessor()(attn, hidden, text, attention_mask=attention_mask),
        PlainAttnProcessor()(attn, hidden, text, attention_mask=attention_mask),
        rtol=1e-4,
        atol=1e-4,
    )
