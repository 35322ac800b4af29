"""Tests for models/losses.py: references written by hand, the library, a collapse demo, DDP equivalence.

    .venv/bin/python -m pytest -q tests/test_losses.py
"""
import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F

from models.losses import ClipLoss, CosineLoss, build_loss, gather_features, gather_ids


def _features(n=8, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)


# ----------------------------------------------------------------------------- ClipLoss vs references
def test_clip_loss_matches_reference_without_ids():
    img, txt = _features()
    scale = 14.3
    logits = scale * F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).T
    labels = torch.arange(len(img))
    expected = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    assert torch.allclose(ClipLoss()(img, txt, torch.tensor(scale)), expected, atol=1e-6)
    # all-distinct ids are the same as no ids
    assert torch.allclose(ClipLoss()(img, txt, scale, ids=torch.arange(len(img))), expected, atol=1e-6)


def _multi_positive_reference(img, txt, scale, ids):
    """Explicit loops: each row's loss is -mean over its positives of log softmax, both directions."""
    img, txt = F.normalize(img, dim=-1), F.normalize(txt, dim=-1)
    n = len(ids)
    total = 0.0
    for queries, keys in ((img, txt), (txt, img)):
        for i in range(n):
            logits = [scale * float(queries[i] @ keys[j]) for j in range(n)]
            log_z = math.log(sum(math.exp(v) for v in logits))
            positives = [j for j in range(n) if ids[j] == ids[i]]
            total += -sum(logits[j] - log_z for j in positives) / len(positives) / n
    return total / 2


def test_clip_loss_multi_positive_matches_loops():
    img, txt = _features(n=7, seed=1)
    ids = torch.tensor([3, 1, 3, 0, 5, 1, 3])  # a triple and a pair of the same model
    got = ClipLoss()(img, txt, 10.0, ids=ids)
    assert abs(got.item() - _multi_positive_reference(img, txt, 10.0, ids.tolist())) < 1e-5


def test_clip_loss_does_not_push_duplicates_apart():
    """Rows 0 and 1 are two samples of one model. Compare two perfect-retrieval layouts (img == txt,
    one-hot embeddings): duplicates together (both on e0) or pushed apart (e0 and e1).

    The naive diagonal loss prefers them apart; the multi-positive loss prefers them together.
    (With identical duplicates both losses are equal: -mean(log p0, log p1) = -log p0 when p0 == p1,
    so the difference shows in which layout each loss favours, not in the value at one point.)
    """
    eye = torch.eye(4)
    together, apart = eye[[0, 0, 2, 3]], eye[[0, 1, 2, 3]]
    ids = torch.tensor([0, 0, 1, 2])
    loss = ClipLoss()
    assert loss(apart, apart, 10.0) < loss(together, together, 10.0) - 0.3  # naive: pushes duplicates apart
    assert loss(together, together, 10.0, ids=ids) < loss(apart, apart, 10.0, ids=ids) - 2.0
    assert torch.allclose(loss(together, together, 10.0, ids=ids), loss(together, together, 10.0))
    for layout in (together, apart):
        ref = _multi_positive_reference(layout, layout, 10.0, ids.tolist())
        assert abs(loss(layout, layout, 10.0, ids=ids).item() - ref) < 1e-5


def test_clip_loss_clamps_scale_at_100():
    img, txt = _features()
    assert torch.allclose(ClipLoss()(img, txt, 1000.0), ClipLoss()(img, txt, 100.0))


def test_bad_inputs_raise():
    img, txt = _features()
    with pytest.raises(ValueError, match="same shape"):
        ClipLoss()(img, txt[:5], 10.0)
    with pytest.raises(ValueError, match="one id per row"):
        ClipLoss()(img, txt, 10.0, ids=torch.arange(3))
    with pytest.raises(ValueError, match="integer"):
        CosineLoss()(img, txt, ids=torch.zeros(len(img)))
    with pytest.raises(ValueError, match="clip, cosine, cosine_no_negatives"):
        build_loss("infonce")
    assert isinstance(build_loss(), ClipLoss)
    assert build_loss("cosine", margin=0.3).margin == 0.3
    assert build_loss("cosine_no_negatives").negatives is False


