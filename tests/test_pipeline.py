"""SceneGraphToVideoPipeline with tiny random components: behaviour, not just shapes."""

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import DiffusionPipeline

import sg2vid_diffusers
from sg2vid_diffusers import SceneGraphError
from sg2vid_diffusers.pipelines import SceneGraphToVideoPipeline

from tiny_models import tiny_pipeline

STATIC = {"objects": ["red circle", "blue square"], "relationships": [[0, "left of", 1]]}
DYNAMIC = {
    "objects": ["red circle", "blue square"],
    "relationships": [[0, "left of", 1, [0.0, 0.5]], [0, "right of", 1, [0.5, 1.0]]],
}
KW = dict(num_frames=4, height=16, width=16, num_inference_steps=2)


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline()


def _run(pipe, graph=STATIC, seed=0, **kwargs):
    return pipe(scene_graph=graph, generator=torch.Generator().manual_seed(seed), **{**KW, **kwargs}).frames


def test_output_types(pipe):
    frames = _run(pipe)
    assert frames.shape == (1, 4, 16, 16, 3) and frames.min() >= 0 and frames.max() <= 1
    pt = _run(pipe, output_type="pt")
    assert pt.shape == (1, 4, 3, 16, 16)
    assert torch.allclose(pt.permute(0, 1, 3, 4, 2), torch.from_numpy(frames), atol=1e-6)
    pil = _run(pipe, output_type="pil")
    assert len(pil) == 1 and len(pil[0]) == 4 and isinstance(pil[0][0], PIL.Image.Image)
    latents = _run(pipe, output_type="latent")
    assert latents.shape == (1, 4, 4, 8, 8)
    assert isinstance(pipe(scene_graph=STATIC, return_dict=False, **KW), tuple)


def test_same_seed_same_video_other_seed_other_video(pipe):
    a, b, c = _run(pipe, seed=1), _run(pipe, seed=1), _run(pipe, seed=2)
    assert (a == b).all()
    assert not (a == c).all()


def test_a_list_of_graphs_gives_one_video_each_and_matches_single_runs(pipe):
    both = pipe(scene_graph=[STATIC, DYNAMIC], latents=torch.randn(2, 4, 4, 8, 8, generator=torch.Generator().manual_seed(0)), **KW).frames
    assert both.shape[0] == 2
    latents = torch.randn(2, 4, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    alone = pipe(scene_graph=STATIC, latents=latents[:1], **KW).frames
    assert torch.allclose(torch.from_numpy(both[:1]), torch.from_numpy(alone), atol=1e-5)


def test_the_graph_conditions_the_video(pipe):
    other = {"objects": ["green triangle"], "relationships": []}
    assert not (_run(pipe, STATIC) == _run(pipe, other)).all()


def test_guidance_runs_against_the_null_graph(pipe):
    batches = []
    hook = pipe.unet.register_forward_pre_hook(lambda module, args: batches.append(args[0].shape[0]))
    try:
        guided = _run(pipe, guidance_scale=4.0)
        unguided = _run(pipe, guidance_scale=1.0)
    finally:
        hook.remove()
    assert batches == [2, 2, 1, 1]  # [null, cond] batched with guidance, cond alone without
    assert not (guided == unguided).all()


def test_dynamic_graphs_get_per_frame_context(pipe):
    context = pipe.encode_scene_graph(sg2vid_diffusers.parse_scene_graphs(DYNAMIC), 4, torch.device("cpu"))
    assert context.hidden_states.shape[0] == 4  # B * F
    # "left of" is active early and "right of" late: same token count, different first token.
    assert torch.equal(context.mask[0], context.mask[3])
    assert not torch.allclose(context.hidden_states[0, 0], context.hidden_states[3, 0])
    assert torch.equal(context.hidden_states[0], context.hidden_states[1])
    static = pipe.encode_scene_graph(sg2vid_diffusers.parse_scene_graphs(STATIC), 4, torch.device("cpu"))
    assert all(torch.equal(static.hidden_states[0], static.hidden_states[f]) for f in range(4))


@pytest.mark.parametrize(
    "graph, field",
    [
        ({"objects": ["red circle", "purple square"]}, "objects[1].name"),
        ({"objects": ["red circle"], "relationships": [[0, "left of", 1]]}, "relationships[0][2]"),
        ([STATIC, {"objects": []}], "scene_graph[1].objects"),
    ],
)
def test_bad_graphs_fail_before_any_compute(pipe, graph, field):
    calls = []
    hooks = [m.register_forward_pre_hook(lambda *a: calls.append(1)) for m in (pipe.unet, pipe.sg_encoder, pipe.vae)]
    try:
        with pytest.raises(SceneGraphError) as info:
            pipe(scene_graph=graph, **KW)
    finally:
        for h in hooks:
            h.remove()
    assert info.value.field == field and calls == []


def test_too_many_triples_is_refused(pipe):
    n = pipe.sg_encoder.config.max_local_triples + 1
    graph = {"objects": ["red circle", "blue square"], "relationships": [[0, "left of", 1]] * n}
    with pytest.raises(SceneGraphError) as info:
        pipe(scene_graph=graph, **KW)
    assert info.value.field == "relationships"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(height=15), "height"),
        (dict(num_frames=0), "num_frames"),
        (dict(output_type="gif"), "output_type"),
        (dict(prompt="a red circle"), "text_encoder"),
        (dict(latents=torch.zeros(1, 4, 4, 4, 4)), "latents"),
        (dict(callback_on_step_end_tensor_inputs=["noise"]), "callback_on_step_end_tensor_inputs"),
    ],
)
def test_bad_arguments_are_clear_errors(pipe, kwargs, message):
    with pytest.raises(ValueError, match=message):
        pipe(scene_graph=STATIC, **{**KW, **kwargs})


