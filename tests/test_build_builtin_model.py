"""The built-in model's recipe, every stage end to end at smoke size."""

import importlib.util
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from processes import signal_when_ready
from safetensors import safe_open

from sg2vid_diffusers.data.sg_shapes import generate_clip
from sg2vid_diffusers.data.video_folder import write_video_folder

ROOT = Path(__file__).resolve().parent.parent


def test_the_recipe_runs_every_stage_and_exports_a_loadable_fp16_pipeline(tmp_path):
    export = tmp_path / "export"
    command = [sys.executable, str(ROOT / "training" / "build_builtin_model.py"), "--work_dir", str(tmp_path / "work"),
               "--preset", "smoke", "--export_dir", str(export)]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    rows = json.loads((tmp_path / "work" / "evaluation.json").read_text())
    assert set(rows) == {"ground truth", "built-in model", "null graph"}
    assert rows["ground truth"]["relation_accuracy"] == 1.0 and rows["built-in model"]["num_videos"] == 4

    with safe_open(export / "unet" / "diffusion_pytorch_model.safetensors", "pt") as f:
        assert f.get_tensor(next(iter(f.keys()))).dtype.is_floating_point
        assert all(str(f.get_tensor(k).dtype) == "torch.float16" for k in f.keys())
    import torch

    from sg2vid_diffusers import SceneGraphToVideoPipeline

    pipe = SceneGraphToVideoPipeline.from_pretrained(export, dtype=torch.float32)
    assert pipe.unet.dtype == torch.float32 and pipe.vocab is not None

    # The model card records every stage (with its wall time) and the quality table of the evaluation.
    card = (export / "README.md").read_text()
    assert "## How it was made" in card and card.count("## Quality") == 1
    # Its example loads the export, and its command names the scripts as a checkout has them.
    assert f'from_pretrained("{export}")' in card and str(ROOT) not in card
    times = json.loads((tmp_path / "work" / "stage_times.json").read_text())
    assert set(times) == {"data", "encoder", "vae", "video", "guidance", "export", "evaluate"}
    guidance = json.loads((tmp_path / "work" / "guidance.json").read_text())
    assert set(guidance["figures"]) == {"1", "4"}
    assert guidance["model"] == {"folder": "video_positions", "steps": 5}  # what it was chosen for
    model_index = json.loads((export / "model_index.json").read_text())
    assert model_index["default_guidance_scale"] == guidance["chosen"]
    # The fine-tune leg's moving layout: its motion scale chosen next, at the chosen guidance, and exported.
    assert set(guidance["motion_figures"]) == {"1", "2"}
    assert guidance["motion_figures"]["1"] == guidance["figures"][f"{guidance['chosen']:g}"]
    assert model_index["default_motion_scale"] == guidance["motion_scale"] in (1.0, 2.0)
    assert (tmp_path / "work" / "guidance" / f"{guidance['chosen']:g}_motion2" / "metadata.jsonl").is_file()
    assert f"default motion scale {guidance['motion_scale']:g}, the best of (1: " in card
    # Its layout bias: the layout scale chosen next, at the chosen guidance and motion scale, and exported.
    assert set(guidance["layout_figures"]) == {"1", "2"}
    assert guidance["layout_figures"]["1"] == guidance["motion_figures"][f"{guidance['motion_scale']:g}"]
    assert model_index["default_layout_scale"] == guidance["layout_scale"] in (1.0, 2.0)
    layout_run = f"{guidance['chosen']:g}_motion{guidance['motion_scale']:g}_layout2"
    assert (tmp_path / "work" / "guidance" / layout_run / "metadata.jsonl").is_file()
    assert f"default layout scale {guidance['layout_scale']:g}, the best of (1: " in card
    assert (f", motion scale {guidance['motion_scale']:g}, layout scale {guidance['layout_scale']:g}, "
            "the best-fitting of 2 candidates, seed = graph index") in card
    assert model_index["default_num_candidates"] == 2  # the preset's, exported
    # Every setting scored on the validation split and on a fresh one (extra_validation_seeds: [1]),
    # by the mean of the two: the figures and so the score are the sets' mean.
    work = tmp_path / "work"
    assert guidance["validation_sets"] == ["validation", "validation_seed1"]
    fresh = [json.loads(line) for line in (work / "guidance_graphs_validation_seed1.jsonl").read_text().splitlines()]
    first = [json.loads(line) for line in (work / "guidance_graphs.jsonl").read_text().splitlines()]
    assert len(fresh) == len(first) == 2 and fresh != first  # drawn with another seed
    recipe = load_recipe()
    for row in [*guidance["figures"].values(), *guidance["layout_figures"].values()]:
        assert set(row["sets"]) == {"validation", "validation_seed1"} and row["num_videos"] == 4
        sets = list(row["sets"].values())
        assert row["relation_accuracy"] == pytest.approx(sum(r["relation_accuracy"] for r in sets) / 2)
        assert recipe.guidance_score(row) == pytest.approx(sum(map(recipe.guidance_score, sets)) / 2)
    assert (work / "guidance" / "validation_seed1" / layout_run / "metadata.jsonl").is_file()
    assert "averaged over 2 validation sets (2 graphs of `validation` and 2 graphs of `validation_seed1`)" in card
    assert "| built-in model |" in card and "| null graph |" in card
    legs = json.loads((tmp_path / "work" / "video_legs.json").read_text())
    # The smoke preset's three legs, the second on frame windows with the layout loss, the third a
    # fine-tune with position features and the moving layout in its own run, as the card says.
    fine_tune_flags = ["--train_unet", "--graph_position_dim", "8", "--frame_window", "2", "--graph_layout_bias",
                       "--graph_layout_motion", "--layout_loss_weight", "1"]  # fmt: skip
    expected = [(0, 2, [], False), (2, 3, ["--frame_window", "2", "--layout_loss_weight", "1"], False),
                (3, 5, fine_tune_flags, True)]  # fmt: skip
    assert [(leg["from_step"], leg["to_step"], leg["flags"], leg.get("fine_tune", False)) for leg in legs] == expected
    assert "trained in 3 legs" in card and "2->3" in card and "`--frame_window 2 --layout_loss_weight 1`" in card
    assert "3->5" in card and "fine-tuned from the pipeline the legs before it saved" in card
    # The fine-tune run trained 2 steps of its own from the pipeline of the first run, and is what was exported.
    assert [p.name for p in sorted((tmp_path / "work" / "video_positions").glob("checkpoint-*"))] == ["checkpoint-1", "checkpoint-2"]
    assert pipe.unet.config.graph_position_dim == 8 and pipe.unet.config.graph_layout_motion
    assert pipe.unet.graph_layout_motion_gate.item() != 0  # trained from zero
    positions = [p for name, p in pipe.unet.named_parameters() if name.endswith("to_q_pos.weight")]
    assert positions and all(p.abs().sum() > 0 for p in positions)

    # Rerunning skips finished stages (nothing to train again, no time added); evaluating again
    # replaces the card's quality table instead of adding a second one.
    again = subprocess.run(command + ["--stages", "data", "encoder", "vae", "video", "guidance"], capture_output=True, text=True, cwd=ROOT)
    assert again.returncode == 0 and "+ " not in again.stdout
    assert json.loads((tmp_path / "work" / "stage_times.json").read_text()) == times
    again = subprocess.run(command + ["--stages", "evaluate"], capture_output=True, text=True, cwd=ROOT)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (export / "README.md").read_text().count("## Quality") == 1