# ----------------------------------------------------------------------------- CosineLoss vs the library
@pytest.mark.parametrize("margin", [0.0, 0.2, 0.5])
@pytest.mark.parametrize("with_ids", [False, True])
def test_cosine_loss_matches_library_pair_by_pair(margin, with_ids):
    img, txt = _features(n=6, seed=3)
    ids = torch.tensor([0, 1, 0, 2, 3, 1]) if with_ids else torch.arange(6)
    library = nn.CosineEmbeddingLoss(margin=margin)
    pos, neg = [], []
    for i in range(6):
        for j in range(6):
            same = bool(ids[i] == ids[j])
            target = torch.tensor([1.0 if same else -1.0])
            (pos if same else neg).append(library(img[i : i + 1], txt[j : j + 1], target))
    expected_pos = torch.stack(pos).mean()
    expected = expected_pos + torch.stack(neg).mean()
    kw = {"ids": ids} if with_ids else {}
    assert torch.allclose(CosineLoss(margin)(img, txt, **kw), expected, atol=1e-6)
    assert torch.allclose(CosineLoss(margin, negatives=False)(img, txt, **kw), expected_pos, atol=1e-6)


# ----------------------------------------------------------------------------- the naive recipe's collapse
def _train_projections(loss_name, classes=64, dim_in=32, dim_out=16, steps=400, seed=0):
    """Two linear 'encoders' on synthetic pairs: class prototype (separate per modality) + noise.

    Returns (spread, text2image_R@1) on fresh samples; spread = mean pairwise cosine distance of the
    normalised image embeddings (about 1 for spread-out embeddings, 0 when all collapse to one point).
    """
    g = torch.Generator().manual_seed(seed)
    proto_img, proto_txt = torch.randn(classes, dim_in, generator=g), torch.randn(classes, dim_in, generator=g)

    def sample():
        return (proto_img + 0.5 * torch.randn(classes, dim_in, generator=g),
                proto_txt + 0.5 * torch.randn(classes, dim_in, generator=g))

    torch.manual_seed(seed)
    enc_img, enc_txt = nn.Linear(dim_in, dim_out), nn.Linear(dim_in, dim_out)
    opt = torch.optim.Adam([*enc_img.parameters(), *enc_txt.parameters()], lr=1e-2)
    loss_fn = build_loss(loss_name)
    for _ in range(steps):
        x_img, x_txt = sample()
        loss = loss_fn(enc_img(x_img), enc_txt(x_txt), torch.tensor(10.0))
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        x_img, x_txt = sample()
        e_img, e_txt = F.normalize(enc_img(x_img), dim=-1), F.normalize(enc_txt(x_txt), dim=-1)
        off_diagonal = ~torch.eye(classes, dtype=torch.bool)
        spread = (1 - e_img @ e_img.T)[off_diagonal].mean().item()
        r1 = ((e_txt @ e_img.T).argmax(dim=1) == torch.arange(classes)).float().mean().item()
    return spread, r1


def test_cosine_without_negatives_collapses_and_clip_does_not():
    chance = 1 / 64
    spread, r1 = _train_projections("cosine_no_negatives")
    assert spread < 1e-3, f"expected collapse, spread {spread:.3g}"
    assert r1 < 0.1, f"collapsed embeddings should retrieve at about chance ({chance:.3f}), got R@1 {r1:.3f}"

    spread, r1 = _train_projections("clip")
    assert spread > 0.5, f"clip embeddings should stay spread, got {spread:.3g}"
    assert r1 > 0.5, f"clip should retrieve far above chance ({chance:.3f}), got R@1 {r1:.3f}"


# ----------------------------------------------------------------------------- DDP equivalence
# Fixed global batch: rows 0..3 on rank 0 and 4..7 on rank 1 (or 0..4 / 5..7 for the unequal split).
# ids: a duplicate inside rank 0 (rows 2, 3) and two across ranks (0/4, 1/6).
GLOBAL_IDS = torch.tensor([0, 1, 2, 2, 0, 3, 1, 4])
CASES = [  # (name, loss, use ids, rows on rank 0)
    ("clip", "clip", False, 4),
    ("clip_ids", "clip", True, 4),
    ("cosine_ids", "cosine", True, 4),
    ("clip_ids_unequal", "clip", True, 5),
]


