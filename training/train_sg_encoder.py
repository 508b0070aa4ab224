#!/usr/bin/env python
"""Masked contrastive pretraining of the scene-graph encoder (SGDiff's ``sgCLIP``, carried to video).

    accelerate launch training/train_sg_encoder.py \\
        --train_data_dir data/sg_shapes/train --validation_data_dir data/sg_shapes/validation \\
        --output_dir sg-encoder --max_train_steps 2000

The objective lives in ``sg2vid_diffusers.pretraining``; this script only feeds it. The output folder
is a ``SceneGraphEncoder.save_pretrained`` folder (vocabulary included) with a model card; the
``checkpoint-N`` folders beside it resume a run (``--resume_from_checkpoint latest``) at the same
step, with the same data order and learning rate. See ``docs/pretraining.md``.
"""

import argparse
import contextlib
import functools
import inspect
import json
import logging
import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import ProjectConfiguration, set_seed
from diffusers.optimization import get_scheduler
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from sg2vid_diffusers import SceneGraphEncoder, Vocabulary
from sg2vid_diffusers.data.corpora import CORPUS_FORMATS, load_corpus
from sg2vid_diffusers.data.sg_shapes import sg_shapes_vocabulary
from sg2vid_diffusers.data.video_folder import SceneGraphVideoFolder
from sg2vid_diffusers.pretraining import (
    HFVisionTower,
    MaskedContrastiveObjective,
    SceneGraphVideoDataset,
    SmallVideoEncoder,
    collate_pretraining_examples,
    retrieval_recall,
)
from sg2vid_diffusers.training_utils import (
    CHECKPOINT_PATTERN,
    EpochBatches,
    add_training_arguments,
    check_training_arguments,
    find_resume_checkpoint,
    push_output_to_hub,
    save_checkpoint,
    StopRequest,
    step_generator,
)
from sg2vid_diffusers.utils import atomic_write_text

logger = get_logger(__name__, log_level="INFO")

DATASET_FORMATS = ("sg_shapes", "metadata_jsonl")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    data = parser.add_argument_group("data")
    data.add_argument("--train_data_dir", required=True, help="A metadata.jsonl folder (e.g. `sg2vid make-dataset`).")
    data.add_argument("--validation_data_dir", default=None, help="A held-out metadata.jsonl folder for retrieval.")
    data.add_argument(
        "--dataset_format",
        default="sg_shapes",
        choices=DATASET_FORMATS + tuple(CORPUS_FORMATS),
        help="sg_shapes: the SG-Shapes vocabulary; metadata_jsonl: the vocabulary of --vocab_file, "
        "or of the folders' graphs; or a public corpus read from its published files (docs/corpora.md: "
        "the corpus's own vocabulary unless --vocab_file).",
    )
    data.add_argument("--vocab_file", default=None, help="vocab.json (sg2im format), for metadata_jsonl or a corpus.")
    data.add_argument("--split", default="train", help="Corpora: the training split.")
    data.add_argument(
        "--validation_split", default=None, help="Corpora: the held-out split (from --validation_data_dir, "
        "default --train_data_dir), e.g. val or test."
    )
    data.add_argument("--num_frames", type=int, default=None, help="Corpora: frames per clip (1 for images, 8 for videos).")
    data.add_argument("--resolution", type=int, default=224, help="Corpora: frames resized to this square size.")
    data.add_argument("--frame_stride", type=int, default=1, help="Keep every n-th frame of each clip.")
    data.add_argument("--dataloader_num_workers", type=int, default=0)

    model = parser.add_argument_group("models")
    model.add_argument(
        "--vision_encoder",
        default="small",
        help="`small` (a trainable SmallVideoEncoder) or a transformers vision model id/path, frozen "
        "(e.g. openai/clip-vit-base-patch32, as SGDiff).",
    )
    model.add_argument(
        "--encoder_config",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="SceneGraphEncoder config, e.g. embedding_dim=128 hidden_dim=128 output_dim=128 num_graph_layers=4. "
        "output_dim defaults to the vision encoder's embedding width.",
    )
    model.add_argument(
        "--video_encoder_config",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="SmallVideoEncoder config, e.g. width=32 num_blocks=1 (embed_dim follows the graph encoder).",
    )

    objective = parser.add_argument_group("objective")
    objective.add_argument("--mask_prob", type=float, default=0.8, help="Probability that an object is masked.")
    objective.add_argument("--contrastive_loss_weight", type=float, default=1.0)
    objective.add_argument("--mask_loss_weight", type=float, default=1.0)
    objective.add_argument(
        "--layout_loss_weight",
        type=float,
        default=0.0,
        help="Add the layout loss (object vectors regressed onto their boxes through a fixed projection; "
        "ours, not SGDiff's) with this weight. Default 0: off.",
    )
    objective.add_argument("--no_masked_branch", action="store_true", help="Contrastive loss only (the ablation).")
    objective.add_argument("--head_num_heads", type=int, default=8, help="Attention heads of the reconstruction head.")

    train = parser.add_argument_group("training")
    add_training_arguments(
        train, output_dir="sg-encoder", train_batch_size=64, learning_rate=5e-4, lr_scheduler="cosine",
        adam_beta2=0.98, adam_epsilon=1e-6,
    )  # fmt: skip
    train.add_argument("--weight_decay", type=float, default=0.2, help="None on biases, norm gains and logit_scale.")
    train.add_argument("--validation_batch_size", type=int, default=32)

    args = parser.parse_args(argv)
    check_training_arguments(parser, args)
    if args.layout_loss_weight < 0:
        parser.error(f"--layout_loss_weight must be >= 0, got {args.layout_loss_weight}")
    args.encoder_config = parse_config(parser, "--encoder_config", args.encoder_config, SceneGraphEncoder)
    args.video_encoder_config = parse_config(
        parser, "--video_encoder_config", args.video_encoder_config, SmallVideoEncoder
    )
    return args