def load_recipe():
    spec = importlib.util.spec_from_file_location("build_builtin_model", ROOT / "training" / "build_builtin_model.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    return recipe


def test_stage_times_add_up_over_resumed_training_and_are_replaced_when_a_stage_starts_over(tmp_path):
    recipe = load_recipe()
    for stage in ("video", "evaluate"):
        recipe.record_stage_time(tmp_path, stage, 100.0)
        recipe.record_stage_time(tmp_path, stage, 30.0)
    assert json.loads((tmp_path / "stage_times.json").read_text()) == {"video": 130.0, "evaluate": 30.0}


def test_the_guidance_stage_time_adds_up_over_stopped_runs_until_one_finishes(tmp_path):
    recipe = load_recipe()
    recipe.record_stage_time(tmp_path, "guidance", 100.0, finished=False)  # stopped ...
    recipe.record_stage_time(tmp_path, "guidance", 30.0, finished=False)  # ... twice ...
    assert json.loads((tmp_path / "stage_times.json").read_text()) == {"guidance": 130.0}
    recipe.record_stage_time(tmp_path, "guidance", 20.0)  # ... then resumed to the end: one choice, 150 s
    assert json.loads((tmp_path / "stage_times.json").read_text()) == {"guidance": 150.0}
    recipe.record_stage_time(tmp_path, "guidance", 40.0)  # a new choice (another model) starts from 0
    assert json.loads((tmp_path / "stage_times.json").read_text()) == {"guidance": 40.0}


def test_a_guidance_stage_stopped_midway_resumes_without_generating_its_finished_videos_again(tmp_path, monkeypatch):
    """The guidance stage's finished folders are kept when it is run again after a stop; a folder is
    generated again when its model's weights, its graphs or its settings change, or when it is gone."""
    from test_pipeline import moving_pipeline

    recipe = load_recipe()
    preset = {**recipe.PRESETS["smoke"], "video_legs": [{"max_train_steps": 5}], "guidance_scales": [1.0, 4.0],
              "motion_scales": [1.0], "layout_scales": [1.0, 3.0], "extra_validation_seeds": []}  # fmt: skip
    moving_pipeline().save_pretrained(tmp_path / "video")
    graphs = tmp_path / "guidance_graphs.jsonl"
    graphs.write_text('{"objects": ["red circle"], "relationships": []}\n')
    row = {"relation_accuracy": 0.5, "object_recall": 1.0, "shape_accuracy": 1.0, "spurious_per_video": 0.0,
           "num_videos": 1}  # fmt: skip
    generated = []

    def run(command):  # what `sg2vid generate --output-dir` leaves: a whole folder, renamed into place
        folder = Path(command[command.index("--output-dir") + 1])
        generated.append(folder.name)
        if len(generated) == stop_after:
            raise KeyboardInterrupt  # stopped during this generation: its folder is not written
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "metadata.jsonl").write_text("{}\n")

    monkeypatch.setattr(recipe, "run", run)
    monkeypatch.setattr(recipe, "make_split", lambda *a, **k: tmp_path / "validation")
    monkeypatch.setattr(recipe, "write_graphs", lambda folder, path, **k: path)
    monkeypatch.setattr(recipe, "evaluate_folder", lambda folder: row)
    args = recipe.parse_args(["--work_dir", str(tmp_path), "--preset", "smoke"])
    stop_after = 2
    with pytest.raises(KeyboardInterrupt):
        recipe.stage_guidance(args, preset, tmp_path)
    assert generated == ["1", "4"] and not (tmp_path / "guidance.json").exists()
    stop_after = None
    assert recipe.stage_guidance(args, preset, tmp_path) is True
    # Resumed: guidance 1 kept, guidance 4 (stopped) generated, then the layout scale 3 at guidance 1
    # (the tie goes to the lower scale, 1 as trained winning ties).
    assert generated == ["1", "4", "4", "1_motion1_layout3"]
    (tmp_path / "guidance.json").unlink()  # the choice made anew, nothing changed: nothing generated
    (tmp_path / "video" / "checkpoint-5").mkdir()  # a training checkpoint is not the pipeline
    (tmp_path / "video" / "checkpoint-5" / "trained_weights.safetensors").write_bytes(b"weights")
    assert recipe.stage_guidance(args, preset, tmp_path) is True and len(generated) == 4
    graphs.write_text('{"objects": ["blue square"], "relationships": []}\n')  # other graphs
    (tmp_path / "guidance.json").unlink()
    recipe.stage_guidance(args, preset, tmp_path)
    assert generated[4:] == ["1", "4", "1_motion1_layout3"]
    pipe = moving_pipeline()  # other weights in the same folder
    with torch.no_grad():
        next(pipe.unet.parameters()).add_(1.0)
    pipe.save_pretrained(tmp_path / "video")
    (tmp_path / "guidance.json").unlink()
    recipe.stage_guidance(args, preset, tmp_path)
    assert generated[7:] == ["1", "4", "1_motion1_layout3"]
    shutil.rmtree(tmp_path / "guidance" / "4")  # a folder gone
    (tmp_path / "guidance.json").unlink()
    recipe.stage_guidance(args, preset, tmp_path)
    assert generated[10:] == ["4"]