def test_callback_on_step_end_sees_and_replaces_latents(pipe):
    steps = []

    def callback(p, i, t, kwargs):
        steps.append((i, int(t), kwargs["latents"].shape))
        return {"latents": torch.zeros_like(kwargs["latents"])}

    out = _run(pipe, callback_on_step_end=callback, output_type="latent")
    assert [s[0] for s in steps] == [0, 1] and steps[0][2] == (1, 4, 4, 8, 8)
    assert (out == 0).all()


def test_vae_slicing_gives_the_same_video(pipe):
    full = _run(pipe)
    pipe.enable_vae_slicing()
    try:
        sliced = _run(pipe)
    finally:
        pipe.disable_vae_slicing()
    assert torch.allclose(torch.from_numpy(full), torch.from_numpy(sliced), atol=1e-5)


def test_save_and_load_with_both_entry_points(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "pipe")
    expected = _run(pipe)
    for cls in (SceneGraphToVideoPipeline, DiffusionPipeline):
        loaded = cls.from_pretrained(tmp_path / "pipe")
        assert type(loaded) is SceneGraphToVideoPipeline
        assert loaded.vocab == pipe.vocab
        loaded.set_progress_bar_config(disable=True)
        # Memory-mapped safetensors loading may differ from the live weights in the last bit.
        assert torch.allclose(torch.from_numpy(_run(loaded)), torch.from_numpy(expected), atol=1e-5)


def test_diffusion_pipeline_resolves_our_class_in_a_fresh_process(pipe, tmp_path):
    import subprocess
    import sys

    pipe.save_pretrained(tmp_path / "pipe")
    code = (
        "import sg2vid_diffusers\n"
        "from diffusers import DiffusionPipeline\n"
        f"p = DiffusionPipeline.from_pretrained({str(tmp_path / 'pipe')!r})\n"
        "print(type(p).__name__)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("SceneGraphToVideoPipeline")


def test_lora_weights_save_and_load(pipe, tmp_path):
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from sg2vid_diffusers.models.unet_3d_graph import lora_target_modules

    lora_pipe = tiny_pipeline()
    lora_pipe.unet.add_adapter(
        LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=lora_target_modules(lora_pipe.unet))
    )
    with torch.no_grad():  # LoRA starts as a no-op (B = 0): give it weights
        for name, param in lora_pipe.unet.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
    before = _run(pipe)
    with_lora = _run(lora_pipe)
    assert not (before == with_lora).all()
    SceneGraphToVideoPipeline.save_lora_weights(tmp_path / "lora", unet_lora_layers=get_peft_model_state_dict(lora_pipe.unet))
    fresh = tiny_pipeline()
    fresh.load_lora_weights(tmp_path / "lora")
    assert torch.allclose(torch.from_numpy(_run(fresh)), torch.from_numpy(with_lora), atol=1e-5)