def parse_config(parser, flag, items, model_class):
    """KEY=VALUE strings -> dict, values as JSON where they parse (numbers) and strings otherwise."""
    allowed = set(config_defaults(model_class)) - {"num_objects", "num_predicates"}
    config = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in allowed:
            parser.error(f"{flag}: expected KEY=VALUE with KEY one of {', '.join(sorted(allowed))}; got {item!r}")
        try:
            config[key] = json.loads(value)
        except json.JSONDecodeError:
            config[key] = value
    return config


def config_defaults(model_class) -> dict:
    parameters = inspect.signature(model_class.__init__).parameters
    return {name: p.default for name, p in parameters.items() if p.default is not inspect.Parameter.empty}


# ----------------------------------------------------------------------------- data


def load_vocabulary(args) -> Vocabulary:
    if args.dataset_format == "sg_shapes":
        return sg_shapes_vocabulary()
    if args.vocab_file:
        return Vocabulary.load(args.vocab_file)
    objects, predicates = set(), set()
    for root in filter(None, (args.train_data_dir, args.validation_data_dir)):
        for record in SceneGraphVideoFolder(root, check_files=False):
            objects.update(record.scene_graph.object_names)
            predicates.update(rel.predicate for rel in record.scene_graph.relationships)
    return Vocabulary.from_names(sorted(objects), sorted(predicates))


def load_datasets(args):
    """(vocabulary, training set, validation set or None): metadata.jsonl folders, or a corpus."""
    if args.dataset_format in DATASET_FORMATS:
        vocab = load_vocabulary(args)
        train_set = SceneGraphVideoDataset(args.train_data_dir, vocab, frame_stride=args.frame_stride)
        validation_set = None
        if args.validation_data_dir:
            validation_set = SceneGraphVideoDataset(args.validation_data_dir, vocab, frame_stride=args.frame_stride)
        return vocab, train_set, validation_set

    def corpus(data_dir, split, vocab):
        dataset = load_corpus(
            args.dataset_format, data_dir, split=split, vocab=vocab, num_frames=args.num_frames,
            frame_stride=args.frame_stride, resolution=args.resolution,
        )  # fmt: skip
        logging.getLogger(__name__).info(f"{args.dataset_format} {split}: {len(dataset)} clips; {dataset.report}")
        return dataset

    train_set = corpus(args.train_data_dir, args.split, Vocabulary.load(args.vocab_file) if args.vocab_file else None)
    validation_set = None
    if args.validation_split:
        validation_set = corpus(args.validation_data_dir or args.train_data_dir, args.validation_split, train_set.vocab)
    return train_set.vocab, train_set, validation_set


# ----------------------------------------------------------------------------- validation