def _ddp_model_and_data():
    """Identical on every process: two small projections, a learnable logit scale, a global batch."""
    torch.manual_seed(0)
    model = nn.ModuleDict({"img": nn.Linear(6, 5), "txt": nn.Linear(6, 5)})
    model.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
    g = torch.Generator().manual_seed(1)
    return model, torch.randn(8, 6, generator=g), torch.randn(8, 6, generator=g)


def _loss_and_grads(loss_name, use_ids, rows):
    """Loss on `rows` of the global batch (gathering if distributed) and the parameter gradients."""
    model, x_img, x_txt = _ddp_model_and_data()
    ids = GLOBAL_IDS[rows] if use_ids else None
    loss = build_loss(loss_name)(model.img(x_img[rows]), model.txt(x_txt[rows]), model.logit_scale.exp(), ids)
    loss.backward()
    # the cosine loss ignores logit_scale: its gradient is None, compare it as zeros
    return loss.detach(), {k: torch.zeros_like(p) if p.grad is None else p.grad.clone()
                           for k, p in model.named_parameters()}


def _ddp_worker(rank, world_size, store_path, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=world_size)
    try:
        results = {}
        for name, loss_name, use_ids, split in CASES:
            rows = slice(0, split) if rank == 0 else slice(split, 8)
            loss, grads = _loss_and_grads(loss_name, use_ids, rows)
            for grad in grads.values():  # what DDP does: average the gradients over ranks
                dist.all_reduce(grad)
                grad /= world_size
            results[name] = (loss, grads)
        torch.save(results, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_gather_is_identity_without_process_group():
    x = torch.randn(3, 4, requires_grad=True)
    assert gather_features(x) is x
    ids = torch.arange(3)
    assert gather_ids(ids) is ids


def test_ddp_loss_and_grads_equal_single_process(tmp_path):
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        results = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        for name, loss_name, use_ids, _ in CASES:
            ref_loss, ref_grads = _loss_and_grads(loss_name, use_ids, slice(0, 8))
            loss, grads = results[name]
            assert torch.allclose(loss, ref_loss, atol=1e-5), f"{name} rank {rank}: loss {loss} vs {ref_loss}"
            for k in ref_grads:
                assert torch.allclose(grads[k], ref_grads[k], atol=1e-5), f"{name} rank {rank}: grad of {k}"


# ============================================================================= metric losses (photo -> shape)
from models.losses import CenterLoss, IdentityLoss, ShapeLoss, SupConLoss, TripletLoss  # noqa: E402


def _on_circle(degrees, radius=3.0):
    """Points on a circle (radius != 1: the losses must normalise)."""
    return torch.tensor([[radius * math.cos(math.radians(d)), radius * math.sin(math.radians(d))] for d in degrees])


def _chord(degrees):
    """Euclidean distance of two unit vectors `degrees` apart."""
    return 2 * math.sin(math.radians(degrees) / 2)


def test_triplet_batch_hard_by_hand():
    # model 0 at 0 and 60 degrees, model 1 at 180 and 200; margin 1
    x, ids = _on_circle([0, 60, 180, 200]), torch.tensor([0, 0, 1, 1])
    per_anchor = [
        max(0.0, _chord(60) - _chord(160) + 1),   # 0 deg: positive 60 deg away, nearest negative (200) 160 away
        max(0.0, _chord(60) - _chord(120) + 1),   # 60 deg: nearest negative is 180 (120 away)
        max(0.0, _chord(20) - _chord(120) + 1),   # 180 deg: 0.347 - 1.732 + 1 < 0
        max(0.0, _chord(20) - _chord(140) + 1),   # 200 deg: 0.347 - 1.879 + 1 < 0
    ]
    assert per_anchor[0] > 0 and per_anchor[1] > 0 and per_anchor[2] == per_anchor[3] == 0
    assert abs(TripletLoss(margin=1.0)(x, ids).item() - sum(per_anchor) / 4) < 1e-5
    # a fifth row alone in its model (90 deg): no positive, so no anchor, but the nearest negative of others
    x5, ids5 = _on_circle([0, 60, 180, 200, 90]), torch.tensor([0, 0, 1, 1, 2])
    per_anchor = [_chord(60) - _chord(90) + 1, _chord(60) - _chord(30) + 1, 0.0, 0.0]  # 180/200: still < 0
    assert abs(TripletLoss(margin=1.0)(x5, ids5).item() - sum(per_anchor) / 4) < 1e-5


def test_triplet_degenerate_batch_is_zero_with_a_graph():
    x = torch.randn(3, 4, requires_grad=True)
    loss = TripletLoss()(x, torch.tensor([0, 1, 2]))  # no positives at all
    loss.backward()
    assert loss.item() == 0 and torch.equal(x.grad, torch.zeros_like(x))


def test_center_loss_by_hand_and_its_update_rule():
    x, ids = torch.tensor([[3.0, 4.0], [0.0, 2.0]]), torch.tensor([0, 1])  # unit rows (0.6, 0.8) and (0, 1)
    loss = CenterLoss(n_classes=2, dim=2, alpha=0.5)
    loss.centers.copy_(torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
    loss.seen[:] = True
    loss.eval()  # no update
    expected = 0.5 * (((0.6 - 1) ** 2 + 0.8 ** 2) + 1.0) / 2  # = 0.45
    assert abs(loss(x, ids).item() - expected) < 1e-6
    loss.train()
    assert abs(loss(x, ids).item() - expected) < 1e-6  # the loss uses the centers from before the update
    # c_j -= alpha * sum_i (c_j - x_i) / (1 + n_j): c0 = (1, 0) - 0.5 * (0.4, -0.8) / 2, c1 = (0, 0) - 0.5 * (0, -1) / 2
    assert torch.allclose(loss.centers, torch.tensor([[0.9, 0.2], [0.0, 0.25]]), atol=1e-6)
    # two rows of one model: n_j = 2
    loss.centers.copy_(torch.tensor([[0.0, 0.0], [0.0, 0.0]]))
    loss(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([1, 1]))
    assert torch.allclose(loss.centers[1], torch.tensor([0.5 / 3, 0.5 / 3]), atol=1e-6)


def test_center_loss_starts_centers_at_the_first_batch_mean():
    loss = CenterLoss(n_classes=3, dim=2).train()
    x, ids = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]), torch.tensor([2, 2, 0])
    value = loss(x, ids)
    assert torch.allclose(loss.centers[2], torch.tensor([0.5, 0.5])) and torch.allclose(loss.centers[0], x[2])
    assert abs(value.item() - 0.5 * (0.5 + 0.5 + 0) / 3) < 1e-6  # each of rows 0, 1 is 0.5**2 * 2 = 0.5 away
    assert loss.seen.tolist() == [True, False, True] and loss.centers[1].abs().sum() == 0