def test_xformers_switch_keeps_the_graph_processors(pipe):
    before = dict(pipe.unet.attn_processors)
    try:
        import xformers  # noqa: F401
    except ImportError:
        with pytest.raises(ModuleNotFoundError, match="xformers"):
            pipe.enable_xformers_memory_efficient_attention()
        assert pipe.unet.attn_processors == before
    else:  # pragma: no cover - only where xformers is installed
        pipe.enable_xformers_memory_efficient_attention()
        after = pipe.unet.attn_processors
        assert [type(p).__name__.replace("XFormers", "") for p in after.values()] == [
            type(p).__name__ for p in before.values()
        ]
        pipe.disable_xformers_memory_efficient_attention()


def test_offload_sequence_names_the_pipeline_models(pipe):
    names = pipe.model_cpu_offload_seq.split("->")
    assert set(names) == {"text_encoder", "sg_encoder", "unet", "vae"}
    assert all(name in pipe.components for name in names)
    if torch.cuda.is_available():  # pragma: no cover - GPU machines only
        pipe.enable_model_cpu_offload()
        assert _run(pipe).shape == (1, 4, 16, 16, 3)


def test_save_writes_a_model_card_and_keeps_an_existing_one(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "a")
    card = (tmp_path / "a" / "README.md").read_text()
    assert "library_name: diffusers" in card and "SceneGraphToVideoPipeline" in card
    assert "18 object categories" in card and "red square" in card
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "README.md").write_text("# trained by train_video.py\n")
    pipe.save_pretrained(tmp_path / "b")
    assert (tmp_path / "b" / "README.md").read_text() == "# trained by train_video.py\n"


def test_push_to_hub_uploads_the_folder_with_its_model_card(pipe, monkeypatch):
    """The Hub itself is out of reach here: the two network calls are replaced by recorders."""
    from types import SimpleNamespace

    from sg2vid_diffusers.pipelines import pipeline_sg2vid

    uploaded = {}
    monkeypatch.setattr(pipeline_sg2vid, "create_repo", lambda repo_id, **kw: SimpleNamespace(repo_id=f"me/{repo_id}"))

    def upload(folder, repo_id, **kwargs):
        from pathlib import Path

        uploaded.update(repo_id=repo_id, files=sorted(p.name for p in Path(folder).iterdir()),
                        card=(Path(folder) / "README.md").read_text())  # fmt: skip
        return "url"

    monkeypatch.setattr(pipe, "_upload_folder", upload)
    assert pipe.push_to_hub("my-sg2vid") == "url"
    assert uploaded["repo_id"] == "me/my-sg2vid"
    assert {"README.md", "model_index.json", "unet", "vae", "sg_encoder", "scheduler"} <= set(uploaded["files"])
    assert "scene-graph-to-video" in uploaded["card"]


def test_drop_graph_generates_from_the_null_graph(pipe):
    dropped_a = _run(pipe, STATIC, drop_graph=True)
    dropped_b = _run(pipe, {"objects": ["green triangle"]}, drop_graph=True)
    assert (dropped_a == dropped_b).all()  # the graph no longer matters
    assert not (dropped_a == _run(pipe, STATIC)).all()
    with pytest.raises(SceneGraphError):
        pipe(scene_graph={"objects": ["purple circle"]}, drop_graph=True, **KW)


def test_the_default_guidance_travels_with_the_model_and_a_call_can_override_it(tmp_path):
    pipe = tiny_pipeline()
    assert pipe.config.default_guidance_scale == 4.0
    pipe.register_to_config(default_guidance_scale=1.5)
    pipe.save_pretrained(tmp_path / "pipe")
    loaded = SceneGraphToVideoPipeline.from_pretrained(tmp_path / "pipe")
    assert loaded.config.default_guidance_scale == 1.5
    loaded.set_progress_bar_config(disable=True)
    run = lambda **kw: loaded(scene_graph=GRAPH_FOR_GUIDANCE, num_frames=2, height=16, width=16, num_inference_steps=2,  # noqa: E731
                              generator=torch.Generator().manual_seed(0), **kw).frames
    default = run()
    assert loaded.guidance_scale == 1.5
    np.testing.assert_array_equal(default, run(guidance_scale=1.5))
    assert np.abs(default - run(guidance_scale=4.0)).max() > 0


GRAPH_FOR_GUIDANCE = {"objects": ["red circle", "blue square"], "relationships": [[0, "left of", 1]]}


def moving_pipeline(gate: float = 0.1) -> SceneGraphToVideoPipeline:
    """The tiny pipeline with a trained-looking moving layout: layout bias on (its scales non-zero)
    and the motion gate at ``gate``."""
    pipe = tiny_pipeline()
    pipe.unet.enable_graph_layout_bias()
    pipe.unet.enable_graph_layout_motion()
    with torch.no_grad():
        for name, param in pipe.unet.named_parameters():
            if name.endswith("layout_scale"):
                param.fill_(2.0)
        pipe.unet.graph_layout_motion_gate.fill_(gate)
    return pipe