def test_a_run_resumed_with_more_steps_is_recorded_as_a_second_leg(tmp_path):
    recipe = load_recipe()
    recipe.record_leg(tmp_path, from_step=0, to_step=3500, seconds=1200)  # interrupted at 1000 ...
    recipe.record_leg(tmp_path, from_step=1000, to_step=3500, seconds=3570)  # ... and resumed: one leg
    assert recipe.legs_text(tmp_path) == ""  # one leg: the preset says it all
    recipe.record_leg(tmp_path, from_step=3500, to_step=9000, seconds=5400)
    recipe.record_leg(tmp_path, from_step=9000, to_step=9000, seconds=3)  # nothing left
    recipe.record_leg(tmp_path, from_step=9000, to_step=14000, seconds=6000, flags=["--frame_window", "4"])
    text = recipe.legs_text(tmp_path)
    assert "3 legs" in text and "0->3500 (80 min)" in text and "3500->9000 (90 min)" in text
    assert "9000->14000 (100 min, `--frame_window 4`)" in text
    assert "fine-tune" not in text
    recipe.record_leg(tmp_path, from_step=14000, to_step=17000, seconds=3600, flags=["--graph_position_dim", "16"],
                      fine_tune=True)  # fmt: skip
    text = recipe.legs_text(tmp_path)
    assert "4 legs" in text and "14000->17000 (60 min, `--graph_position_dim 16`, fine-tuned from the pipeline" in text
    assert "for a fine-tune leg, started anew from their pipeline" in text
    assert "left out" not in text
    # A recipe that ends at 14,000 steps: the leg trained past it (tried, not kept) is no part of its model.
    text = recipe.legs_text(tmp_path, last_step=14000)
    assert "3 legs" in text and "14000->17000" not in text and "9000->14000 (100 min" in text
    assert "legs trained past the last of these (tried, not kept) are left out" in text
    legs, left_out = recipe.trained_legs(tmp_path, last_step=14000)
    assert left_out and sum(leg["seconds"] for leg in legs.values()) == 1200 + 3570 + 5400 + 6000  # the empty rerun counts nothing