def test_supcon_by_hand():
    # rows e0, e0 (model 0) and e1 (model 1), scale 1: row 2 has no positive and is left out as an anchor
    z, ids = torch.tensor([[2.0, 0.0], [1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0, 1])
    expected = -math.log(math.exp(1) / (math.exp(1) + math.exp(0)))
    assert abs(SupConLoss()(z, ids, 1.0).item() - expected) < 1e-6
    # a = e0, b = e1 (model 0); c = e0, d = (e0 + e1)/sqrt 2 (model 1); scale 2, r = cos 45
    r, s = math.sqrt(0.5), 2.0
    z, ids = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [r, r]]), torch.tensor([0, 0, 1, 1])
    per_anchor = [
        -(s * 0 - math.log(math.exp(0) + math.exp(s) + math.exp(s * r))),     # a: positive b, others c, d
        -(s * 0 - math.log(math.exp(0) + math.exp(0) + math.exp(s * r))),     # b: positive a
        -(s * r - math.log(math.exp(s) + math.exp(0) + math.exp(s * r))),     # c: positive d
        math.log(3),                                                          # d: a, b, c all at cos r
    ]
    assert abs(SupConLoss()(z, ids, s).item() - sum(per_anchor) / 4) < 1e-5


def _supcon_loops(z, ids, scale):
    z = F.normalize(z, dim=-1)
    total, anchors = 0.0, 0
    for i in range(len(ids)):
        others = [a for a in range(len(ids)) if a != i]
        positives = [p for p in others if ids[p] == ids[i]]
        if not positives:
            continue
        log_z = math.log(sum(math.exp(scale * float(z[i] @ z[a])) for a in others))
        total += -sum(scale * float(z[i] @ z[p]) - log_z for p in positives) / len(positives)
        anchors += 1
    return total / anchors


