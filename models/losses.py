"""Contrastive losses for mesh-render <-> text retrieval, metric losses for photo -> shape, and the all-gather
they need under DDP.

    from models.losses import build_loss
    loss_fn = build_loss("clip")            # "clip" | "cosine" | "cosine_no_negatives"
    loss = loss_fn(image_features, text_features, model.logit_scale.exp().clamp(max=100), ids)

    from models.losses import ShapeLoss     # photo -> shape: TripletLoss, CenterLoss, IdentityLoss, SupConLoss
    loss_fn = ShapeLoss("triplet+center", n_classes=n_train_models, dim=512)
    total, parts = loss_fn(image_features, ids)                         # parts: {"triplet": ..., "center": ...}

`ids` holds one model id per row (image row i and text row i come from the same 3D model). Pix3D has
several images / captions per model, so one batch can hold the same model twice: those rows are
positives for each other, and treating them as negatives would push identical shapes apart.

DDP scheme (both losses): every rank all-gathers the features WITH gradient (open_clip's
`gather_with_grad=True, local_loss=False`) and computes the loss of the FULL global batch, so the loss
value is the same on every rank and equals the single-process loss. The backward of the gather sums
the gradient of every rank's (identical) loss into the local rows, i.e. world_size * dL/d(local rows);
DDP then averages over ranks, which cancels the world_size: the parameter gradients equal those of one
process on the global batch (tests/test_losses.py checks this with 2 gloo processes). Parameters that
are not gathered (logit_scale) get dL/ds on each rank, and the average keeps it. We pay a
(world*B)^2 logits matrix on each rank instead of B x (world*B), which is nothing at our batch sizes,
and in exchange the logged loss needs no extra reduction and unequal per-rank batches stay exact.
"""
import math

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

LOSSES = ("clip", "cosine", "cosine_no_negatives")


# ----------------------------------------------------------------------------- gathering across ranks
def _world_size():
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def _gather_sizes(n, device):
    """Rows held by each rank; the last batch of an epoch may differ between ranks."""
    size = torch.tensor([n], device=device)
    sizes = [torch.zeros_like(size) for _ in range(_world_size())]
    dist.all_gather(sizes, size)
    return [int(s) for s in sizes]


def _pad_rows(x, rows):
    """all_gather needs equal shapes: pad dim 0 with zeros (trimmed again after the gather)."""
    if x.shape[0] == rows:
        return x
    return torch.cat([x, x.new_zeros((rows - x.shape[0], *x.shape[1:]))])


