"""Masked contrastive pretraining: the objective, the towers, retrieval, and the training script
run end to end (one process, resumed, and two processes)."""

import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from sg2vid_diffusers import SceneGraphEncoder
from sg2vid_diffusers.data.sg_shapes import COLORS, generate_clip, sg_shapes_vocabulary
from sg2vid_diffusers.data.video_folder import MetadataError, make_sg_shapes_dataset
from sg2vid_diffusers.training_utils import layout_loss
from sg2vid_diffusers.pretraining import (
    MAX_LOGIT_SCALE,
    HFVisionTower,
    MaskedContrastiveObjective,
    PretrainingExample,
    SmallVideoEncoder,
    collate_pretraining_examples,
    contrastive_loss,
    gather_with_grad,
    object_region_masks,
    retrieval_recall,
)

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "training" / "train_sg_encoder.py"
TINY_ENCODER = dict(embedding_dim=16, hidden_dim=16, output_dim=16, num_graph_layers=2, max_local_triples=8)
TINY_VIDEO = dict(max_frames=4, width=16, num_blocks=1, embed_dim=16, norm_groups=4)


def sg_shapes_examples(count, num_frames=4, split="train"):
    examples = []
    for index in range(count):
        clip, graph = generate_clip(split, index, num_frames=num_frames)
        examples.append(PretrainingExample(clip.render(), graph, clip.boxes()))
    return examples


@pytest.fixture(scope="module")
def vocab():
    return sg_shapes_vocabulary()


@pytest.fixture(scope="module")
def batch(vocab):
    return collate_pretraining_examples(sg_shapes_examples(6), vocab)


def tiny_objective(vocab, seed=0, **kwargs):
    torch.manual_seed(seed)
    encoder = SceneGraphEncoder.from_vocab(vocab, **TINY_ENCODER)
    return MaskedContrastiveObjective(encoder, SmallVideoEncoder(**TINY_VIDEO), head_num_heads=2, **kwargs)


# ----------------------------------------------------------------------------- the objective


def test_contrastive_loss_is_symmetric_infonce():
    torch.manual_seed(0)
    g = F.normalize(torch.randn(5, 8), dim=-1)
    v = F.normalize(torch.randn(5, 8), dim=-1)
    scale = torch.tensor(math.log(1 / 0.07))

    direct = 0.0
    for i in range(5):
        row = [math.exp(scale.exp() * float(g[i] @ v[j])) for j in range(5)]
        col = [math.exp(scale.exp() * float(g[j] @ v[i])) for j in range(5)]
        direct += -math.log(row[i] / sum(row)) - math.log(col[i] / sum(col))
    assert contrastive_loss(g, v, scale).item() == pytest.approx(direct / 10, rel=1e-5)


def test_the_objective_contrasts_normalised_globals_at_the_encoders_scale(vocab, batch):
    objective = tiny_objective(vocab, masked_branch=False).eval()
    out = objective(batch)
    g = F.normalize(objective.graph_encoder(batch.graphs).global_embeds, dim=-1)
    v = F.normalize(objective.video_tower(batch.videos).global_embeds, dim=-1)

    expected = contrastive_loss(g, v, objective.graph_encoder.logit_scale)
    torch.testing.assert_close(out.contrastive_loss, expected)
    torch.testing.assert_close(out.loss, expected)
    assert out.mask_loss.item() == 0 and out.masks is None and out.num_logit_columns == 6
    assert gather_with_grad(g) is g  # one process: nothing to gather


def test_the_layout_loss_adds_to_the_objective_with_its_weight(vocab, batch):
    plain = tiny_objective(vocab, masked_branch=False).eval()
    weighted = tiny_objective(vocab, masked_branch=False, layout_loss_weight=2.0).eval()  # the same weights
    out, with_layout = plain(batch), weighted(batch)
    expected = layout_loss(weighted.graph_encoder.object_vectors(batch.graphs), batch.object_boxes, batch.maskable)
    assert out.layout_loss.item() == 0 and expected.item() > 0
    torch.testing.assert_close(with_layout.layout_loss, expected)
    torch.testing.assert_close(with_layout.loss, out.loss + 2.0 * expected)
    with pytest.raises(ValueError, match="layout_loss_weight must be >= 0"):
        tiny_objective(vocab, layout_loss_weight=-1.0)