def test_supcon_matches_loops_and_has_finite_gradients():
    z = torch.randn(9, 6, generator=torch.Generator().manual_seed(4), requires_grad=True)
    ids = [0, 1, 0, 2, 1, 0, 3, 2, 4]  # a triple, two pairs, two singletons
    loss = SupConLoss()(z, torch.tensor(ids), 5.0)
    assert abs(loss.item() - _supcon_loops(z.detach(), ids, 5.0)) < 1e-5
    loss.backward()
    assert torch.isfinite(z.grad).all()


def test_identity_loss_is_cosine_cross_entropy_with_imprinted_weights():
    x, ids = torch.randn(6, 4, generator=torch.Generator().manual_seed(5)), torch.tensor([0, 1, 2, 0, 1, 2])
    loss = IdentityLoss(n_classes=3, dim=4, scale=16.0).train()
    value = loss(x, ids)
    xn = F.normalize(x, dim=-1)
    means = torch.stack([xn[ids == c].mean(0) for c in range(3)])
    assert torch.allclose(loss.weight, means, atol=1e-6)  # imprinted on first sight
    expected = F.cross_entropy(16.0 * xn @ F.normalize(means, dim=-1).T, ids)
    assert torch.allclose(value, expected, atol=1e-6)


def test_shape_loss_is_the_weighted_sum_of_its_parts():
    img = torch.randn(8, 5, generator=torch.Generator().manual_seed(6))
    txt = torch.randn(2, 5, generator=torch.Generator().manual_seed(7))
    ids, text_ids = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]), torch.tensor([0, 1])
    loss = ShapeLoss("triplet+center+ce+supcon", n_classes=2, dim=5, center_weight=0.1, ce_weight=0.5).eval()
    total, parts = loss(img, ids, txt, text_ids, 10.0)
    assert set(parts) == {"triplet", "center", "ce", "supcon"}
    assert torch.allclose(total, parts["triplet"] + 0.1 * parts["center"] + 0.5 * parts["ce"] + parts["supcon"])
    both = SupConLoss()(torch.cat([img, txt]), torch.cat([ids, text_ids]), 10.0)
    assert torch.allclose(parts["supcon"], both)  # captions join the images as positives of their model
    with pytest.raises(ValueError, match="triplet, center, ce, supcon"):
        ShapeLoss("triplet+arcface", 2, 5)


# Two ranks, the global batch split 5 / 3: the metric losses gather like the CLIP loss, so loss and gradients
# (centers updated identically on both ranks) equal one process on the whole batch.
SHAPE_IDS = torch.tensor([0, 1, 0, 2, 1, 2, 0, 1])


def _shape_loss_and_grads(rows):
    torch.manual_seed(0)
    enc = nn.Linear(6, 5)
    logit_scale = nn.Parameter(torch.tensor(2.0))
    x = torch.randn(8, 6, generator=torch.Generator().manual_seed(1))
    loss_fn = ShapeLoss("triplet+center+supcon", n_classes=3, dim=5).train()
    total, _ = loss_fn(enc(x[rows]), SHAPE_IDS[rows], logit_scale=logit_scale.exp())
    total.backward()
    return total.detach(), {"weight": enc.weight.grad, "bias": enc.bias.grad, "scale": logit_scale.grad}, loss_fn.losses["center"].centers


def _shape_ddp_worker(rank, world_size, store_path, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=world_size)
    try:
        loss, grads, centers = _shape_loss_and_grads(slice(0, 5) if rank == 0 else slice(5, 8))
        for g in grads.values():
            dist.all_reduce(g)
            g /= world_size
        torch.save((loss, grads, centers), f"{out_dir}/shape{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_shape_losses_ddp_equal_single_process(tmp_path):
    mp.spawn(_shape_ddp_worker, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    ref_loss, ref_grads, ref_centers = _shape_loss_and_grads(slice(0, 8))
    for rank in range(2):
        loss, grads, centers = torch.load(tmp_path / f"shape{rank}.pt", weights_only=True)
        assert torch.allclose(loss, ref_loss, atol=1e-5)
        assert torch.allclose(centers, ref_centers, atol=1e-6)
        for k in ref_grads:
            assert torch.allclose(grads[k], ref_grads[k], atol=1e-5), k