@torch.no_grad()
def validate(objective, loader, accelerator) -> dict:
    """Retrieval recall@1/@5 both ways over the whole validation set (main process)."""
    objective.eval()
    graph_embeds, video_embeds = [], []
    for batch in loader:
        with accelerator.autocast():
            g, v = objective.embed(batch.to(accelerator.device))
        graph_embeds.append(g.cpu())
        video_embeds.append(v.cpu())
    objective.train()
    return retrieval_recall(torch.cat(graph_embeds), torch.cat(video_embeds))


def format_recall(metrics) -> str:
    # "graph_to_video_recall@1" -> "graph->video R@1"
    return ", ".join(f"{k.replace('_recall', ' R').replace('_to_', '->')} {v:.3f}" for k, v in metrics.items())


def write_model_card(args, output_dir, info):
    from huggingface_hub import ModelCard, ModelCardData

    card_data = ModelCardData(
        library_name="diffusers", tags=["sg2vid-diffusers", "scene-graph", "scene-graph-encoder", "video"]
    )
    lines = [
        "---",
        card_data.to_yaml(),
        "---",
        "",
        "# Scene-graph encoder, masked contrastive pretraining",
        "",
        "A `SceneGraphEncoder` (sg2vid-diffusers) pretrained with SGDiff's masked contrastive objective on "
        "videos: symmetric InfoNCE between graph and video embeddings"
        + ("" if args.no_masked_branch else ", plus reconstruction of masked object regions from the graph's tokens")
        + ".",
        "",
        "```python",
        "from sg2vid_diffusers import SceneGraphEncoder",
        "",
        f'encoder = SceneGraphEncoder.from_pretrained("{args.hub_model_id or output_dir}")',
        'out = encoder.encode({"objects": [...], "relationships": [...]})',
        "```",
        "",
        "## Training",
        "",
        f"- data: `{args.train_data_dir}` ({args.dataset_format}, {info['num_train_clips']} clips, "
        f"{info['num_frames']} frames each after stride {args.frame_stride})",
        f"- visual tower: `{args.vision_encoder}`"
        + (" (trained with the encoder)" if args.vision_encoder == "small" else " (frozen)"),
        "- masked branch: "
        + ("off (contrastive only)" if args.no_masked_branch else f"on, mask probability {args.mask_prob}")
        + f"; loss weights contrastive {args.contrastive_loss_weight}, masked {args.mask_loss_weight}"
        + (f", layout {args.layout_loss_weight}" if args.layout_loss_weight else ""),
        f"- steps: {info['steps']}, global batch {info['global_batch']}, AdamW lr {args.learning_rate} "
        f"({args.lr_scheduler}, {args.lr_warmup_steps} warm-up steps), weight decay {args.weight_decay}, "
        f"seed {args.seed}",
        f"- encoder config: `{json.dumps(info['encoder_config'])}`",
        "",
        "Command:",
        "",
        "```bash",
        info["command"],
        "```",
        "",
        "## Retrieval on the validation clips",
        "",
    ]
    if info.get("final_metrics"):
        n = info["num_validation_clips"]
        lines += [
            f"`{args.validation_data_dir}`, {n} clips; chance is k / {n} "
            f"({1 / n:.3%} at k = 1, {min(5 / n, 1):.3%} at k = 5).",
            "",
            "| | graph->video R@1 | graph->video R@5 | video->graph R@1 | video->graph R@5 |",
            "| --- | --- | --- | --- | --- |",
        ]
        keys = [f"{direction}_recall@{k}" for direction in ("graph_to_video", "video_to_graph") for k in (1, 5)]
        rows = (("untrained", info["initial_metrics"]), (f"step {info['steps']}", info["final_metrics"]))
        for label, metrics in rows:
            if metrics:
                lines.append(f"| {label} | " + " | ".join(f"{metrics[k]:.3f}" for k in keys) + " |")
    else:
        lines.append("Not measured (no `--validation_data_dir`).")
    ModelCard("\n".join(lines) + "\n").save(str(Path(output_dir) / "README.md"))


# ----------------------------------------------------------------------------- main