def test_logit_scale_is_clamped_to_zero_and_ln_100(vocab):
    objective = tiny_objective(vocab)
    scale = objective.graph_encoder.logit_scale
    assert scale.item() == pytest.approx(math.log(1 / 0.07))
    with torch.no_grad():
        scale.fill_(7.0)
    objective.clamp_logit_scale()
    assert scale.item() == pytest.approx(math.log(100)) and MAX_LOGIT_SCALE == pytest.approx(math.log(100))
    with torch.no_grad():
        scale.fill_(-1.0)
    objective.clamp_logit_scale()
    assert scale.item() == 0.0


def test_masking_every_object_blacks_out_every_sg_shapes_object(vocab, batch):
    objective = tiny_objective(vocab, mask_prob=1.0)
    out = objective(batch)
    # SG-Shapes backgrounds are black: with every object's boxes masked, nothing is left.
    assert batch.videos.max() > 0
    assert (batch.videos * (1 - out.masks)).max() == 0
    assert set(out.masks.unique().tolist()) <= {0.0, 1.0}


def test_masks_cover_the_chosen_boxes_only_and_never_the_image_node(vocab):
    batch = collate_pretraining_examples(sg_shapes_examples(6), vocab)
    objective = tiny_objective(vocab, mask_prob=0.5)
    is_image = batch.graphs.objs == 0
    batch.maskable[is_image] = True  # even when told the image node may be masked...
    batch.object_boxes[is_image] = torch.tensor([0.0, 0.0, 1.0, 1.0])
    chosen = objective.choose_masked_objects(batch, torch.Generator().manual_seed(3))
    assert not chosen[is_image].any()  # ...it never is
    assert 0 < chosen.sum() < (~is_image).sum()

    B, F_, _, H, W = batch.videos.shape
    masks = object_region_masks(batch.object_boxes, chosen, batch.graphs.obj_to_img, B, H, W)[:, :, 0]
    assert masks.shape == (B, F_, H, W)
    xs, ys = torch.arange(W), torch.arange(H)
    for b in range(B):
        for f in range(F_):
            inside_some_chosen_box = torch.zeros(H, W, dtype=torch.bool)
            for k in torch.nonzero(chosen & (batch.graphs.obj_to_img == b)).flatten():
                x0, y0, x1, y1 = (batch.object_boxes[k, f] * torch.tensor([W, H, W, H])).tolist()
                overlaps_x = (xs + 1 > x0) & (xs < x1)  # pixel [x, x + 1) overlaps [x0, x1)
                overlaps_y = (ys + 1 > y0) & (ys < y1)
                inside_some_chosen_box |= overlaps_y[:, None] & overlaps_x[None, :]
            assert torch.equal(masks[b, f] > 0, inside_some_chosen_box)


def test_overlapping_boxes_keep_mask_values_in_zero_one():
    boxes = torch.tensor([[[0.0, 0.0, 0.5, 0.5]], [[0.25, 0.25, 0.75, 0.75]], [[0.2, 0.2, 0.6, 0.6]]])  # (3, 1, 4)
    masks = object_region_masks(boxes, torch.tensor([True, True, True]), torch.tensor([0, 0, 0]), 1, 8, 8)
    assert masks.min() == 0 and masks.max() == 1
    assert masks[0, 0, 0, 3, 3] == 1  # covered by all three boxes


def test_the_head_is_optimised_from_the_first_step(vocab, batch):
    objective = tiny_objective(vocab)
    optimizer = torch.optim.AdamW(objective.param_groups(weight_decay=0.2), lr=1e-3)
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    head_params = dict(objective.head.named_parameters())
    assert head_params and all(id(p) in in_optimizer for p in head_params.values())
    before = {name: p.detach().clone() for name, p in head_params.items()}

    out = objective(batch, generator=torch.Generator().manual_seed(0))
    out.loss.backward()
    optimizer.step()

    assert out.mask_loss > 0
    for name, p in head_params.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
        assert not torch.equal(p, before[name]), name


def test_no_weight_decay_on_biases_norm_gains_and_logit_scale(vocab):
    objective = tiny_objective(vocab)
    decay, no_decay = objective.param_groups(weight_decay=0.2)
    assert decay["weight_decay"] == 0.2 and no_decay["weight_decay"] == 0.0
    no_decay_ids = {id(p) for p in no_decay["params"]}
    assert id(objective.graph_encoder.logit_scale) in no_decay_ids
    assert id(objective.head.norm1.weight) in no_decay_ids and id(objective.head.mlp[0].bias) in no_decay_ids
    assert id(objective.head.mlp[0].weight) not in no_decay_ids


