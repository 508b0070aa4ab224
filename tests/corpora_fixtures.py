"""Tiny corpora in each corpus's published file format, written at test time (no binary fixture is
committed): Visual Genome (sg2im h5 + vocab.json + JPEGs), COCO-Stuff (instances/stuff JSON +
JPEGs), Action Genome (the two pickles, the class lists, PNG keyframes), VidVRD and VidOR (JSON +
mp4). Each writer returns what the tests check against.

The layouts follow the published ones to the field, quirks included: -1 padding and ``x, y, w, h``
pixel boxes in the h5; ``bbox`` ``None`` for invisible Action Genome objects, person boxes as
``x0, y0, x1, y1`` arrays, txt class lists spelled without separators; VidVRD relations split into
touching / overlapping segments with exclusive ``end_fid``.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
from PIL import Image

from sg2vid_diffusers.video_io import write_video

# ----------------------------------------------------------------------------- images and videos


def solid_image(path: Path, width: int, height: int, value: int, fmt: str) -> None:
    """An image whose every pixel is ``(value, 255 - value, 128)``, so a test can tell frames apart."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.empty((height, width, 3), dtype=np.uint8)
    pixels[...] = (value, 255 - value, 128)
    Image.fromarray(pixels).save(path, format=fmt)


def frame_value(fid: int) -> int:
    """The red level of frame ``fid`` of a fixture video."""
    return 10 + 20 * fid


def counting_video(path: Path, num_frames: int, width: int = 32, height: int = 24) -> None:
    """A lossless mp4 whose frame f is filled with red level :func:`frame_value` (f)."""
    frames = np.zeros((num_frames, height, width, 3), dtype=np.uint8)
    for f in range(num_frames):
        frames[f] = (frame_value(f), 0, 0)
    write_video(path, frames, fps=10, lossless=True)


# ----------------------------------------------------------------------------- Visual Genome

VG_OBJECTS = ["__image__", "man", "horse", "tree", "shirt", "grass"]
VG_PREDICATES = ["__in_image__", "riding", "wearing", "near", "in front of"]
VG_MAX_OBJECTS = 30  # sg2im's --max_objects_per_image / --max_relationships_per_image
VG_MAX_RELATIONSHIPS = 30

# (image_id, image path, width, height, objects [(name, x, y, w, h)], relationships [(s, pred, o)])
VG_IMAGES = [
    (11, "VG_100K/11.jpg", 64, 48,
     [("man", 8, 4, 16, 32), ("horse", 20, 20, 40, 24), ("shirt", 10, 8, 12, 10), ("tree", 50, 0, 14, 30)],
     [(0, "riding", 1), (0, "wearing", 2)]),
    (12, "VG_100K_2/12.jpg", 40, 40,
     [("tree", 0, 0, 20, 40), ("grass", 0, 30, 40, 10), ("man", 22, 5, 10, 30)],
     [(2, "near", 0), (0, "in front of", 1), (2, "near", 0)]),
]  # fmt: skip


def vg_vocab_json() -> dict:
    """``vocab.json`` as sg2im's preprocess_vg.py writes it (attribute tables included)."""
    return {
        "object_name_to_idx": {name: i for i, name in enumerate(VG_OBJECTS)},
        "object_idx_to_name": VG_OBJECTS,
        "attribute_name_to_idx": {"white": 0, "green": 1},
        "attribute_idx_to_name": ["white", "green"],
        "pred_name_to_idx": {name: i for i, name in enumerate(VG_PREDICATES)},
        "pred_idx_to_name": VG_PREDICATES,
    }