def test_fine_tune_legs_train_in_their_own_run_from_the_pipeline_before_them(tmp_path):
    recipe = load_recipe()
    preset = {"video_legs": [{"max_train_steps": 10}, {"max_train_steps": 20, "flags": ["--frame_window", "4"]},
                             {"max_train_steps": 25, "fine_tune_into": "video_b"}, {"max_train_steps": 30},
                             {"max_train_steps": 32, "fine_tune_into": "video_c"}]}  # fmt: skip
    runs = [(leg["max_train_steps"], out.name, source and source.name, offset)
            for leg, out, source, offset in recipe.video_runs(preset, tmp_path)]  # fmt: skip
    assert runs == [(10, "video", None, 0), (20, "video", None, 0), (25, "video_b", "video", 20),
                    (30, "video_b", "video", 20), (32, "video_c", "video_b", 30)]  # fmt: skip
    assert recipe.final_video_dir(preset, tmp_path) == tmp_path / "video_c"
    assert recipe.final_video_dir({"video_legs": preset["video_legs"][:2]}, tmp_path) == tmp_path / "video"


def test_a_leg_is_trained_again_only_when_neither_its_run_nor_a_later_fine_tune_has_passed_it(tmp_path):
    recipe = load_recipe()
    preset = {"video_legs": [{"max_train_steps": 10}, {"max_train_steps": 20},
                             {"max_train_steps": 25, "fine_tune_into": "video_b"}]}  # fmt: skip

    def todo():
        return [leg["max_train_steps"] for leg, *_ in recipe.legs_to_train(recipe.video_runs(preset, tmp_path))]

    assert todo() == [10, 20, 25]
    (tmp_path / "video" / "checkpoint-10").mkdir(parents=True)
    (tmp_path / "video" / "checkpoint-12.tmp").mkdir()  # half-written: not a checkpoint
    assert todo() == [20, 25]
    # The run saved its pipeline at step 20 but its last checkpoint is 15 (as train_video.py did before it
    # checkpointed the last step): the leg looks unfinished until the fine-tune run after it has started.
    (tmp_path / "video" / "checkpoint-15").mkdir()
    assert todo() == [20, 25]
    (tmp_path / "video_b").mkdir()
    assert todo() == [25]
    (tmp_path / "video_b" / "checkpoint-5").mkdir()
    assert todo() == []