def test_the_loss_falls_on_a_fixed_batch(vocab, batch):
    objective = tiny_objective(vocab)
    optimizer = torch.optim.AdamW(objective.param_groups(weight_decay=0.0), lr=2e-3)
    losses = []
    for _ in range(20):
        out = objective(batch, generator=torch.Generator().manual_seed(0))
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        objective.clamp_logit_scale()
        losses.append(out.loss.item())
    assert np.mean(losses[-3:]) < 0.7 * losses[0], losses


def test_collate_aligns_per_frame_boxes_with_the_graph_rows(vocab):
    clip, graph = generate_clip("train", 2, num_frames=4)
    without_boxes = PretrainingExample(clip.render(), graph, None)
    batch = collate_pretraining_examples([PretrainingExample(clip.render(), graph, clip.boxes()), without_boxes], vocab)
    n = len(graph.objects)
    assert batch.videos.shape == (2, 4, 3, 64, 64) and 0 <= batch.videos.min() and batch.videos.max() <= 1
    assert batch.object_boxes.shape == (2 * (n + 1), 4, 4)
    torch.testing.assert_close(batch.object_boxes[:n], torch.tensor(clip.boxes(), dtype=torch.float32).transpose(0, 1))
    assert batch.maskable.tolist() == [True] * n + [False] + [False] * (n + 1)
    assert batch.graphs.objs[n] == 0  # the image node row


# ----------------------------------------------------------------------------- towers and retrieval


def test_small_video_encoder_gives_tokens_and_a_global_vector():
    encoder = SmallVideoEncoder(**TINY_VIDEO)
    out = encoder(torch.rand(3, 4, 3, 64, 64))
    assert out.local_tokens.shape == (3, 2 * 8 * 8, 16) and out.global_embeds.shape == (3, 16)
    assert encoder(torch.rand(1, 4, 3, 32, 32)).local_tokens.shape == (1, 128, 16)  # resized
    with pytest.raises(ValueError, match="multiple of tubelet_size"):
        encoder(torch.rand(1, 3, 3, 64, 64))


def test_hf_vision_tower_loads_a_local_clip_and_stays_frozen(tmp_path, vocab, batch):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    config = CLIPVisionConfig(
        hidden_size=16, intermediate_size=32, projection_dim=16, num_hidden_layers=1, num_attention_heads=2,
        image_size=32, patch_size=16,
    )
    CLIPVisionModelWithProjection(config).save_pretrained(tmp_path / "clip")
    tower = HFVisionTower.from_pretrained(str(tmp_path / "clip"))

    assert isinstance(tower.model, CLIPVisionModelWithProjection)
    assert (tower.local_dim, tower.global_dim, tower.image_size) == (16, 16, 32)
    out = tower(batch.videos)  # (6, 4, 3, 64, 64), resized to 32 px: 4 patches + class token per frame
    assert out.local_tokens.shape == (6, 4 * 5, 16) and out.global_embeds.shape == (6, 16)
    # Per frame, then averaged over frames.
    frames = F.interpolate(batch.videos[0], size=(32, 32), mode="bicubic", align_corners=False).clamp(0, 1)
    per_frame = tower.model(pixel_values=(frames - tower.image_mean) / tower.image_std).image_embeds
    torch.testing.assert_close(out.global_embeds[0], per_frame.mean(0))

    encoder = SceneGraphEncoder.from_vocab(vocab, **TINY_ENCODER)
    objective = MaskedContrastiveObjective(encoder, tower, head_num_heads=2)
    trainable = {id(p) for group in objective.param_groups(0.1) for p in group["params"]}
    assert not any(id(p) in trainable for p in tower.parameters())
    objective.train()
    assert not tower.model.training
    objective(batch, generator=torch.Generator().manual_seed(0)).loss.backward()
    assert all(p.grad is None for p in tower.parameters())
    # The frozen weights stay out of checkpoints, and loading a checkpoint keeps them.
    state = objective.state_dict()
    assert not any(key.startswith("video_tower.") for key in state)
    objective.load_state_dict(state)