def vg_arrays(images=VG_IMAGES) -> dict[str, np.ndarray]:
    """The split arrays of sg2im's encode_graphs: int32, padded with -1."""
    rows = {k: [] for k in ("image_ids", "object_ids", "object_names", "object_boxes", "objects_per_image",
                            "relationship_ids", "relationship_subjects", "relationship_predicates",
                            "relationship_objects", "relationships_per_image", "attributes_per_object",
                            "object_attributes")}  # fmt: skip
    object_id = relationship_id = 1000
    for image_id, _, _, _, objects, relationships in images:
        pad_o = VG_MAX_OBJECTS - len(objects)
        pad_r = VG_MAX_RELATIONSHIPS - len(relationships)
        rows["image_ids"].append(image_id)
        rows["object_ids"].append([object_id + k for k in range(len(objects))] + [-1] * pad_o)
        object_id += len(objects)
        rows["object_names"].append([VG_OBJECTS.index(o[0]) for o in objects] + [-1] * pad_o)
        rows["object_boxes"].append([list(o[1:]) for o in objects] + [[-1, -1, -1, -1]] * pad_o)
        rows["objects_per_image"].append(len(objects))
        rows["attributes_per_object"].append([0] * len(objects) + [-1] * pad_o)
        rows["relationship_ids"].append([relationship_id + k for k in range(len(relationships))] + [-1] * pad_r)
        relationship_id += len(relationships)
        rows["relationship_subjects"].append([r[0] for r in relationships] + [-1] * pad_r)
        rows["relationship_predicates"].append([VG_PREDICATES.index(r[1]) for r in relationships] + [-1] * pad_r)
        rows["relationship_objects"].append([r[2] for r in relationships] + [-1] * pad_r)
        rows["relationships_per_image"].append(len(relationships))
    rows["object_attributes"] = [[-1] * 30 for _ in range(len(images) * VG_MAX_OBJECTS)]
    return {k: np.asarray(v).astype(np.int32) for k, v in rows.items()}


def write_vg_h5(path: Path, arrays: dict[str, np.ndarray], image_paths: list[str]) -> None:
    import h5py

    with h5py.File(path, "w") as f:
        for name, array in arrays.items():
            f.create_dataset(name, data=array)
        paths = f.create_dataset("image_paths", (len(image_paths),), dtype=h5py.special_dtype(vlen=str))
        for i, p in enumerate(image_paths):
            paths[i] = p


