import argparse
import importlib.util
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from sgdiff_reference import random_sgdiff_state_dict, sgdiff_encode

from sg2vid_diffusers import SceneGraphEncoder, Vocabulary, collate_scene_graphs
from sg2vid_diffusers.conversion_sgdiff import CheckpointMismatchError, convert_sgdiff_encoder

SCRIPT = Path(__file__).resolve().parents[1] / "conversion" / "convert_sgdiff_to_diffusers.py"
SIZES = dict(num_objs=5, num_preds=4, embedding_dim=16, hidden_dim=24, output_dim=20, num_layers=3)
GRAPHS = [
    {"objects": ["circle"]},
    {"objects": ["circle", "square", "star"], "relationships": [[0, "left of", 1], [2, "above", 1]]},
    {
        "objects": ["triangle", "square", "star", "circle"],
        "relationships": [[i, "near", (i + 1) % 4] for i in range(4)],
    },
]


def load_script():
    spec = importlib.util.spec_from_file_location("convert_sgdiff_to_diffusers", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


script = load_script()


@pytest.fixture
def vocab_file(tmp_path):
    vocab = Vocabulary.from_names(["circle", "square", "triangle", "star"], ["left of", "above", "near"])
    return vocab.save(tmp_path / "vocab.json")


@pytest.fixture
def encoder_weights():
    return random_sgdiff_state_dict(seed=0, **SIZES)


def clip_weights():
    """A few keys of the frozen CLIP model SGDiff saves with its encoder (to be dropped)."""
    return {
        "clip_model.visual.conv1.weight": torch.randn(8, 3, 4, 4),
        "clip_model.positional_embedding": torch.randn(7, 8),
        "clip_model.logit_scale": torch.tensor(4.6052),  # not the encoder's logit_scale
    }


def sgdiff_container(encoder_weights, prefix=""):
    """The layout of SGDiff's ``sip_vg.pt``."""
    state_dict = {**clip_weights(), **encoder_weights}
    return {
        "epoch": 99,
        "name": "sip_vg",
        "state_dict": {prefix + key: value for key, value in state_dict.items()},
        "optimizer": {
            "state": {0: {"step": torch.tensor(10.0), "exp_avg": torch.zeros(3)}},
            "param_groups": [{"lr": 5e-4, "weight_decay": 0.2, "params": [0, 1]}],
        },
    }


def lightning_checkpoint(encoder_weights):
    """The layout of SGDiff's diffusion ``.ckpt``: the encoder lives under ``cond_stage_model.``."""
    state_dict = {
        "model.diffusion_model.context_local_mlp.0.weight": torch.randn(20, 60),
        "model.diffusion_model.context_local_mlp.0.bias": torch.randn(20),
        "model_ema.decay": torch.tensor(0.9999),
        "first_stage_model.encoder.conv_in.weight": torch.randn(4, 3, 3, 3),
        **{f"cond_stage_model.{key}": value for key, value in encoder_weights.items()},
    }
    return {"epoch": 3, "global_step": 1000, "state_dict": state_dict}


LAYOUTS = {
    "sip_container": lambda weights: sgdiff_container(weights),
    "data_parallel": lambda weights: sgdiff_container(weights, prefix="module."),
    "bare_state_dict": lambda weights: dict(weights),
    "lightning_ckpt": lightning_checkpoint,
}


def convert(tmp_path, vocab_file, checkpoint, *flags):
    path = tmp_path / "sip_vg.pt"
    torch.save(checkpoint, path)
    output = tmp_path / "out"
    return script.main(["--sg-encoder", str(path), "--vocab", str(vocab_file), "--output", str(output), *flags])


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_every_weight_lands_exactly(layout, tmp_path, vocab_file, encoder_weights, capsys):
    assert convert(tmp_path, vocab_file, LAYOUTS[layout](encoder_weights)) == 0
    assert "converted" in capsys.readouterr().out

    model = SceneGraphEncoder.from_pretrained(tmp_path / "out")
    state_dict = model.state_dict()
    assert state_dict.keys() == encoder_weights.keys()
    for key, value in encoder_weights.items():
        assert torch.equal(state_dict[key], value), key
    assert model.vocab == Vocabulary.load(vocab_file)
    config = model.config
    assert (config.num_objects, config.num_predicates, config.num_graph_layers) == (5, 4, 3)
    assert (config.embedding_dim, config.hidden_dim, config.output_dim) == (16, 24, 20)
    assert config.max_local_triples == 15


def test_converted_model_computes_what_sgdiff_computes(tmp_path, vocab_file, encoder_weights):
    assert convert(tmp_path, vocab_file, sgdiff_container(encoder_weights)) == 0
    model = SceneGraphEncoder.from_pretrained(tmp_path / "out")
    batch = collate_scene_graphs(GRAPHS, model.vocab)

    out = model(batch)
    local, global_ = sgdiff_encode(encoder_weights, batch, max_local_triples=15)

    torch.testing.assert_close(out.local_tokens, local)
    torch.testing.assert_close(out.global_embeds, global_)


def test_clip_weights_are_dropped(tmp_path, vocab_file, encoder_weights):
    assert convert(tmp_path, vocab_file, sgdiff_container(encoder_weights)) == 0
    saved = load_file(tmp_path / "out" / "diffusion_pytorch_model.safetensors")
    assert not [key for key in saved if "clip" in key]
    assert len(saved) == len(encoder_weights) == 29  # 53 at SGDiff's 6 layers; 29 at 3
    assert torch.equal(saved["logit_scale"], encoder_weights["logit_scale"])


@pytest.mark.parametrize(
    "damage, key",
    [
        ("missing", "graph_net.gconvs.1.net2.0.bias"),
        ("mis-shaped", "graph_projection.weight"),
        ("unexpected", "graph_net.gconvs.0.net1.1.weight"),  # a normalisation layer SGDiff does not have
    ],
)
def test_a_mismatched_checkpoint_is_refused_and_nothing_is_written(
    damage, key, tmp_path, vocab_file, encoder_weights, capsys
):
    weights = dict(encoder_weights)
    if damage == "missing":
        del weights[key]
    elif damage == "mis-shaped":
        weights[key] = weights[key].T.contiguous()
    else:
        weights[key] = torch.ones(24)
    before = sorted(p.name for p in tmp_path.iterdir())

    assert convert(tmp_path, vocab_file, sgdiff_container(weights)) == 1

    error = capsys.readouterr().err
    assert f"{damage} key" in error and key in error
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(before + ["sip_vg.pt"])  # no output, no temp folder
    with pytest.raises(CheckpointMismatchError) as info:
        convert_sgdiff_encoder(tmp_path / "sip_vg.pt", vocab_file, tmp_path / "out")
    assert key in info.value.missing + info.value.unexpected + [k for k, _, _ in info.value.mismatched]


def test_a_vocabulary_of_another_size_is_refused(tmp_path, encoder_weights, capsys):
    vocab_file = Vocabulary.from_names(["circle", "square", "triangle"], ["left of", "above", "near"]).save(
        tmp_path / "vocab.json"
    )
    assert convert(tmp_path, vocab_file, sgdiff_container(encoder_weights)) == 1
    assert "num_objects is 5 in the checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_pickle_with_python_objects_needs_unsafe_load(tmp_path, vocab_file, encoder_weights, capsys):
    checkpoint = {**sgdiff_container(encoder_weights), "args": argparse.Namespace(lr=5e-4, batch_size=64)}

    assert convert(tmp_path, vocab_file, checkpoint) == 1
    error = capsys.readouterr().err
    assert "argparse.Namespace" in error and "--unsafe-load" in error
    assert not (tmp_path / "out").exists()

    with pytest.warns(UserWarning, match="weights_only=False"):
        assert convert(tmp_path, vocab_file, checkpoint, "--unsafe-load") == 0
    model = SceneGraphEncoder.from_pretrained(tmp_path / "out")
    assert torch.equal(model.obj_embeddings.weight, encoder_weights["obj_embeddings.weight"])


def test_an_existing_output_is_replaced_only_with_overwrite(tmp_path, vocab_file, encoder_weights, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("keep me")

    assert convert(tmp_path, vocab_file, sgdiff_container(encoder_weights)) == 1
    assert "not empty" in capsys.readouterr().err
    assert (tmp_path / "out" / "notes.txt").read_text() == "keep me"

    assert convert(tmp_path, vocab_file, sgdiff_container(encoder_weights), "--overwrite") == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "config.json",
        "diffusion_pytorch_model.safetensors",
        "vocab.json",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "sip_vg.pt", "vocab.json"]