def test_retrieval_recall_on_hand_made_embeddings():
    videos = torch.eye(6)
    graphs = torch.eye(6)
    graphs[4] = videos[5]  # graph 4 finds video 5 first...
    graphs[4, 4] = 0.5  # ...and its own video second
    graphs[5] = -videos[5]  # graph 5 is farthest from its video
    metrics = retrieval_recall(graphs, videos, ks=(1, 5))
    assert metrics["graph_to_video_recall@1"] == pytest.approx(4 / 6)
    assert metrics["graph_to_video_recall@5"] == pytest.approx(5 / 6)
    # Video 4 still finds graph 4 first; video 5 ranks its graph last, behind 5 others.
    assert metrics["video_to_graph_recall@1"] == pytest.approx(5 / 6)
    assert metrics["video_to_graph_recall@5"] == pytest.approx(5 / 6)
    # Identical embeddings are ties, and ties count against the query.
    assert retrieval_recall(torch.ones(4, 3), torch.ones(4, 3))["graph_to_video_recall@1"] == 0.0


# ----------------------------------------------------------------------------- the script


def load_script():
    spec = importlib.util.spec_from_file_location("train_sg_encoder", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("sg_shapes")
    make_sg_shapes_dataset(root / "train", "train", num_clips=16, num_frames=8, video_format="npy")
    make_sg_shapes_dataset(root / "validation", "validation", num_clips=8, num_frames=8, video_format="npy")
    return root


def tiny_args(folders, output_dir, *extra):
    return [
        "--train_data_dir", str(folders / "train"),
        "--output_dir", str(output_dir),
        "--train_batch_size", "4",
        "--max_train_steps", "6",
        "--checkpointing_steps", "2",
        "--learning_rate", "1e-3",
        "--lr_warmup_steps", "1",
        "--encoder_config", *(f"{k}={v}" for k, v in TINY_ENCODER.items() if k != "output_dim"), "output_dim=16",
        "--video_encoder_config", "width=16", "num_blocks=1", "norm_groups=4",
        "--head_num_heads", "2",
        "--report_to", "none",
        *extra,
    ]  # fmt: skip


def run_script(args, processes=1):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    result = subprocess.run(
        [*launcher, str(SCRIPT), *args], capture_output=True, text=True, env=env, cwd=REPO, timeout=300
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def full_run(folders, tmp_path_factory):
    """Six uninterrupted steps, checkpoints every 2, validation every 3, TensorBoard logs."""
    out = tmp_path_factory.mktemp("runs") / "full"
    validation = ["--validation_data_dir", str(folders / "validation"), "--validation_steps", "3"]
    log = run_script(tiny_args(folders, out, *validation, "--report_to", "tensorboard"))
    return out, log


def test_the_script_saves_a_loadable_encoder_with_vocab_and_model_card(full_run, vocab):
    out, log = full_run
    encoder = SceneGraphEncoder.from_pretrained(out)
    assert encoder.vocab.object_idx_to_name == vocab.object_idx_to_name
    assert encoder.config.output_dim == 16 and encoder.config.num_graph_layers == 2
    encoder.encode({"objects": ["red circle", "blue square"], "relationships": [[0, "left of", 1]]})
    assert SmallVideoEncoder.from_pretrained(out / "video_encoder").config.width == 16

    card = (out / "README.md").read_text()
    assert "library_name: diffusers" in card
    assert "16 clips" in card and "steps: 6" in card and "| step 6 |" in card and "| untrained |" in card
    assert re.search(r"validation, step 6: graph->video R@1 [0-9.]+, graph->video R@5", log)
    assert [p.name for p in sorted(out.glob("checkpoint-*"))] == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    assert list((out / "logs").rglob("events.out.tfevents.*"))


def test_the_script_trains_with_the_layout_loss(folders, tmp_path):
    out = tmp_path / "layout"
    run_script(tiny_args(folders, out, "--max_train_steps", "2", "--layout_loss_weight", "1"))
    assert "layout 1.0" in (out / "README.md").read_text()
    logs = subprocess.run(
        [sys.executable, str(SCRIPT), *tiny_args(folders, tmp_path / "bad", "--layout_loss_weight", "-1")],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    assert logs.returncode == 2 and "--layout_loss_weight must be >= 0" in logs.stderr and not (tmp_path / "bad").exists()


def test_resume_continues_with_the_same_data_order_and_learning_rate(full_run, folders, tmp_path):
    full, _ = full_run
    # What a run killed while writing its step-6 checkpoint leaves: checkpoint-4 and a partial .tmp.
    resumed = tmp_path / "resumed"
    shutil.copytree(full / "checkpoint-4", resumed / "checkpoint-4")
    (resumed / "checkpoint-6.tmp").mkdir()
    (resumed / "checkpoint-6.tmp" / "model.safetensors").write_bytes(b"half written")

    resume = ["--resume_from_checkpoint", "latest", "--checkpoints_total_limit", "1"]
    log = run_script(tiny_args(folders, resumed, *resume))

    assert "Resuming from" in log and "checkpoint-4" in log and "step 5:" in log
    for name in ("diffusion_pytorch_model.safetensors", "video_encoder/diffusion_pytorch_model.safetensors"):
        expected, got = load_file(full / name), load_file(resumed / name)
        assert expected.keys() == got.keys()
        for key in expected:
            torch.testing.assert_close(got[key], expected[key], rtol=0, atol=1e-6)
    assert sorted(p.name for p in resumed.glob("checkpoint-*")) == ["checkpoint-6"]  # total limit 1, .tmp replaced


def test_two_processes_contrast_the_gathered_batch(folders, tmp_path):
    """Two processes of 2 clips train exactly as one process of 4 (the same global batches)."""
    clip = tmp_path / "clip"
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    config = CLIPVisionConfig(
        hidden_size=16, intermediate_size=32, projection_dim=16, num_hidden_layers=1, num_attention_heads=2,
        image_size=32, patch_size=16,
    )
    CLIPVisionModelWithProjection(config).save_pretrained(clip)
    # Every object masked, so the masks do not depend on how clips are split across processes.
    common = ["--max_train_steps", "3", "--vision_encoder", str(clip), "--mask_prob", "1", "--cpu"]
    validation = ["--validation_data_dir", str(folders / "validation"), "--validation_steps", "2"]

    two = run_script(tiny_args(folders, tmp_path / "two", *common, *validation, "--train_batch_size", "2"), processes=2)
    one = run_script(tiny_args(folders, tmp_path / "one", *common))

    assert "Num processes: 2" in two
    assert "validation, step 2:" in two and "validation, step 3:" in two
    assert "step 1: contrastive loss over 4 clips (2 processes x 2)" in two
    assert "step 1: contrastive loss over 4 clips (1 processes x 4)" in one
    expected = load_file(tmp_path / "one" / "diffusion_pytorch_model.safetensors")
    got = load_file(tmp_path / "two" / "diffusion_pytorch_model.safetensors")
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-4, atol=1e-5)


def test_a_bad_metadata_line_fails_before_training_with_its_line_number(folders, tmp_path):
    script = load_script()
    bad = tmp_path / "bad"
    shutil.copytree(folders / "train", bad)
    rows = [json.loads(line) for line in (bad / "metadata.jsonl").read_text().splitlines()]
    rows[6]["scene_graph"]["objects"][0] = "purple hexagon"
    (bad / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))

    args = script.parse_args(tiny_args(folders, tmp_path / "out", "--train_data_dir", str(bad)))
    with pytest.raises(MetadataError, match=r"metadata.jsonl:7: scene_graph.objects\[0\].name"):
        script.main(args)
    assert not (tmp_path / "out").exists()


CORPORA = [  # format, fixture writer, folder, extra arguments
    ("visual_genome_h5", "write_visual_genome", "vg", ["--num_frames", "2", "--validation_split", "val"]),
    ("coco_stuff", "write_coco_stuff", "coco", ["--num_frames", "2"]),
    ("action_genome", "write_action_genome", "ag", ["--num_frames", "2", "--validation_split", "test"]),
    ("vidvrd", "write_vidvrd", "vidvrd-dataset", ["--num_frames", "4"]),
    ("vidor", "write_vidor", "vidor-dataset", ["--num_frames", "4", "--validation_split", "val"]),
]


@pytest.mark.parametrize("dataset_format, writer, folder, extra", CORPORA)
def test_a_few_steps_on_each_public_corpus_format(folders, tmp_path, dataset_format, writer, folder, extra):
    import corpora_fixtures

    data = getattr(corpora_fixtures, writer)(tmp_path / folder) or tmp_path / folder
    out = tmp_path / "out"
    args = tiny_args(folders, out, "--train_data_dir", str(data), "--dataset_format", dataset_format,
                     "--resolution", "16", "--train_batch_size", "1", "--max_train_steps", "2", *extra)  # fmt: skip
    if "--validation_data_dir" in args:  # the corpus's own split replaces the SG-Shapes folder
        i = args.index("--validation_data_dir")
        del args[i : i + 2]
    run_script(args)
    encoder = SceneGraphEncoder.from_pretrained(out)
    from sg2vid_diffusers.data.corpora import build_vocabulary

    assert encoder.vocab == build_vocabulary(dataset_format, data)