class _AllGatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums every rank's gradient for the local rows.

    Same maths as torch.distributed.nn.functional.all_gather (what open_clip uses), which torch 2.14
    deprecates with a warning on every call; all_reduce works on every backend (gloo has no reduce_scatter).
    """

    @staticmethod
    def forward(ctx, features, sizes):
        rank = dist.get_rank()
        ctx.rows = slice(sum(sizes[:rank]), sum(sizes[: rank + 1]))
        padded = _pad_rows(features.contiguous(), max(sizes))
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded)
        return torch.cat([p[:n] for p, n in zip(parts, sizes)])

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()  # all_reduce is in place; never write into autograd's buffer
        dist.all_reduce(grad)
        return grad[ctx.rows], None


def gather_features(features):
    """Concatenate `features` of all ranks in rank order, keeping the gradient of the local rows.

    Identity without an initialised process group or with world size 1.
    """
    if _world_size() == 1:
        return features
    sizes = _gather_sizes(features.shape[0], features.device)
    return _AllGatherWithGrad.apply(features, sizes)


def gather_ids(ids):
    """Concatenate the model ids of all ranks in rank order (no gradient). Identity on one process."""
    if _world_size() == 1:
        return ids
    sizes = _gather_sizes(ids.shape[0], ids.device)
    padded = _pad_rows(ids, max(sizes))
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([p[:n] for p, n in zip(parts, sizes)])


# ----------------------------------------------------------------------------- shared preparation
def _check_inputs(image_features, text_features, ids):
    if image_features.dim() != 2 or image_features.shape != text_features.shape:
        raise ValueError(
            f"image_features {tuple(image_features.shape)} and text_features {tuple(text_features.shape)} "
            "must both be (batch, dim) with the same shape"
        )
    if ids is not None:
        if ids.dim() != 1 or ids.shape[0] != image_features.shape[0]:
            raise ValueError(f"ids {tuple(ids.shape)} must be 1-D with one id per row ({image_features.shape[0]})")
        if ids.is_floating_point() or ids.dtype == torch.bool:
            raise ValueError(f"ids must be an integer tensor (model ids), got {ids.dtype}")


def _normalise_and_gather(image_features, text_features, ids):
    """L2-normalise, gather over ranks, and return the global positive mask (N, N) as bool.

    Positives: the diagonal, plus every pair of rows with the same model id.
    """
    _check_inputs(image_features, text_features, ids)
    img = gather_features(F.normalize(image_features, dim=-1))
    txt = gather_features(F.normalize(text_features, dim=-1))
    if ids is None:
        positives = torch.eye(img.shape[0], dtype=torch.bool, device=img.device)
    else:
        ids = gather_ids(ids.to(img.device))
        positives = ids[:, None] == ids[None, :]  # includes the diagonal
    return img, txt, positives


# ----------------------------------------------------------------------------- losses
class ClipLoss(nn.Module):
    """Symmetric InfoNCE (CLIP). Rows of the same model are positives (soft multi-positive targets)."""

    def forward(self, image_features, text_features, logit_scale, ids=None):
        img, txt, positives = _normalise_and_gather(image_features, text_features, ids)
        # logit_scale arrives already exponentiated; the clamp mirrors CLIP's cap of 100 in case a caller forgot
        logit_scale = torch.as_tensor(logit_scale, dtype=img.dtype, device=img.device).clamp(max=100)
        logits = logit_scale * img @ txt.T
        if ids is None:
            targets = torch.arange(logits.shape[0], device=logits.device)
        else:
            # uniform over the positives of each row; the mask is symmetric so it serves both directions
            targets = positives.to(logits.dtype)
            targets = targets / targets.sum(dim=1, keepdim=True)
        return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


class CosineLoss(nn.Module):
    """Cosine-embedding loss over all in-batch pairs, positives and negatives weighted equally.

    Per pair this is exactly torch.nn.functional.cosine_embedding_loss (1 - cos for target +1,
    max(0, cos - margin) for target -1), written on the (N, N) cosine matrix so memory is O(N^2),
    not O(N^2 * dim) for the expanded pair tensors. tests/test_losses.py checks it against the library.

    negatives=False is the naive recipe (CosineEmbeddingLoss with every target +1): only matched pairs, so mapping
    every input to one constant direction is a perfect solution and the embeddings collapse.
    """

    def __init__(self, margin=0.2, negatives=True):
        super().__init__()
        self.margin = margin
        self.negatives = negatives

    def forward(self, image_features, text_features, logit_scale=None, ids=None):
        img, txt, positives = _normalise_and_gather(image_features, text_features, ids)
        cos = img @ txt.T
        pos = positives.to(cos.dtype)
        pos_loss = ((1 - cos) * pos).sum() / pos.sum()
        if not self.negatives:
            return pos_loss
        neg = 1 - pos
        # clamp(min=1): a batch of a single model has no negatives; its negative term is 0, not NaN
        neg_loss = ((cos - self.margin).clamp(min=0) * neg).sum() / neg.sum().clamp(min=1)
        return pos_loss + neg_loss


def build_loss(name="clip", **kw):
    """'clip' (default) | 'cosine' | 'cosine_no_negatives' (the naive recipe's collapsing loss, for comparison)."""
    if name == "clip":
        return ClipLoss(**kw)
    if name == "cosine":
        return CosineLoss(**kw)
    if name == "cosine_no_negatives":
        return CosineLoss(negatives=False, **kw)
    raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")


# ============================================================================= metric losses (photo -> shape)
# Identity = one 3D model. Every loss below takes (features, ids) with one model id per row, L2-normalises the
# rows and, like the losses above, gathers them over ranks first: each rank computes the loss of the global batch.
SHAPE_LOSSES = ("triplet", "center", "ce", "supcon")


def _normalise_gather_rows(features, ids):
    if features.dim() != 2 or ids.dim() != 1 or ids.shape[0] != features.shape[0]:
        raise ValueError(f"features {tuple(features.shape)} must be (batch, dim) and ids {tuple(ids.shape)} "
                         "must be 1-D with one model id per row")
    if ids.is_floating_point() or ids.dtype == torch.bool:
        raise ValueError(f"ids must be an integer tensor (model ids), got {ids.dtype}")
    return gather_features(F.normalize(features, dim=-1)), gather_ids(ids.to(features.device))


class TripletLoss(nn.Module):
    """Batch-hard triplet loss (Hermans et al. 2017, "In defense of the triplet loss").

    For every anchor: its farthest same-model row and its nearest other-model row (Euclidean distance of the
    unit rows, sqrt(2 - 2 cos)), loss = mean over anchors of max(0, d(a, p) - d(a, n) + margin). Anchors with no
    positive or no negative in the batch are left out (a P x K batch with K >= 2 has none).
    """

    def __init__(self, margin=0.3):
        super().__init__()
        self.margin = margin

    def forward(self, features, ids):
        x, ids = _normalise_gather_rows(features, ids)
        # clamp: sqrt has an infinite gradient at 0 (the diagonal, identical views)
        dist2 = (2 - 2 * x @ x.T).clamp(min=1e-12)
        dist = dist2.sqrt()
        same = ids[:, None] == ids[None, :]
        eye = torch.eye(len(ids), dtype=torch.bool, device=x.device)
        pos, neg = same & ~eye, ~same
        valid = pos.any(1) & neg.any(1)
        if not valid.any():
            return features.sum() * 0.0  # keeps the graph: a zero loss, not an error, for a degenerate batch
        hardest_pos = dist.masked_fill(~pos, -math.inf).max(1).values
        hardest_neg = dist.masked_fill(~neg, math.inf).min(1).values
        return F.relu(hardest_pos - hardest_neg + self.margin)[valid].mean()


def _first_batch_means(table, seen, x, ids):
    """Rows of `table` for models seen for the first time: the mean of their rows in this batch (in place)."""
    new = ids[~seen[ids]].unique()
    for m in new.tolist():
        table[m] = x[ids == m].mean(0)
    seen[new] = True


class CenterLoss(nn.Module):
    """Center loss (Wen et al. 2016): 1/2 * mean over rows of ||x_i - c_{id_i}||^2, x_i the unit embedding.

    The centers are buffers updated as in the paper, not by the optimizer: after each training batch a center
    moves toward its rows, c_j -= alpha * sum_i (c_j - x_i) / (1 + n_j). (Fine-tuning's learning rate, 1e-5,
    would leave optimizer-trained centers where they started.) A model's center starts at the mean of its rows
    in the first batch that holds it, so a first batch does not pull everything toward zero.
    """

    def __init__(self, n_classes, dim, alpha=0.5):
        super().__init__()
        self.alpha = alpha
        self.register_buffer("centers", torch.zeros(n_classes, dim))
        self.register_buffer("seen", torch.zeros(n_classes, dtype=torch.bool))

    def forward(self, features, ids):
        x, ids = _normalise_gather_rows(features, ids)
        if int(ids.max()) >= len(self.centers) or int(ids.min()) < 0:
            raise ValueError(f"ids must lie in 0..{len(self.centers) - 1} (one center per training model)")
        if self.training:
            with torch.no_grad():
                _first_batch_means(self.centers, self.seen, x.float(), ids)
        centers = self.centers[ids]  # a copy: the update below does not touch what autograd saved
        loss = 0.5 * ((x - centers) ** 2).sum(1).mean()
        if self.training:
            with torch.no_grad():
                diff = torch.zeros_like(self.centers).index_add_(0, ids, (centers - x).float())
                count = torch.zeros(len(self.centers), device=x.device).index_add_(0, ids, torch.ones_like(ids, dtype=torch.float))
                self.centers -= self.alpha * diff / (1 + count[:, None])
        return loss


class IdentityLoss(nn.Module):
    """Cross-entropy over the training models (one class per 3D model), with a cosine classifier:
    logits = scale * cos(x_i, w_j). A class weight starts at the mean embedding of its first batch (weight
    imprinting), so fine-tuning's small learning rate starts from a sensible classifier instead of noise."""

    def __init__(self, n_classes, dim, scale=16.0):
        super().__init__()
        self.scale = scale
        self.weight = nn.Parameter(torch.randn(n_classes, dim) * 0.01)
        self.register_buffer("seen", torch.zeros(n_classes, dtype=torch.bool))

    def forward(self, features, ids):
        x, ids = _normalise_gather_rows(features, ids)
        if self.training:
            with torch.no_grad():
                _first_batch_means(self.weight.data, self.seen, x.float(), ids)
        logits = self.scale * x @ F.normalize(self.weight, dim=-1).T
        return F.cross_entropy(logits, ids)


class SupConLoss(nn.Module):
    """Supervised contrastive loss (Khosla et al. 2020, L_out): for anchor i with positives P(i) (other rows of
    the same model), -1/|P(i)| * sum_{p in P(i)} log( exp(s z_i.z_p) / sum_{a != i} exp(s z_i.z_a) ), averaged
    over anchors that have a positive. s = logit_scale (CLIP's learned 1/temperature, capped at 100). Rows may
    mix modalities: photos, renders and captions of one model are all positives of each other.
    """

    def forward(self, features, ids, logit_scale):
        z, ids = _normalise_gather_rows(features, ids)
        scale = torch.as_tensor(logit_scale, dtype=z.dtype, device=z.device).clamp(max=100)
        eye = torch.eye(len(ids), dtype=torch.bool, device=z.device)
        logits = (scale * z @ z.T).masked_fill(eye, -math.inf)  # an anchor is not its own candidate
        log_prob = logits - logits.logsumexp(dim=1, keepdim=True)
        pos = (ids[:, None] == ids[None, :]) & ~eye
        n_pos = pos.sum(1)
        valid = n_pos > 0
        if not valid.any():
            return features.sum() * 0.0
        per_anchor = -log_prob.masked_fill(~pos, 0.0).sum(1)[valid] / n_pos[valid]
        return per_anchor.mean()


class ShapeLoss(nn.Module):
    """A weighted sum of metric losses over model identities, from a spec such as "triplet+center+ce" or "supcon".

    forward(image_features, ids, text_features=None, text_ids=None, logit_scale=None) -> (total, {part: value}).
    triplet, center and ce see the image rows (photos and renders); supcon sees the image rows and, when given,
    the caption rows (text_ids: their model ids; default `ids`) as well. Weights: triplet 1, supcon 1, center `center_weight`,
    ce `ce_weight`. n_classes: the number of training models (center and ce keep one row per model).
    """

    def __init__(self, spec, n_classes, dim, triplet_margin=0.3, center_weight=0.01, ce_weight=1.0):
        super().__init__()
        self.parts = parse_shape_loss(spec)
        self.weights = {"triplet": 1.0, "center": center_weight, "ce": ce_weight, "supcon": 1.0}
        self.losses = nn.ModuleDict()
        if "triplet" in self.parts:
            self.losses["triplet"] = TripletLoss(triplet_margin)
        if "center" in self.parts:
            self.losses["center"] = CenterLoss(n_classes, dim)
        if "ce" in self.parts:
            self.losses["ce"] = IdentityLoss(n_classes, dim)
        if "supcon" in self.parts:
            self.losses["supcon"] = SupConLoss()

    def forward(self, image_features, ids, text_features=None, text_ids=None, logit_scale=None):
        values = {}
        for name, fn in self.losses.items():
            if name == "supcon":
                feats, rows = image_features, ids
                if text_features is not None:
                    text_ids = ids if text_ids is None else text_ids
                    feats, rows = torch.cat([image_features, text_features]), torch.cat([ids, text_ids.to(ids.device)])
                values[name] = fn(feats, rows, logit_scale)
            else:
                values[name] = fn(image_features, ids)
        total = sum(self.weights[k] * v for k, v in values.items())
        return total, values


def parse_shape_loss(spec):
    parts = [p.strip() for p in spec.split("+") if p.strip()]
    unknown = [p for p in parts if p not in SHAPE_LOSSES]
    if not parts or unknown or len(set(parts)) != len(parts):
        raise ValueError(f"shape loss {spec!r}: expected '+'-joined distinct parts of {', '.join(SHAPE_LOSSES)} "
                         "(e.g. triplet+center, supcon)")
    return parts