def test_motion_scale_multiplies_the_moving_layouts_gate_at_sampling_time(tmp_path):
    pipe = moving_pipeline(gate=0.1)
    as_trained = _run(pipe, DYNAMIC)
    np.testing.assert_array_equal(as_trained, _run(pipe, DYNAMIC, motion_scale=1.0))  # the default is the model
    np.testing.assert_array_equal(as_trained, _run(pipe, DYNAMIC))  # same seed, same video
    doubled = _run(pipe, DYNAMIC, motion_scale=2.0)
    still = _run(pipe, DYNAMIC, motion_scale=0.0)
    assert np.abs(doubled - as_trained).max() > 1e-4 and np.abs(still - as_trained).max() > 1e-4
    # The scale is the gate's multiplier: scale 2 is a gate twice as large, scale 0 a closed gate.
    with torch.no_grad():
        pipe.unet.graph_layout_motion_gate.fill_(0.2)
    np.testing.assert_allclose(_run(pipe, DYNAMIC), doubled, atol=1e-5, rtol=0)
    with torch.no_grad():
        pipe.unet.graph_layout_motion_gate.fill_(0.0)
    np.testing.assert_allclose(_run(pipe, DYNAMIC), still, atol=1e-6, rtol=0)

    # The default travels with the model (model_index.json); a call overrides it.
    with torch.no_grad():
        pipe.unet.graph_layout_motion_gate.fill_(0.1)
    pipe.register_to_config(default_motion_scale=2.0)
    pipe.save_pretrained(tmp_path / "pipe")
    loaded = SceneGraphToVideoPipeline.from_pretrained(tmp_path / "pipe")
    loaded.set_progress_bar_config(disable=True)
    assert loaded.config.default_motion_scale == 2.0
    np.testing.assert_allclose(_run(loaded, DYNAMIC), doubled, atol=1e-5, rtol=0)
    np.testing.assert_allclose(_run(loaded, DYNAMIC, motion_scale=1.0), as_trained, atol=1e-5, rtol=0)


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf"), True, "2"])
def test_bad_motion_scales_are_clear_errors_before_any_compute(bad):
    pipe = moving_pipeline()
    calls = []
    with pytest.raises(ValueError, match=r"motion_scale must be a finite number >= 0, got"):
        pipe(scene_graph=DYNAMIC, motion_scale=bad, callback_on_step_end=lambda *a: calls.append(a), **KW)
    assert calls == []


def test_a_model_without_the_moving_layout_takes_only_motion_scale_one(pipe):
    assert not pipe.unet.config.graph_layout_motion and pipe.config.default_motion_scale == 1.0
    np.testing.assert_array_equal(_run(pipe, DYNAMIC, motion_scale=1.0), _run(pipe, DYNAMIC))
    with pytest.raises(ValueError, match=r"motion_scale=0.5 scales the moving layout, and this UNet has none"):
        pipe(scene_graph=DYNAMIC, motion_scale=0.5, **KW)
    # A saved default means nothing to it (a moving model's pipeline folder given another UNet).
    pipe.register_to_config(default_motion_scale=2.0)
    try:
        np.testing.assert_array_equal(_run(pipe, DYNAMIC), _run(pipe, DYNAMIC, motion_scale=1.0))
    finally:
        pipe.register_to_config(default_motion_scale=1.0)