def main(args):
    output_dir = Path(args.output_dir)
    # Data first: a bad metadata line fails here, with its line number, before anything starts.
    vocab, train_set, validation_set = load_datasets(args)
    num_frames = len(train_set[0].frames)
    collate = functools.partial(collate_pretraining_examples, vocab=vocab)

    accelerator = Accelerator(
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(
            project_dir=str(output_dir), logging_dir=str(output_dir / args.logging_dir)
        ),
        step_scheduler_with_optimizer=False,  # the loop steps the schedule once per optimizer step
        cpu=args.cpu,
    )
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    logger.info(accelerator.state, main_process_only=False)
    set_seed(args.seed)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        if args.push_to_hub:
            from huggingface_hub import create_repo

            args.hub_model_id = create_repo(
                args.hub_model_id or output_dir.name, exist_ok=True, token=args.hub_token
            ).repo_id

    # Models: the graph encoder's output width follows the tower's embedding width.
    if args.vision_encoder == "small":
        output_dim = args.encoder_config.get("output_dim", config_defaults(SceneGraphEncoder)["output_dim"])
        video_tower = SmallVideoEncoder(
            **{"max_frames": max(num_frames, 2), "embed_dim": output_dim, **args.video_encoder_config}
        )
    else:
        video_tower = HFVisionTower.from_pretrained(args.vision_encoder)
        output_dim = args.encoder_config.get("output_dim", video_tower.global_dim)
    graph_encoder = SceneGraphEncoder.from_vocab(vocab, **{**args.encoder_config, "output_dim": output_dim})
    objective = MaskedContrastiveObjective(
        graph_encoder,
        video_tower,
        mask_prob=args.mask_prob,
        contrastive_weight=args.contrastive_loss_weight,
        mask_loss_weight=args.mask_loss_weight,
        masked_branch=not args.no_masked_branch,
        head_num_heads=args.head_num_heads,
        layout_loss_weight=args.layout_loss_weight,
    )
    optimizer = torch.optim.AdamW(
        objective.param_groups(args.weight_decay),
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        eps=args.adam_epsilon,
    )
    lr_scheduler = get_scheduler(
        args.lr_scheduler, optimizer, num_warmup_steps=args.lr_warmup_steps, num_training_steps=args.max_train_steps
    )
    objective, optimizer, lr_scheduler = accelerator.prepare(objective, optimizer, lr_scheduler)
    unwrapped = accelerator.unwrap_model(objective)

    global_step = 0
    retrieval_log = output_dir / "retrieval.json"  # {"untrained": metrics, "steps": {step: metrics}}
    retrieval = {"untrained": None, "steps": {}}
    if args.resume_from_checkpoint:
        checkpoint = find_resume_checkpoint(args.resume_from_checkpoint, output_dir)
        if checkpoint is None:
            logger.info(f"Checkpoint {args.resume_from_checkpoint!r} not found: starting a new run.")
        else:
            logger.info(f"Resuming from {checkpoint}")
            accelerator.load_state(str(checkpoint))
            global_step = int(CHECKPOINT_PATTERN.match(checkpoint.name).group(1))
            if retrieval_log.exists():
                retrieval = json.loads(retrieval_log.read_text())
                retrieval["steps"] = {k: v for k, v in retrieval["steps"].items() if int(k) <= global_step}
    first_step = global_step

    sampler = EpochBatches(
        len(train_set),
        args.train_batch_size,
        accelerator.num_processes,
        accelerator.process_index,
        args.seed,
        start=global_step * args.gradient_accumulation_steps,
    )
    micro_batches = iter(
        DataLoader(train_set, batch_sampler=sampler, collate_fn=collate, num_workers=args.dataloader_num_workers)
    )
    validation_loader = None  # validation runs on the main process; the others wait for it
    if validation_set is not None and accelerator.is_main_process:
        validation_loader = DataLoader(
            validation_set,
            batch_size=args.validation_batch_size,
            collate_fn=collate,
            num_workers=args.dataloader_num_workers,
        )

    if accelerator.is_main_process:
        tracker_config = {k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in vars(args).items()}
        accelerator.init_trackers("train_sg_encoder", config={k: v for k, v in tracker_config.items() if v is not None})
    global_batch = args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    logger.info(
        f"{len(train_set)} clips of {num_frames} frames, {sampler.batches_per_epoch} global batches per epoch; "
        f"{accelerator.num_processes} processes x {args.train_batch_size} clips x "
        f"{args.gradient_accumulation_steps} accumulation = {global_batch} clips per step; "
        f"steps {global_step} -> {args.max_train_steps}"
    )

    def run_validation(step):
        if accelerator.is_main_process:
            metrics = validate(unwrapped, validation_loader, accelerator)
            logger.info(f"validation, {f'step {step}' if step else 'untrained'}: {format_recall(metrics)}")
            accelerator.log({f"validation/{k}": v for k, v in metrics.items()}, step=step)
            if step:
                retrieval["steps"][str(step)] = metrics
            else:
                retrieval["untrained"] = metrics
            atomic_write_text(retrieval_log, json.dumps(retrieval, indent=2) + "\n")
        accelerator.wait_for_everyone()

    if validation_set is not None and global_step == 0:
        run_validation(0)

    progress = tqdm(
        range(args.max_train_steps), initial=global_step, desc="steps", disable=not accelerator.is_local_main_process
    )
    objective.train()
    stopping = False
    with StopRequest() as stop:  # SIGTERM, Ctrl-C: a checkpoint of the step in progress, then exit
        for step in range(global_step, args.max_train_steps):
            totals = {"loss": 0.0, "contrastive_loss": 0.0, "mask_loss": 0.0, "layout_loss": 0.0}
            for micro in range(args.gradient_accumulation_steps):
                micro_batch = step * args.gradient_accumulation_steps + micro
                batch = next(micro_batches).to(accelerator.device)
                generator = step_generator(args.seed, micro_batch, accelerator.process_index)  # the masked objects
                last = micro == args.gradient_accumulation_steps - 1
                with contextlib.nullcontext() if last else accelerator.no_sync(objective):
                    out = objective(batch, generator=generator)
                    accelerator.backward(out.loss / args.gradient_accumulation_steps)
                for key in totals:
                    totals[key] += getattr(out, key).item() / args.gradient_accumulation_steps
            if args.max_grad_norm > 0:
                accelerator.clip_grad_norm_(objective.parameters(), args.max_grad_norm)
            lr = lr_scheduler.get_last_lr()[0]  # the rate this step uses
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            unwrapped.clamp_logit_scale()
            global_step = step + 1

            if step == first_step or global_step == args.max_train_steps:
                logger.info(
                    f"step {global_step}: contrastive loss over {out.num_logit_columns} clips "
                    f"({accelerator.num_processes} processes x {args.train_batch_size})"
                )
            logs = {
                **totals,
                "lr": lr,
                "logit_scale": unwrapped.graph_encoder.logit_scale.exp().item(),
                "epoch": micro_batch // sampler.batches_per_epoch,
            }
            progress.update(1)
            progress.set_postfix(loss=f"{totals['loss']:.4f}", lr=f"{lr:.2e}")
            accelerator.log(logs, step=global_step)

            last_step = global_step == args.max_train_steps
            stopping = stop.should_stop(accelerator) and not last_step
            if global_step % args.checkpointing_steps == 0 or stopping:
                save_checkpoint(accelerator, output_dir, global_step, args.checkpoints_total_limit)
            if stopping:
                break
            if validation_set is not None and (global_step % args.validation_steps == 0 or last_step):
                run_validation(global_step)
    progress.close()
    if stopping:
        stop.exit(accelerator, global_step, args.max_train_steps)

    if accelerator.is_main_process:
        graph_encoder = unwrapped.graph_encoder
        graph_encoder.save_pretrained(output_dir)
        if isinstance(unwrapped.video_tower, SmallVideoEncoder):
            unwrapped.video_tower.save_pretrained(output_dir / "video_encoder")
        info = {
            "num_train_clips": len(train_set),
            "num_frames": num_frames,
            "steps": global_step,
            "global_batch": global_batch,
            "encoder_config": {k: v for k, v in graph_encoder.config.items() if not k.startswith("_")},
            "command": " ".join(["accelerate launch", *sys.argv]),
            "initial_metrics": retrieval["untrained"],
            "final_metrics": retrieval["steps"].get(str(global_step)),
            "num_validation_clips": len(validation_set) if validation_set is not None else 0,
        }
        write_model_card(args, output_dir, info)
        logger.info(f"Saved the encoder to {output_dir}")
        if args.push_to_hub:
            push_output_to_hub(output_dir, args.hub_model_id, args.hub_token, args.logging_dir)
    accelerator.end_training()


if __name__ == "__main__":
    main(parse_args())
