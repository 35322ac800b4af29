"""Contrastive losses for mesh-render <-> text retrieval, and the all-gather they need under DDP.

    from models.losses import build_loss
    loss_fn = build_loss("clip")            # "clip" | "cosine" | "cosine_no_negatives"
    loss = loss_fn(image_features, text_features, model.logit_scale.exp().clamp(max=100), ids)

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

    negatives=False reproduces the seed's bug: only matched pairs (target +1), so mapping every input
    to one constant direction is a perfect solution and the embeddings collapse.
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
    """'clip' (default) | 'cosine' | 'cosine_no_negatives' (the seed's collapsing loss, for comparison)."""
    if name == "clip":
        return ClipLoss(**kw)
    if name == "cosine":
        return CosineLoss(**kw)
    if name == "cosine_no_negatives":
        return CosineLoss(negatives=False, **kw)
    raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