def test_layout_scale_multiplies_the_layout_bias_at_sampling_time(tmp_path):
    pipe = moving_pipeline()  # layout scales 2.0 in every graph layer
    as_trained = _run(pipe, DYNAMIC)
    np.testing.assert_array_equal(as_trained, _run(pipe, DYNAMIC, layout_scale=1.0))  # the default is the model
    doubled, off = _run(pipe, DYNAMIC, layout_scale=2.0), _run(pipe, DYNAMIC, layout_scale=0.0)
    assert np.abs(doubled - as_trained).max() > 1e-4 and np.abs(off - as_trained).max() > 1e-4

    def with_learnt_scales(value):
        with torch.no_grad():
            for name, param in pipe.unet.named_parameters():
                if name.endswith("layout_scale"):
                    param.fill_(value)
        return _run(pipe, DYNAMIC)

    # The multiplier is the learnt scales': 2 is scales twice as large, 0 no bias at all.
    np.testing.assert_allclose(with_learnt_scales(4.0), doubled, atol=1e-5, rtol=0)
    np.testing.assert_allclose(with_learnt_scales(0.0), off, atol=1e-6, rtol=0)
    with_learnt_scales(2.0)

    # The default travels with the model (model_index.json); a call overrides it.
    pipe.register_to_config(default_layout_scale=2.0)
    pipe.save_pretrained(tmp_path / "pipe")
    loaded = SceneGraphToVideoPipeline.from_pretrained(tmp_path / "pipe")
    loaded.set_progress_bar_config(disable=True)
    assert loaded.config.default_layout_scale == 2.0
    np.testing.assert_allclose(_run(loaded, DYNAMIC), doubled, atol=1e-5, rtol=0)
    np.testing.assert_allclose(_run(loaded, DYNAMIC, layout_scale=1.0), as_trained, atol=1e-5, rtol=0)


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf"), True, "2"])
def test_bad_layout_scales_are_clear_errors_before_any_compute(bad):
    pipe = moving_pipeline()
    calls = []
    with pytest.raises(ValueError, match=r"layout_scale must be a finite number >= 0, got"):
        pipe(scene_graph=DYNAMIC, layout_scale=bad, callback_on_step_end=lambda *a: calls.append(a), **KW)
    assert calls == []


def test_a_model_without_the_layout_bias_takes_only_layout_scale_one(pipe):
    assert not pipe.unet.config.graph_layout_bias and pipe.config.default_layout_scale == 1.0
    np.testing.assert_array_equal(_run(pipe, STATIC, layout_scale=1.0), _run(pipe, STATIC))
    with pytest.raises(ValueError, match=r"layout_scale=2.0 scales the layout bias, and this UNet has none"):
        pipe(scene_graph=STATIC, layout_scale=2.0, **KW)
    pipe.register_to_config(default_layout_scale=2.0)  # a saved default means nothing to it
    try:
        np.testing.assert_array_equal(_run(pipe, STATIC), _run(pipe, STATIC, layout_scale=1.0))
    finally:
        pipe.register_to_config(default_layout_scale=1.0)


def test_stochastic_sampling_takes_one_generator_per_video(pipe):
    """With eta > 0 DDIM draws noise at every step; the scheduler steps frames folded into the batch,
    and each video's generator serves its frames: a batch gives each video what it gets alone."""
    seeds = [3, 4]
    both = pipe(scene_graph=[STATIC, DYNAMIC], eta=1.0, generator=[torch.Generator().manual_seed(s) for s in seeds], **KW)
    again = pipe(scene_graph=[STATIC, DYNAMIC], eta=1.0, generator=[torch.Generator().manual_seed(s) for s in seeds], **KW)
    np.testing.assert_array_equal(both.frames, again.frames)
    for k, graph in enumerate([STATIC, DYNAMIC]):
        alone = pipe(scene_graph=graph, eta=1.0, generator=torch.Generator().manual_seed(seeds[k]), **KW).frames
        np.testing.assert_allclose(both.frames[k], alone[0], atol=1e-5, rtol=0)
    deterministic = pipe(scene_graph=STATIC, eta=0.0, generator=torch.Generator().manual_seed(3), **KW).frames
    assert np.abs(deterministic[0] - both.frames[0]).max() > 1e-4  # eta is not ignored


# ---------------------------------------------------------------------------------------------------- candidates


def test_candidates_keep_the_best_fitting_of_videos_drawn_from_the_same_generator(pipe):
    """num_candidates=N samples N videos per graph (the first from the noise N=1 uses, the others drawn
    after it from the same generator), scores them with graph_fit on one shared noise and returns the
    highest; each candidate is the video its noise gives alone."""
    out = pipe(scene_graph=DYNAMIC, num_candidates=3, output_type="latent", generator=torch.Generator().manual_seed(0), **KW)
    assert out.frames.shape == (1, 4, 4, 8, 8) and out.candidate_scores.shape == (1, 3)

    g = torch.Generator().manual_seed(0)
    noise = torch.cat([torch.randn(1, 4, 4, 8, 8, generator=g), torch.randn(2, 4, 4, 8, 8, generator=g)])
    alone = torch.cat([pipe(scene_graph=DYNAMIC, latents=n[None], output_type="latent", **KW).frames for n in noise])
    assert torch.equal(alone[0], _run(pipe, DYNAMIC, output_type="latent")[0])  # candidate 0 = the N=1 video
    assert not torch.allclose(alone[0], alone[1])
    graphs = sg2vid_diffusers.parse_scene_graphs([DYNAMIC] * 3)
    context = pipe.encode_scene_graph(graphs, 4, torch.device("cpu"))
    fit = pipe.graph_fit(alone, context, generator=g, group_size=3)  # g continues where the candidates stopped
    torch.testing.assert_close(out.candidate_scores[0], fit, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.frames[0], alone[fit.argmax()], atol=1e-5, rtol=0)
    frames = pipe(scene_graph=DYNAMIC, num_candidates=3, generator=torch.Generator().manual_seed(0), **KW)
    np.testing.assert_array_equal(frames.frames, pipe(scene_graph=DYNAMIC, num_candidates=3, generator=torch.Generator().manual_seed(0), **KW).frames)


