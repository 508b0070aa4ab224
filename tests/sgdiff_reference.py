"""SGDiff's published scene-graph encoder, re-written as plainly as possible from
``SGDIFF_REFERENCE.md``: a state dict with SGDiff's key names in, Python loops over graphs and
triples, no scatter. The tests hold :class:`SceneGraphEncoder` against it.
"""

from __future__ import annotations

import torch

from sg2vid_diffusers import SceneGraphBatch, active_triples


def sgdiff_key_shapes(num_objs, num_preds, embedding_dim, hidden_dim, output_dim, num_layers):
    """SGDiff's encoder keys (``sip_vg.pt`` without ``clip_model.*``) and their shapes."""
    E, H, D = embedding_dim, hidden_dim, output_dim
    shapes = {
        "logit_scale": (),
        "obj_embeddings.weight": (num_objs + 1, E),
        "pred_embeddings.weight": (num_preds, E),
    }
    prefixes = ["graph_conv"] + [f"graph_net.gconvs.{i}" for i in range(num_layers - 1)]
    for layer, prefix in enumerate(prefixes):
        din = E if layer == 0 else D
        shapes[f"{prefix}.net1.0.weight"] = (H, 3 * din)
        shapes[f"{prefix}.net1.0.bias"] = (H,)
        shapes[f"{prefix}.net1.2.weight"] = (2 * H + D, H)
        shapes[f"{prefix}.net1.2.bias"] = (2 * H + D,)
        shapes[f"{prefix}.net2.0.weight"] = (H, H)
        shapes[f"{prefix}.net2.0.bias"] = (H,)
        shapes[f"{prefix}.net2.2.weight"] = (D, H)
        shapes[f"{prefix}.net2.2.bias"] = (D,)
    shapes["graph_projection.weight"] = (D, 2 * D)
    shapes["graph_projection.bias"] = (D,)
    return shapes


def random_sgdiff_state_dict(seed=0, **sizes):
    """An SGDiff encoder state dict of the given sizes filled with random numbers."""
    generator = torch.Generator().manual_seed(seed)
    return {
        key: torch.randn(shape, generator=generator) * 0.3 for key, shape in sgdiff_key_shapes(**sizes).items()
    }


def _mlp(state_dict, prefix, x):
    """Linear, ReLU, Linear, ReLU with SGDiff's weights ``{prefix}.{0,2}.{weight,bias}``."""
    for index in (0, 2):
        x = torch.relu(x @ state_dict[f"{prefix}.{index}.weight"].T + state_dict[f"{prefix}.{index}.bias"])
    return x


def _triple_conv(state_dict, prefix, obj_vecs, pred_vecs, triples):
    """sg2im's GraphTripleConv with average pooling, one triple at a time."""
    H = state_dict[f"{prefix}.net1.0.weight"].shape[0]
    D = state_dict[f"{prefix}.net2.2.weight"].shape[0]
    new_obj = [torch.zeros(H, dtype=obj_vecs.dtype) for _ in range(len(obj_vecs))]
    edge_count = [0] * len(obj_vecs)
    new_pred = []
    for t, (s, _, o) in enumerate(triples.tolist()):
        out = _mlp(state_dict, f"{prefix}.net1", torch.cat([obj_vecs[s], pred_vecs[t], obj_vecs[o]]))
        new_s, new_p, new_o = out[:H], out[H : H + D], out[H + D :]
        new_obj[s] = new_obj[s] + new_s
        new_obj[o] = new_obj[o] + new_o
        edge_count[s] += 1
        edge_count[o] += 1
        new_pred.append(new_p)
    pooled = torch.stack([vec / max(count, 1) for vec, count in zip(new_obj, edge_count)])
    new_pred = torch.stack(new_pred) if new_pred else pred_vecs.new_zeros(0, D)
    return _mlp(state_dict, f"{prefix}.net2", pooled), new_pred


def _layer_prefixes(state_dict):
    num_net_layers = len({key.split(".")[2] for key in state_dict if key.startswith("graph_net.gconvs.")})
    return ["graph_conv"] + [f"graph_net.gconvs.{i}" for i in range(num_net_layers)]


def _triple_vectors(state_dict, batch: SceneGraphBatch):
    """(O, D) object vectors and (T, 3D) triple vectors after the graph layers."""
    obj_vecs = state_dict["obj_embeddings.weight"][batch.objs]
    pred_vecs = state_dict["pred_embeddings.weight"][batch.triples[:, 1]]
    for prefix in _layer_prefixes(state_dict):
        obj_vecs, pred_vecs = _triple_conv(state_dict, prefix, obj_vecs, pred_vecs, batch.triples)
    s, o = batch.triples[:, 0], batch.triples[:, 2]
    return obj_vecs, pred_vecs, torch.cat([obj_vecs[s], pred_vecs, obj_vecs[o]], dim=1)


def sgdiff_encode(state_dict, batch: SceneGraphBatch, max_local_triples=15):
    """SGDiff's ``encode_graph_local_global``: local (B, N, 3D) zero-padded triple tokens and
    global (B, D) vectors."""
    obj_vecs, pred_vecs, triple_vecs = _triple_vectors(state_dict, batch)
    B, D = batch.num_graphs, obj_vecs.shape[1]

    globals_ = []
    for i in range(B):  # pool_samples, average
        objs_i = obj_vecs[batch.obj_to_img == i]
        preds_i = pred_vecs[batch.triples_to_img == i]
        obj_mean = objs_i.sum(0) / max(len(objs_i), 1)
        pred_mean = preds_i.sum(0) / max(len(preds_i), 1)
        feature = torch.cat([obj_mean, pred_mean])
        globals_.append(feature @ state_dict["graph_projection.weight"].T + state_dict["graph_projection.bias"])

    local = torch.zeros(B, max_local_triples, 3 * D, dtype=triple_vecs.dtype)
    for i in range(B):  # create_tensor_by_assign_samples_to_img
        samples = triple_vecs[batch.triples_to_img == i][:max_local_triples]
        local[i, : len(samples)] = samples
    return local, torch.stack(globals_)


def frame_tokens(state_dict, batch: SceneGraphBatch, num_frames, max_local_triples=15):
    """Our per-frame tokens, by loops: for each graph and frame, the active triples in batch order,
    first N kept. (B, F, N, 3D) tokens and (B, F, N) mask."""
    _, _, triple_vecs = _triple_vectors(state_dict, batch)
    active = active_triples(batch.triple_spans, num_frames)
    B, N = batch.num_graphs, max_local_triples
    tokens = torch.zeros(B, num_frames, N, triple_vecs.shape[1], dtype=triple_vecs.dtype)
    mask = torch.zeros(B, num_frames, N, dtype=torch.bool)
    for i in range(B):
        for f in range(num_frames):
            samples = triple_vecs[(batch.triples_to_img == i) & active[f]][:N]
            tokens[i, f, : len(samples)] = samples
            mask[i, f, : len(samples)] = True
    return tokens, mask
