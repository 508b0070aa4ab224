"""conversion/convert_t2v_to_sg2vid.py: a text-to-video pipeline (ModelScope layout) + a scene-graph
encoder -> SceneGraphToVideoPipeline with zero-initialised decoupled graph adapters, which must
generate exactly what the text-to-video pipeline generates until the adapters are trained."""

import importlib.util
import json
import re
import shutil
from pathlib import Path

import diffusers
import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DiffusionPipeline, UNet3DConditionModel
from safetensors import safe_open

import sg2vid_diffusers  # noqa: F401  (lets DiffusionPipeline.from_pretrained find our classes)
from sg2vid_diffusers.conversion_t2v import T2VConversionError, convert_t2v_to_sg2vid
from sg2vid_diffusers.models.graph_attention import DecoupledGraphAttnProcessor
from sg2vid_diffusers.models.unet_3d_graph import SceneGraphUNet3DConditionModel
from sg2vid_diffusers.pipelines import SceneGraphToVideoPipeline

from tiny_models import ENCODER_DIM, tiny_encoder, tiny_text_encoder, tiny_vae

SCRIPT = Path(__file__).resolve().parents[1] / "conversion" / "convert_t2v_to_sg2vid.py"
GRAPH = {"objects": ["red circle", "blue square"], "relationships": [[0, "left of", 1]]}
OTHER_GRAPH = {"objects": ["green triangle"], "relationships": []}
PROMPT, NEGATIVE = "a red circle", "blue"
# Text width (24) differs from the encoder's (8 / 24): the graph projections map to the UNet's width.
TEXT_DIM = 24
SAMPLE = dict(num_frames=3, height=16, width=16, num_inference_steps=2, guidance_scale=7.5)


def load_script():
    spec = importlib.util.spec_from_file_location("convert_t2v_to_sg2vid", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


script = load_script()


def tiny_unet3d(seed: int = 0) -> UNet3DConditionModel:
    torch.manual_seed(seed)
    return UNet3DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
        up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
        block_out_channels=(16, 32),
        layers_per_block=1,
        norm_num_groups=4,
        cross_attention_dim=TEXT_DIM,
        attention_head_dim=4,
    ).eval()


def write_t2v_folder(folder: Path, seed: int = 0, variant: str | None = None) -> Path:
    """A tiny random text-to-video pipeline in the ModelScope layout, written component by component
    (independent of diffusers' deprecated TextToVideoSDPipeline)."""
    text_encoder, tokenizer = tiny_text_encoder(seed, hidden_size=TEXT_DIM)
    components = {
        "unet": tiny_unet3d(seed),
        "vae": tiny_vae(seed),
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        # ModelScope's scheduler config (damo-vilab/text-to-video-ms-1.7b), fewer training steps
        "scheduler": DDIMScheduler(
            num_train_timesteps=100, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
            clip_sample=False, set_alpha_to_one=False, steps_offset=1,
        ),
    }  # fmt: skip
    index = {"_class_name": "TextToVideoSDPipeline", "_diffusers_version": diffusers.__version__}
    for name, component in components.items():
        weights = {"variant": variant} if name in ("unet", "vae", "text_encoder") else {}
        component.save_pretrained(folder / name, **weights)
        library = "transformers" if name in ("text_encoder", "tokenizer") else "diffusers"
        index[name] = [library, type(component).__name__]
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    (folder / "README.md").write_text("---\nlicense: cc-by-nc-4.0\ntags:\n- text-to-video\n---\n# tiny\n")
    (folder / "LICENSE").write_text("tiny test license\n")
    return folder


def write_encoder_folder(folder: Path, with_vocab: bool = True) -> Path:
    encoder = tiny_encoder()
    if not with_vocab:
        encoder.vocab = None
    encoder.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("sources")
    return write_t2v_folder(root / "t2v"), write_encoder_folder(root / "encoder")


@pytest.fixture(scope="module")
def converted(sources, tmp_path_factory):
    t2v, encoder = sources
    output = tmp_path_factory.mktemp("converted") / "sg2vid"
    convert_t2v_to_sg2vid(t2v, encoder, output)
    return output


@pytest.fixture(scope="module")
def reference(sources):
    """The text-to-video pipeline, loaded from its folder as a user would."""
    t2v_class = getattr(diffusers, "TextToVideoSDPipeline", None)
    if t2v_class is None:
        pytest.skip("diffusers no longer ships TextToVideoSDPipeline: no reference to compare with")
    pipe = t2v_class.from_pretrained(sources[0])
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def expected(reference):
    """What the text-to-video pipeline generates: prompt, negative prompt, guidance 7.5, seed 0."""
    return reference_frames(reference)