def test_graph_fit_compares_each_graph_with_the_null_graph_on_shared_noise(pipe):
    """graph_fit is the null graph's denoising error minus the graph's: 0 for a graph whose context is
    the null graph's, and the same noise for every member of a group (equal latents, equal fits)."""
    latents = torch.randn(1, 4, 4, 8, 8, generator=torch.Generator().manual_seed(1)).repeat(2, 1, 1, 1, 1)
    context = pipe.encode_scene_graph(sg2vid_diffusers.parse_scene_graphs([STATIC, STATIC]), 4, torch.device("cpu"))
    fit = pipe.graph_fit(latents, context, generator=torch.Generator().manual_seed(2), group_size=2)
    assert fit.shape == (2,) and fit[0] != 0
    torch.testing.assert_close(fit[0], fit[1])
    apart = pipe.graph_fit(latents, context, generator=torch.Generator().manual_seed(2), group_size=1)
    assert apart[0] == fit[0] and apart[1] != fit[1]  # ungrouped, the second video gets other noise
    null = pipe.unet.null_graph_context(2, 4)
    assert torch.equal(pipe.graph_fit(latents, null, generator=torch.Generator().manual_seed(2)), torch.zeros(2))
    with pytest.raises(ValueError, match="group_size must divide"):
        pipe.graph_fit(latents, context, group_size=3)


def test_candidates_in_a_batch_give_each_graph_what_it_gets_alone(pipe):
    seeds = [3, 4]
    both = pipe(scene_graph=[STATIC, DYNAMIC], num_candidates=2, generator=[torch.Generator().manual_seed(s) for s in seeds], **KW)
    assert both.candidate_scores.shape == (2, 2)
    for k, graph in enumerate([STATIC, DYNAMIC]):
        alone = pipe(scene_graph=graph, num_candidates=2, generator=torch.Generator().manual_seed(seeds[k]), **KW)
        np.testing.assert_allclose(both.frames[k], alone.frames[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(both.candidate_scores[k], alone.candidate_scores[0], atol=1e-4, rtol=1e-4)


def test_the_default_number_of_candidates_travels_with_the_model(tmp_path):
    pipe = tiny_pipeline()
    assert pipe.config.default_num_candidates == 1
    assert _run(pipe).shape[0] == 1 and pipe(scene_graph=STATIC, **KW).candidate_scores is None
    pipe.register_to_config(default_num_candidates=2)
    pipe.save_pretrained(tmp_path / "pipe")
    loaded = SceneGraphToVideoPipeline.from_pretrained(tmp_path / "pipe")
    loaded.set_progress_bar_config(disable=True)
    assert loaded.config.default_num_candidates == 2
    out = loaded(scene_graph=STATIC, generator=torch.Generator().manual_seed(0), **KW)
    assert out.candidate_scores.shape == (1, 2)
    np.testing.assert_array_equal(out.frames, loaded(scene_graph=STATIC, num_candidates=2, generator=torch.Generator().manual_seed(0), **KW).frames)
    assert loaded(scene_graph=STATIC, drop_graph=True, **KW).candidate_scores is None  # no graph to select by


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_bad_numbers_of_candidates_are_clear_errors_before_any_compute(pipe, bad):
    calls = []
    hook = pipe.unet.register_forward_pre_hook(lambda *args: calls.append(1))
    try:
        with pytest.raises(ValueError, match="num_candidates must be a positive integer"):
            pipe(scene_graph=STATIC, num_candidates=bad, **KW)
        with pytest.raises(ValueError, match="drop_graph has none"):
            pipe(scene_graph=STATIC, num_candidates=2, drop_graph=True, **KW)
    finally:
        hook.remove()
    assert not calls