def write_visual_genome(root: Path) -> Path:
    """``root/{train,val}.h5``, ``vocab.json``, ``images/VG_100K*/ID.jpg``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "vocab.json").write_text(json.dumps(vg_vocab_json()))
    for k, (_, image_path, width, height, _, _) in enumerate(VG_IMAGES):
        solid_image(root / "images" / image_path, width, height, 40 + 80 * k, "JPEG")
    write_vg_h5(root / "train.h5", vg_arrays(), [image[1] for image in VG_IMAGES])
    write_vg_h5(root / "val.h5", vg_arrays(VG_IMAGES[1:]), [VG_IMAGES[1][1]])
    return root


# ----------------------------------------------------------------------------- COCO-Stuff

COCO_THINGS = [(1, "person", "person"), (2, "bicycle", "vehicle"), (18, "dog", "animal")]
COCO_STUFF = [(124, "grass", "plant"), (157, "sky-other", "sky"), (169, "tree", "plant"), (183, "other", "other")]

# image id -> (file name, width, height)
COCO_IMAGES = {
    9: ("000000000009.jpg", 80, 60),
    25: ("000000000025.jpg", 64, 64),
    30: ("000000000030.jpg", 50, 40),
    42: ("000000000042.jpg", 60, 40),
}
# (image id, category id, bbox x, y, w, h); the stuff file's entries carry RLE masks
COCO_INSTANCES = [
    (9, 1, (10.5, 8.0, 20.0, 40.0)),
    (9, 18, (40.0, 30.0, 30.0, 20.0)),
    (9, 2, (0.0, 0.0, 4.0, 4.0)),  # 16 / 4800 of the image: under min_object_size, dropped
    (25, 1, (5.0, 5.0, 30.0, 50.0)),
    (30, 18, (1.0, 1.0, 30.0, 30.0)),
    (42, 18, (5.0, 5.0, 30.0, 20.0)),
]
COCO_STUFF_ANNOTATIONS = [
    (9, 157, (0.0, 0.0, 80.0, 25.0)),
    (9, 124, (0.0, 40.0, 80.0, 20.0)),
    (9, 183, (60.0, 0.0, 20.0, 60.0)),  # "other": dropped unless include_other
    (25, 169, (30.0, 0.0, 34.0, 64.0)),
    (25, 157, (0.0, 0.0, 64.0, 20.0)),
    (42, 124, (0.0, 30.0, 60.0, 10.0)),  # image 42 keeps 2 objects: fewer than 3, dropped
    # image 30 is in no stuff annotation: dropped by stuff_only
]


def _coco_file(categories, annotations, with_rle: bool) -> dict:
    images = [
        {"license": 1, "file_name": name, "coco_url": f"http://images.cocodataset.org/train2017/{name}",
         "height": height, "width": width, "date_captured": "2013-11-14 11:18:45",
         "flickr_url": "http://farm.staticflickr.com/x.jpg", "id": image_id}
        for image_id, (name, width, height) in COCO_IMAGES.items()
    ]  # fmt: skip
    anns = []
    for k, (image_id, category_id, (x, y, w, h)) in enumerate(annotations):
        if with_rle:
            _, width, height = COCO_IMAGES[image_id]
            segmentation = {"counts": "fixture", "size": [height, width]}
        else:
            segmentation = [[x, y, x + w, y, x + w, y + h, x, y + h]]
        anns.append({"segmentation": segmentation, "area": w * h, "iscrowd": 0, "image_id": image_id,
                     "bbox": [x, y, w, h], "category_id": category_id, "id": 900 + k})  # fmt: skip
    return {
        "info": {"description": "fixture", "version": "1.0", "year": 2017},
        "licenses": [{"url": "http://creativecommons.org/licenses/by-nc-sa/2.0/", "id": 1, "name": "by-nc-sa"}],
        "images": images,
        "annotations": anns,
        "categories": [{"supercategory": sup, "id": cid, "name": name} for cid, name, sup in categories],
    }


def write_coco_stuff(root: Path, instances=COCO_INSTANCES, stuff=COCO_STUFF_ANNOTATIONS) -> Path:
    """``root/annotations/{instances,stuff}_train2017.json`` and ``root/images/train2017/*.jpg``."""
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / "instances_train2017.json").write_text(
        json.dumps(_coco_file(COCO_THINGS, instances, False))
    )
    (root / "annotations" / "stuff_train2017.json").write_text(json.dumps(_coco_file(COCO_STUFF, stuff, True)))
    for k, (name, width, height) in enumerate(COCO_IMAGES.values()):
        solid_image(root / "images" / "train2017" / name, width, height, 30 + 60 * k, "JPEG")
    return root


# ----------------------------------------------------------------------------- Action Genome

# object_classes.txt and relationship_classes.txt as published: no separators in some names.
AG_OBJECT_CLASSES_TXT = [
    "person", "bag", "bed", "blanket", "book", "box", "broom", "chair", "closetcabinet", "clothes",
    "cupglassbottle", "dish", "door", "doorknob", "doorway", "floor", "food", "groceries", "laptop",
    "light", "medicine", "mirror", "papernotebook", "phonecamera", "picture", "pillow", "refrigerator",
    "sandwich", "shelf", "shoe", "sofacouch", "table", "television", "towel", "vacuum", "window",
]  # fmt: skip
AG_RELATIONSHIP_CLASSES_TXT = [
    "lookingat", "notlookingat", "unsure", "above", "beneath", "infrontof", "behind", "onthesideof", "in",
    "carrying", "coveredby", "drinkingfrom", "eating", "haveitontheback", "holding", "leaningon", "lyingon",
    "notcontacting", "otherrelationship", "sittingon", "standingon", "touching", "twisting", "wearing",
    "wipingoff", "writingon",
]  # fmt: skip
AG_FRAME_SIZE = (48, 36)  # width, height (the real frames are 480p)


def ag_object(cls, bbox, attention, spatial, contacting, visible, video, frame, split):
    return {
        "class": cls,
        "bbox": bbox,
        "attention_relationship": attention,
        "spatial_relationship": spatial,
        "contacting_relationship": contacting,
        "metadata": {"tag": f"{video}/{cls}/{frame}", "set": split},
        "visible": visible,
    }


def ag_person(boxes, scores=None):
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    return {
        "bbox": boxes,
        "bbox_score": np.asarray(scores if scores is not None else [0.99] * len(boxes), dtype=np.float32),
        "bbox_size": AG_FRAME_SIZE,
        "bbox_mode": "xyxy",
        "keypoints": np.zeros((len(boxes), 17, 3), dtype=np.float32),
        "keypoints_logits": np.zeros((len(boxes), 17), dtype=np.float32),
    }


def action_genome_annotations() -> tuple[dict, dict]:
    """``(object_bbox_and_relationship, person_bbox)`` of three videos: 50N4E.mp4 (train, 4
    keyframes), 0A8CF.mp4 (train, 2 keyframes), 7QX2M.mp4 (test, 3 keyframes)."""
    objects, persons = {}, {}
    v = "50N4E.mp4"
    frames = ["000012", "000045", "000078", "000110"]
    for k, frame in enumerate(frames):
        key = f"{v}/{frame}.png"
        persons[key] = ag_person([[4.0, 2.0, 20.0, 34.0]] if k != 2 else np.zeros((0, 4)))
        entries = [
            ag_object("table", (24.0, 18.0, 20.0, 12.0), ["looking_at"] if k < 2 else ["not_looking_at"],
                      ["in_front_of"], ["not_contacting"], True, v, frame, "train"),
        ]  # fmt: skip
        if k in (0, 1):
            entries.append(ag_object("cup/glass/bottle", (14.0, 10.0, 6.0, 8.0), ["unsure"], ["in_front_of"],
                                     ["holding", "touching"], True, v, frame, "train"))  # fmt: skip
        if k == 2:  # out of view: AG gives no box and no relations
            entries.append(ag_object("cup/glass/bottle", None, None, None, None, False, v, frame, "train"))
        if k == 3:
            entries.append(ag_object("unicorn", (1.0, 1.0, 5.0, 5.0), ["looking_at"], ["beneath"], ["touching"],
                                     True, v, frame, "train"))  # fmt: skip
        objects[key] = entries
    v = "0A8CF.mp4"
    for frame in ("000003", "000020"):
        key = f"{v}/{frame}.png"
        persons[key] = ag_person([[1.0, 1.0, 10.0, 30.0], [2.0, 2.0, 40.0, 34.0]], scores=[0.4, 0.95])
        objects[key] = [ag_object("sofa/couch", (0.0, 20.0, 48.0, 16.0), ["unsure"], ["beneath"], ["sitting_on"],
                                  True, v, frame, "train")]  # fmt: skip
    v = "7QX2M.mp4"
    for frame in ("000001", "000031", "000061"):
        key = f"{v}/{frame}.png"
        persons[key] = ag_person([[10.0, 5.0, 30.0, 35.0]])
        objects[key] = [ag_object("laptop", (20.0, 20.0, 10.0, 6.0), ["looking_at"], ["in_front_of"],
                                  ["holding"], True, v, frame, "test")]  # fmt: skip
    return objects, persons


def write_action_genome(root: Path, protocol: int = 4) -> Path:
    """``root/annotations/`` (the two pickles, class lists, frame_list.txt) and ``root/frames/``."""
    annotations = root / "annotations"
    annotations.mkdir(parents=True, exist_ok=True)
    objects, persons = action_genome_annotations()
    with open(annotations / "object_bbox_and_relationship.pkl", "wb") as f:
        pickle.dump(objects, f, protocol=protocol)
    with open(annotations / "person_bbox.pkl", "wb") as f:
        pickle.dump(persons, f, protocol=protocol)
    (annotations / "object_classes.txt").write_text("\n".join(AG_OBJECT_CLASSES_TXT) + "\n")
    (annotations / "relationship_classes.txt").write_text("\n".join(AG_RELATIONSHIP_CLASSES_TXT) + "\n")
    (annotations / "frame_list.txt").write_text("\n".join(objects) + "\n")
    for key in objects:
        solid_image(root / "frames" / key, *AG_FRAME_SIZE, int(key[-7:-4]) % 256, "PNG")
    return root


# ----------------------------------------------------------------------------- VidVRD / VidOR

VIDEO_FRAMES = 12
VIDEO_SIZE = (32, 24)  # width, height


def _box(tid: int, xmin: int, ymin: int, xmax: int, ymax: int, generated: int = 0) -> dict:
    return {"tid": tid, "bbox": {"xmin": xmin, "ymin": ymin, "xmax": xmax, "ymax": ymax}, "generated": generated}


def video_relation_annotation(video_id: str) -> dict:
    """A VidVRD annotation of a 12-frame video: a dog (tid 0, moving right, absent in frame 9, whose
    box list is empty), a ball (tid 2: tids need not be contiguous; frames 0-8 but 5) and a frisbee
    (tid 3, frames 10-11)."""
    width, height = VIDEO_SIZE
    trajectories = []
    for fid in range(VIDEO_FRAMES):
        frame = []
        if fid != 9:
            frame.append(_box(0, fid, 2, fid + 10, 12))
        if fid < 9 and fid != 5:
            frame.append(_box(2, 20, 10, 26, 16, generated=1))
        if fid >= 10:
            frame.append(_box(3, 0, 0, 4, 4))
        trajectories.append(frame)
    return {
        "video_id": video_id,
        "frame_count": VIDEO_FRAMES,
        "fps": 29.97,
        "width": width,
        "height": height,
        "subject/objects": [
            {"tid": 0, "category": "dog"},
            {"tid": 2, "category": "ball"},
            {"tid": 3, "category": "frisbee"},
        ],
        "trajectories": trajectories,
        "relation_instances": [
            # one relation annotated in segments: [0, 4) and [4, 8) touch, [6, 9) overlaps: [0, 9)
            {"subject_tid": 0, "predicate": "chase", "object_tid": 2, "begin_fid": 0, "end_fid": 4},
            {"subject_tid": 0, "predicate": "chase", "object_tid": 2, "begin_fid": 4, "end_fid": 8},
            {"subject_tid": 0, "predicate": "chase", "object_tid": 2, "begin_fid": 6, "end_fid": 9},
            # the same triple twice with a gap: two instances stay
            {"subject_tid": 2, "predicate": "in_front_of", "object_tid": 0, "begin_fid": 2, "end_fid": 5},
            {"subject_tid": 2, "predicate": "in_front_of", "object_tid": 0, "begin_fid": 7, "end_fid": 9},
            {"subject_tid": 0, "predicate": "bite", "object_tid": 3, "begin_fid": 10, "end_fid": 12},
        ],
    }


def write_vidvrd(root: Path) -> Path:
    """``root/{train,test}/ID.json`` and ``root/videos/ID.mp4``."""
    for split, video_id in (("train", "ILSVRC2015_train_00005003"), ("test", "ILSVRC2015_val_00010001")):
        (root / split).mkdir(parents=True, exist_ok=True)
        (root / split / f"{video_id}.json").write_text(json.dumps(video_relation_annotation(video_id)))
        counting_video(root / "videos" / f"{video_id}.mp4", VIDEO_FRAMES, *VIDEO_SIZE)
    return root


def write_vidor(root: Path) -> Path:
    """``root/annotation/{training,validation}/GROUP/ID.json`` and ``root/video/GROUP/ID.mp4``."""
    for split, group, video_id in (("training", "0000", "2401075277"), ("validation", "1009", "4164158586")):
        data = video_relation_annotation(video_id)
        data.update(version="VERSION 1.0", video_hash="a1b2c3d4", video_path=f"{group}/{video_id}.mp4", tags=[])
        folder = root / "annotation" / split / group
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{video_id}.json").write_text(json.dumps(data))
        counting_video(root / "video" / group / f"{video_id}.mp4", VIDEO_FRAMES, *VIDEO_SIZE)
    return root