def test_an_interrupted_stage_and_leg_still_count_the_time_they_ran(tmp_path, monkeypatch):
    recipe = load_recipe()
    clips = (generate_clip("test", i, num_frames=4) for i in range(2))
    write_video_folder(tmp_path / "data" / "test", ((c.render(), g, None, {}) for c, g in clips), video_format="npy")

    def interrupted(command):  # the training script, stopped by Ctrl-C a moment after it started
        time.sleep(0.2)
        raise KeyboardInterrupt

    monkeypatch.setattr(recipe, "run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        recipe.main(["--work_dir", str(tmp_path), "--preset", "smoke", "--stages", "video"])
    [leg] = json.loads((tmp_path / "video_legs.json").read_text())
    assert (leg["from_step"], leg["to_step"]) == (0, 2) and leg["seconds"] >= 0.2
    assert json.loads((tmp_path / "stage_times.json").read_text())["video"] >= 0.2
    # Resumed (here nothing trains, so every leg runs): the same leg recorded again, the stage's time added.
    monkeypatch.setattr(recipe, "run", lambda command: time.sleep(0.1))
    recipe.main(["--work_dir", str(tmp_path), "--preset", "smoke", "--stages", "video"])
    legs = json.loads((tmp_path / "video_legs.json").read_text())
    assert [(r["from_step"], r["to_step"]) for r in legs][:2] == [(0, 2), (0, 2)]
    assert json.loads((tmp_path / "stage_times.json").read_text())["video"] >= 0.3


# A stage's script that stops as the training scripts do (training_utils.StopRequest), saying how.
STOPPING_SCRIPT = """
import sys, time
from sg2vid_diffusers.training_utils import StopRequest
with StopRequest() as stop:
    print("training", flush=True)
    while not stop.should_stop():
        time.sleep(0.01)
print("checkpoint saved", flush=True)
sys.exit(stop.exit_code)
"""


# The recipe as its __main__ runs it (its stop handlers installed), then the given lines.
RECIPE_DRIVER = (
    "import importlib.util, sys, time\n"
    f"spec = importlib.util.spec_from_file_location('recipe', {str(ROOT / 'training' / 'build_builtin_model.py')!r})\n"
    "recipe = importlib.util.module_from_spec(spec); spec.loader.exec_module(recipe)\n"
    "recipe.install_stop_handlers()\n"
)


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_ctrl_c_reach_the_running_script_and_the_recipe_exits_once_it_has_stopped(tmp_path, stop_signal):
    # The recipe running one stage's command; the signal goes to the recipe alone, which passes it on.
    driver = RECIPE_DRIVER + f"recipe.run([sys.executable, '-c', {STOPPING_SCRIPT!r}])\nprint('not reached', flush=True)\n"
    code, text = signal_when_ready(
        [sys.executable, "-c", driver], tmp_path / "log.txt",
        lambda log: "training" in log.splitlines(),  # a line of its own (run() echoes the code)
        stop_signal, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert code == 128 + stop_signal, text[-3000:]
    assert "checkpoint saved" in text.splitlines() and "not reached" not in text


def test_sigterm_with_no_script_running_exits_at_once(tmp_path):
    driver = RECIPE_DRIVER + "print('ready', flush=True)\ntime.sleep(60)\n"
    code, text = signal_when_ready(
        [sys.executable, "-c", driver], tmp_path / "log.txt", lambda log: "ready" in log.splitlines(),
        signal.SIGTERM, timeout=30, cwd=ROOT,
    )  # fmt: skip
    assert code == 128 + signal.SIGTERM, text[-3000:]


def test_a_preset_with_video_average_ends_the_video_stage_with_the_mean_of_its_runs(tmp_path):
    import torch

    from sg2vid_diffusers import SceneGraphToVideoPipeline
    from tiny_models import tiny_encoder, tiny_pipeline, tiny_unet

    recipe = load_recipe()
    preset = {"video_legs": [{"max_train_steps": 10}, {"max_train_steps": 20, "fine_tune_into": "video_b"}],
              "video_average": ["video", "video_b"]}  # fmt: skip
    for seed, name in ((1, "video"), (2, "video_b")):
        pipe = tiny_pipeline(0)
        pipe.register_modules(unet=tiny_unet(seed=seed), sg_encoder=tiny_encoder(seed))
        pipe.save_pretrained(tmp_path / name)
        (tmp_path / name / "README.md").write_text(f'# card\n\npipe = from_pretrained("{tmp_path / name}")\n')
    assert recipe.final_video_dir(preset, tmp_path) == tmp_path / "video_average"
    assert recipe.guidance_model(preset, tmp_path) == {"folder": "video_average", "steps": 20}

    assert recipe.average_runs(preset, tmp_path) is True
    load = lambda name: SceneGraphToVideoPipeline.from_pretrained(tmp_path / name, dtype=torch.float32)  # noqa: E731
    a, b, mean = load("video").unet.state_dict(), load("video_b").unet.state_dict(), load("video_average").unet.state_dict()
    assert all(torch.allclose(mean[k], (a[k] + b[k]) / 2) for k in a) and any(not torch.equal(a[k], b[k]) for k in a)
    card = (tmp_path / "video_average" / "README.md").read_text()
    assert f'from_pretrained("{tmp_path / "video_average"}")' in card  # the example loads the average
    assert "## Weight average" in card and "`video`, `video_b`" in card
    assert recipe.average_runs(preset, tmp_path) is False  # done, and newer than its sources
    assert recipe.average_runs({"video_legs": preset["video_legs"]}, tmp_path) is False  # nothing to average


def test_a_guidance_choice_made_before_layout_scales_only_gets_the_layout_scale_added(tmp_path, monkeypatch):
    """A work folder whose guidance stage ran before the recipe chose layout scales keeps its guidance
    and motion choices (their rows are not generated again) and gains only the layout-scale choice."""
    from test_pipeline import moving_pipeline

    recipe = load_recipe()
    preset = {**recipe.PRESETS["smoke"], "video_legs": [{"max_train_steps": 5}], "layout_scales": [1.0, 3.0],
              "extra_validation_seeds": []}  # one validation set, as before sets were recorded  # fmt: skip
    moving_pipeline().save_pretrained(tmp_path / "video")
    row = lambda recall: {"relation_accuracy": 0.5, "object_recall": recall, "shape_accuracy": 1.0,  # noqa: E731
                          "spurious_per_video": 0.0, "num_videos": 2}
    before = {"chosen": 4.0, "model": recipe.guidance_model(preset, tmp_path), "figures": {"1": row(0.1), "4": row(0.5)},
              "motion_scale": 2.0, "motion_figures": {"1": row(0.5), "2": row(0.6)}}  # fmt: skip
    (tmp_path / "guidance.json").write_text(json.dumps(before))
    commands = []

    monkeypatch.setattr(recipe, "run", commands.append)  # the generate commands the stage would run
    monkeypatch.setattr(recipe, "make_split", lambda *a: tmp_path / "validation")
    monkeypatch.setattr(recipe, "write_graphs", lambda *a, **k: tmp_path / "graphs.jsonl")
    monkeypatch.setattr(recipe, "evaluate_folder", lambda folder: row(0.9))
    args = recipe.parse_args(["--work_dir", str(tmp_path), "--preset", "smoke"])
    assert recipe.stage_guidance(args, preset, tmp_path) is True
    after = json.loads((tmp_path / "guidance.json").read_text())
    assert {k: after[k] for k in before} == before  # guidance and motion choices kept as they were
    assert after["layout_figures"] == {"1": row(0.6), "3": row(0.9)} and after["layout_scale"] == 3.0
    [command] = commands  # one generation: the layout scale 3 at guidance 4 and motion scale 2
    assert command[command.index("--guidance-scale") + 1] == "4" and command[command.index("--motion-scale") + 1] == "2"
    assert command[command.index("--layout-scale") + 1] == "3.0"
    assert recipe.stage_guidance(args, preset, tmp_path) is False and len(commands) == 1  # nothing left to choose


def test_a_guidance_choice_made_on_other_validation_sets_is_made_again_on_the_presets(tmp_path, monkeypatch):
    """A choice made on the validation split alone does not stand for a preset that also scores a fresh
    set: every setting is generated on both sets again and chosen by the mean of its two scores."""
    from test_pipeline import moving_pipeline

    recipe = load_recipe()
    preset = {**recipe.PRESETS["smoke"], "video_legs": [{"max_train_steps": 5}], "guidance_scales": [4.0],
              "motion_scales": [1.0], "layout_scales": [1.0, 3.0], "extra_validation_seeds": [7]}  # fmt: skip
    pipe = moving_pipeline()
    pipe.register_to_config(default_layout_scale=2.0, default_motion_scale=1.5)  # as a pipeline saved from an export
    pipe.save_pretrained(tmp_path / "video")
    row = lambda relation: {"relation_accuracy": relation, "object_recall": 1.0, "shape_accuracy": 1.0,  # noqa: E731
                            "spurious_per_video": 0.0, "timed_relation_accuracy": None, "graph_accuracy": relation,
                            "num_videos": 2}  # fmt: skip
    before = {"chosen": 4.0, "model": recipe.guidance_model(preset, tmp_path), "figures": {"4": row(0.5)},
              "layout_scale": 1.0, "layout_figures": {"1": row(0.5), "3": row(0.4)}}  # fmt: skip
    (tmp_path / "guidance.json").write_text(json.dumps(before))
    commands, splits = [], []
    # Layout scale 3 wins on the first set (0.6 against 0.5) and loses by more on the fresh one (0.2 against 0.5).
    figures = {("4", "validation"): row(0.5), ("4_motion1_layout3", "validation"): row(0.6),
               ("4", "validation_seed7"): row(0.5), ("4_motion1_layout3", "validation_seed7"): row(0.2)}  # fmt: skip

    monkeypatch.setattr(recipe, "run", commands.append)  # the generate commands the stage would run
    monkeypatch.setattr(recipe, "make_split", lambda *a, seed=None: splits.append(seed) or tmp_path / f"split{seed}")
    monkeypatch.setattr(recipe, "write_graphs", lambda folder, path, **k: path)
    monkeypatch.setattr(recipe, "evaluate_folder", lambda folder: figures[
        (folder.name, "validation" if folder.parent.name == "guidance" else folder.parent.name)])
    args = recipe.parse_args(["--work_dir", str(tmp_path), "--preset", "smoke"])
    assert recipe.stage_guidance(args, preset, tmp_path) is True
    assert splits == [None, 7]  # the recipe's validation split, and one drawn with seed 7
    after = json.loads((tmp_path / "guidance.json").read_text())
    assert after["validation_sets"] == ["validation", "validation_seed7"]
    assert after["layout_scale"] == 1.0  # by the mean: 0.5 against 0.4
    assert after["layout_figures"]["3"]["relation_accuracy"] == pytest.approx(0.4)
    assert after["layout_figures"]["3"]["sets"] == {"validation": row(0.6), "validation_seed7": row(0.2)}
    graphs = [command[command.index("--scene-graph") + 1] for command in commands]
    flag = lambda command, name: command[command.index(name) + 1]  # noqa: E731
    # "1" is the model as trained, whatever the folder's defaults: its scales are passed outright.
    assert [(flag(c, "--motion-scale"), flag(c, "--layout-scale")) for c in commands] == [("1", "1")] * 2 + [("1", "3.0")] * 2
    assert graphs == [str(tmp_path / "guidance_graphs.jsonl"), str(tmp_path / "guidance_graphs_validation_seed7.jsonl")] * 2
    assert recipe.stage_guidance(args, preset, tmp_path) is False and len(commands) == 4  # chosen on these sets now
    assert "averaged over 2 validation sets (2 graphs of `validation` and 2 graphs of `validation_seed7`)" in (
        recipe.guidance_text(tmp_path))


def test_only_the_shipped_preset_exports_into_the_package_by_default(tmp_path):
    recipe = load_recipe()
    assert recipe.parse_args(["--work_dir", str(tmp_path)]).preset == recipe.SHIPPED_PRESET == "builtin_colour_first"
    assert recipe.parse_args(["--work_dir", str(tmp_path)]).export_dir == recipe.BUILTIN_DIR
    for preset in ("smoke", "builtin_next", "builtin"):  # "builtin": the recipe shipped before
        assert recipe.parse_args(["--work_dir", str(tmp_path), "--preset", preset]).export_dir == tmp_path / "export"
    chosen = tmp_path / "elsewhere"
    assert recipe.parse_args(["--work_dir", str(tmp_path), "--preset", "smoke", "--export_dir", str(chosen)]).export_dir == chosen


def test_the_next_recipe_is_the_shipped_one_with_its_lessons_from_the_start(tmp_path):
    recipe = load_recipe()
    shipped, nxt = recipe.PRESETS["builtin"], recipe.PRESETS["builtin_next"]
    assert nxt["encoder"] == [*shipped["encoder"], "--layout_loss_weight", "1"]
    assert nxt["vae"] == [*shipped["vae"], "--colour_separation_weight", "0.05"]
    assert nxt["unet"] == shipped["unet"] and nxt["video"] == shipped["video"]
    # One run from scratch in three legs, with the layout bias and the moving layout from its first step.
    runs = recipe.video_runs(nxt, tmp_path)
    assert [(leg["max_train_steps"], out.name, source) for leg, out, source, _ in runs] == [
        (12000, "video", None), (24000, "video", None), (36000, "video", None)]  # fmt: skip
    assert all({"--graph_layout_bias", "--graph_layout_motion"} <= set(leg["flags"]) for leg, *_ in runs)
    assert recipe.final_video_dir(nxt, tmp_path) == tmp_path / "video"


def test_the_colour_first_recipe_learns_what_before_where(tmp_path):
    """docs/builtin_model.md, "Two isolating runs": the layout from the first step kept colour out, so
    the first leg has none of it, the layout loss comes next, the bias (new weights) in new runs."""
    recipe = load_recipe()
    shipped, nxt, first = (recipe.PRESETS[name] for name in ("builtin", "builtin_next", "builtin_colour_first"))
    assert first["vae"] == shipped["vae"] and first["encoder"] == nxt["encoder"] and first["unet"] == shipped["unet"]
    runs = recipe.video_runs(first, tmp_path)
    assert [(leg["max_train_steps"], out.name, source and source.name) for leg, out, source, _ in runs] == [
        (6000, "video", None), (8844, "video_layout_loss", "video"), (11844, "video_layout", "video_layout_loss"),
        (14844, "video_layout2", "video_layout"), (17844, "video_layout3", "video_layout2")]  # fmt: skip
    layout = {"--graph_layout_bias", "--graph_layout_motion", "--layout_loss_weight"}
    assert not layout & set(runs[0][0]["flags"])
    assert "--layout_loss_weight" in runs[1][0]["flags"] and "--graph_layout_bias" not in runs[1][0]["flags"]
    assert all(layout <= set(leg["flags"]) and leg.get("fine_tune_into") for leg, *_ in runs[2:])
    # "The colour-first recipe's second leg": weight 1 took the colour out, every layout leg has 0.1,
    # each flag given once (train_video.py would take the last of two).
    for leg, *_ in runs[1:]:
        assert leg["flags"].count("--layout_loss_weight") == 1
        assert recipe.option(leg["flags"], "--layout_loss_weight") == "0.1"
    assert recipe.final_video_dir(first, tmp_path) == tmp_path / "video_layout3"