@pytest.fixture(scope="module")
def pipe(converted):
    pipe = SceneGraphToVideoPipeline.from_pretrained(converted)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def seed(n: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(n)


def reference_frames(reference, **kwargs):
    args = {"prompt": PROMPT, "negative_prompt": NEGATIVE, **SAMPLE, **kwargs}
    return reference(generator=seed(), **args).frames


def our_frames(pipe, graph=GRAPH, **kwargs):
    args = {"prompt": PROMPT, "negative_prompt": NEGATIVE, **SAMPLE, **kwargs}
    return pipe(scene_graph=graph, generator=seed(), **args).frames


# ------------------------------------------------------------------------------------ the acceptance check


def test_converted_pipeline_generates_what_the_text_to_video_pipeline_generates(expected, pipe):
    assert expected.shape == (1, 3, 16, 16, 3)
    np.testing.assert_allclose(our_frames(pipe), expected, rtol=0, atol=1e-5)
    # whatever the graph: the adapters are zero-initialised
    np.testing.assert_allclose(our_frames(pipe, OTHER_GRAPH), expected, rtol=0, atol=1e-5)


def test_the_same_without_guidance_and_as_latents(reference, pipe):
    expected = reference_frames(reference, guidance_scale=1.0, output_type="latent")
    got = our_frames(pipe, guidance_scale=1.0, output_type="latent")
    assert got.shape == expected.shape == (1, 4, 3, 8, 8)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_the_converted_folder(converted, sources):
    index = json.loads((converted / "model_index.json").read_text())
    assert index["_class_name"] == "SceneGraphToVideoPipeline"
    assert index["unet"] == ["sg2vid_diffusers.models.unet_3d_graph", "SceneGraphUNet3DConditionModel"]
    assert index["text_encoder"] == ["transformers", "CLIPTextModel"]
    assert index["tokenizer"][0] == "transformers" and index["sg_encoder"][1] == "SceneGraphEncoder"
    assert (converted / "sg_encoder" / "vocab.json").is_file()
    card = (converted / "README.md").read_text()
    assert "license: cc-by-nc-4.0" in card and "decoupled" in card
    assert (converted / "LICENSE").read_text() == "tiny test license\n"
    assert not [path.name for path in converted.parent.iterdir() if path.name.startswith(".")]  # no temp folders

    unet = SceneGraphUNet3DConditionModel.from_pretrained(converted / "unet")
    assert unet.config.graph_mode == "decoupled"
    assert (unet.config.graph_token_dim, unet.config.graph_global_dim) == (3 * ENCODER_DIM, ENCODER_DIM)
    assert unet.config.cross_attention_dim == TEXT_DIM
    processors = [p for p in unet.attn_processors.values() if isinstance(p, DecoupledGraphAttnProcessor)]
    assert processors and all((p.to_v_graph.weight == 0).all() for p in processors)
    # every weight of the text-to-video UNet is kept as it was
    base = UNet3DConditionModel.from_pretrained(sources[0] / "unet").state_dict()
    ours = unet.state_dict()
    assert all(torch.equal(ours[key], value) for key, value in base.items())


def test_both_entry_points_load_the_converted_folder(converted, expected):
    generic = DiffusionPipeline.from_pretrained(converted)
    generic.set_progress_bar_config(disable=True)
    assert type(generic) is SceneGraphToVideoPipeline
    assert generic.sg_encoder.vocab is not None and generic.text_encoder is not None
    np.testing.assert_allclose(our_frames(generic), expected, rtol=0, atol=1e-5)


def test_the_same_with_a_scheduler_that_draws_noise(reference, pipe):
    expected = reference_frames(reference, eta=1.0)
    np.testing.assert_allclose(our_frames(pipe, eta=1.0), expected, rtol=0, atol=1e-5)


def test_adapters_are_wired_and_graph_scale_zero_restores_the_text_to_video_output(converted, expected):
    """Zero-init parity must not hold merely because the adapters are not connected."""
    pipe = SceneGraphToVideoPipeline.from_pretrained(converted)
    pipe.set_progress_bar_config(disable=True)
    name, processor = next(
        (name, p) for name, p in pipe.unet.attn_processors.items() if isinstance(p, DecoupledGraphAttnProcessor)
    )
    with torch.no_grad():
        processor.to_v_graph.weight.normal_(0, 1, generator=seed(1))
    changed = our_frames(pipe)
    assert np.abs(changed - expected).max() > 1e-3, f"perturbing {name}.to_v_graph did not change the output"
    assert np.abs(our_frames(pipe, OTHER_GRAPH) - changed).max() > 1e-4, "the graph does not reach the UNet"
    np.testing.assert_allclose(our_frames(pipe, graph_scale=0.0), expected, rtol=0, atol=1e-5)


def test_conversion_is_reproducible(sources, converted, tmp_path):
    convert_t2v_to_sg2vid(*sources, tmp_path / "again")
    for file in ("unet/diffusion_pytorch_model.safetensors", "unet/config.json", "model_index.json"):
        assert (tmp_path / "again" / file).read_bytes() == (converted / file).read_bytes(), file


def test_variant_weights_and_an_encoder_taken_from_a_pipeline_folder(converted, tmp_path):
    t2v = write_t2v_folder(tmp_path / "t2v", variant="fp16")
    assert list(t2v.glob("unet/*.fp16.safetensors"))
    with pytest.raises(T2VConversionError, match="cannot load the UNet"):
        convert_t2v_to_sg2vid(t2v, converted, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    pipe = convert_t2v_to_sg2vid(t2v, converted, tmp_path / "out", variant="fp16")  # converted/sg_encoder
    assert pipe.sg_encoder.vocab is not None
    unet = SceneGraphUNet3DConditionModel.from_pretrained(tmp_path / "out" / "unet")
    assert torch.equal(unet.conv_in.weight, UNet3DConditionModel.from_pretrained(t2v / "unet", variant="fp16").conv_in.weight)


# ------------------------------------------------------------------------------------ command line


def test_cli(sources, tmp_path, capsys):
    t2v, encoder = sources
    output = tmp_path / "out"
    args = ["--t2v", str(t2v), "--sg-encoder", str(encoder), "--output", str(output)]
    assert script.main(args + ["--dtype", "bf16"]) == 0
    assert "SceneGraphToVideoPipeline" in capsys.readouterr().out
    for file in output.glob("*/*.safetensors"):  # every weight is stored in bfloat16
        with safe_open(file, "pt") as tensors:
            assert {tensors.get_slice(key).get_dtype() for key in tensors.keys()} == {"BF16"}, file
    assert len(list(output.glob("*/*.safetensors"))) == 4
    pipe = SceneGraphToVideoPipeline.from_pretrained(output, dtype=torch.bfloat16)
    for module in (pipe.unet, pipe.vae, pipe.text_encoder, pipe.sg_encoder):
        assert module.dtype == torch.bfloat16
    pipe.set_progress_bar_config(disable=True)
    frames = pipe(scene_graph=GRAPH, prompt=PROMPT, generator=seed(), **{**SAMPLE, "num_inference_steps": 1}).frames
    assert frames.shape == (1, 3, 16, 16, 3) and np.isfinite(frames).all()

    # an existing output is kept unless --overwrite
    before = (output / "model_index.json").read_bytes()
    assert script.main(args) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert (output / "model_index.json").read_bytes() == before
    assert script.main(args + ["--overwrite"]) == 0
    with safe_open(output / "unet" / "diffusion_pytorch_model.safetensors", "pt") as tensors:
        assert tensors.get_slice("conv_in.weight").get_dtype() == "F32"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out"]


def test_cli_rejects_an_unknown_dtype(sources, tmp_path):
    with pytest.raises(SystemExit):
        script.main(["--t2v", str(sources[0]), "--sg-encoder", str(sources[1]), "--output", str(tmp_path / "o"),
                     "--dtype", "fp8"])  # fmt: skip


# ------------------------------------------------------------------------------------ bad inputs


def _edit_index(folder: Path, **changes):
    index = json.loads((folder / "model_index.json").read_text())
    index.update(changes)
    for key in [key for key, value in changes.items() if value is ...]:
        del index[key]
    (folder / "model_index.json").write_text(json.dumps(index))


def _no_text_encoder(t2v, encoder):
    _edit_index(t2v, text_encoder=...)


def _null_tokenizer(t2v, encoder):
    _edit_index(t2v, tokenizer=[None, None])


def _unet_2d_in_index(t2v, encoder):
    _edit_index(t2v, unet=["diffusers", "UNet2DConditionModel"])


def _unet_2d_config(t2v, encoder):
    config = json.loads((t2v / "unet" / "config.json").read_text())
    (t2v / "unet" / "config.json").write_text(json.dumps({**config, "_class_name": "UNetMotionModel"}))


def _no_vae_folder(t2v, encoder):
    shutil.rmtree(t2v / "vae")


def _no_model_index(t2v, encoder):
    (t2v / "model_index.json").unlink()


def _foreign_library(t2v, encoder):
    _edit_index(t2v, scheduler=["my_module", "MyScheduler"])


def _already_converted(t2v, encoder):
    _edit_index(t2v, _class_name="SceneGraphToVideoPipeline")


def _broken_unet_weights(t2v, encoder):
    (t2v / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"not safetensors")


def _encoder_without_vocab(t2v, encoder):
    (encoder / "vocab.json").unlink()


def _encoder_is_a_unet(t2v, encoder):
    shutil.rmtree(encoder)
    shutil.copytree(t2v / "unet", encoder)


def _text_width_mismatch(t2v, encoder):
    config = json.loads((t2v / "unet" / "config.json").read_text())
    tiny = UNet3DConditionModel(**{**{k: v for k, v in config.items() if not k.startswith("_")}, "cross_attention_dim": 8})
    tiny.save_pretrained(t2v / "unet")


@pytest.mark.parametrize(
    "breakage, message",
    [
        (_no_model_index, "no model_index.json"),
        (_no_text_encoder, r"lacks the component\(s\) \['text_encoder'\]"),
        (_null_tokenizer, r"lacks the component\(s\) \['tokenizer'\]"),
        (_unet_2d_in_index, "the unet is a UNet2DConditionModel, not a UNet3DConditionModel"),
        (_unet_2d_config, "describes a UNetMotionModel, not a UNet3DConditionModel"),
        (_no_vae_folder, "has no vae/ subfolder"),
        (_foreign_library, "only \\['diffusers', 'transformers'\\]"),
        (_already_converted, "already a SceneGraphToVideoPipeline"),
        (_broken_unet_weights, "cannot load the UNet"),
        (_encoder_without_vocab, "has no vocabulary"),
        (_encoder_is_a_unet, "not a SceneGraphEncoder"),
        (_text_width_mismatch, "24 wide but the UNet's cross_attention_dim is 8"),
    ],
)
def test_bad_inputs_give_clear_errors_and_write_nothing(sources, tmp_path, capsys, breakage, message):
    t2v, encoder = shutil.copytree(sources[0], tmp_path / "t2v"), shutil.copytree(sources[1], tmp_path / "encoder")
    breakage(t2v, encoder)
    output = tmp_path / "outputs" / "sg2vid"
    with pytest.raises(T2VConversionError, match=message):
        convert_t2v_to_sg2vid(t2v, encoder, output)
    assert not output.exists() and not any((tmp_path / "outputs").glob("*"))
    assert script.main(["--t2v", str(t2v), "--sg-encoder", str(encoder), "--output", str(output)]) == 1
    err = capsys.readouterr().err
    assert "error: " in err and re.search(message, err)
    assert not output.exists()


def test_missing_folders_and_an_output_over_an_input(sources, tmp_path):
    t2v, encoder = sources
    with pytest.raises(T2VConversionError, match="is not a folder"):
        convert_t2v_to_sg2vid(tmp_path / "nowhere", encoder, tmp_path / "out")
    with pytest.raises(T2VConversionError, match="not a SceneGraphEncoder folder"):
        convert_t2v_to_sg2vid(t2v, tmp_path / "nowhere", tmp_path / "out")
    for output in (t2v, t2v / "unet", t2v.parent):
        with pytest.raises(T2VConversionError, match="must not be, contain or lie inside"):
            convert_t2v_to_sg2vid(t2v, encoder, output, overwrite=True)
    with pytest.raises(T2VConversionError, match="dtype must be one of"):
        convert_t2v_to_sg2vid(t2v, encoder, tmp_path / "out", dtype="fp8")
    assert not (tmp_path / "out").exists()


def test_a_failed_save_leaves_nothing(sources, tmp_path, monkeypatch):
    def fail(self, directory, **kwargs):
        (Path(directory) / "half-written").write_text("")
        raise OSError("disk full")

    monkeypatch.setattr(SceneGraphToVideoPipeline, "save_pretrained", fail)
    with pytest.raises(OSError, match="disk full"):
        convert_t2v_to_sg2vid(*sources, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []
