"""Combining a reference's embedding and a modification text's into one query embedding (composed retrieval).

    q = element_wise_sum(image, text)                       # stage 1 and the zero-shot baseline
    combiner = build_combiner("combiner", dim=512)          # CLIP4Cir's Combiner (stage 2)
    combiner = build_combiner("moe_combiner", dim=512)      # the mixture-of-experts Combiner of CLIP4Cir-MoE
    q = combiner(image, text)                               # unit vectors [batch, dim]
    combiner = build_combiner(**checkpoint["combiner_args"])   # the same module again

Inputs are unit CLIP embeddings (a shape's pooled views, or one view in training; the caption's text embedding);
CLIP4Cir feeds the raw, unnormalised features, which for a shape would make the pooled evaluation input differ
in scale from the single-view training input. Sizes scale with the embedding: CLIP4Cir's 2560 / 5120 for
RN50x4's 640 dimensions are projection_mult=4 and hidden_mult=8.
"""
import torch
import torch.nn.functional as F
from torch import nn

COMBINERS = ("combiner", "moe_combiner")
LOGIT_SCALE = 100.0  # CLIP4Cir's fixed temperature for training a Combiner (CLIP's own cap)


def element_wise_sum(image, text):
    """normalize(normalize(image) + normalize(text)): the reference and the text weigh the same."""
    return F.normalize(F.normalize(image, dim=-1) + F.normalize(text, dim=-1), dim=-1)


class Combiner(nn.Module):
    """CLIP4Cir's Combiner (Baldrati et al. 2022): projections of both inputs, their concatenation through a hidden
    layer to an output, plus a learned mixture lambda * text + (1 - lambda) * image of the inputs themselves,
    lambda a scalar per query. Parameter names are CLIP4Cir's, so its released Combiner state dicts load."""

    def __init__(self, dim, projection_dim, hidden_dim, dropout=0.5):
        super().__init__()
        self.text_projection_layer = nn.Linear(dim, projection_dim)
        self.image_projection_layer = nn.Linear(dim, projection_dim)
        self.dropout1, self.dropout2, self.dropout3 = nn.Dropout(dropout), nn.Dropout(dropout), nn.Dropout(dropout)
        self.combiner_layer = nn.Linear(projection_dim * 2, hidden_dim)
        self.output_layer = nn.Linear(hidden_dim, dim)
        self.dynamic_scalar = nn.Sequential(nn.Linear(projection_dim * 2, hidden_dim), nn.ReLU(), nn.Dropout(dropout),
                                            nn.Linear(hidden_dim, 1), nn.Sigmoid())

    def _joint(self, image, text):
        t = self.dropout1(F.relu(self.text_projection_layer(text)))
        i = self.dropout2(F.relu(self.image_projection_layer(image)))
        return torch.cat([t, i], -1)

    def forward(self, image, text):
        joint = self._joint(image, text)
        combined = self.dropout3(F.relu(self.combiner_layer(joint)))
        lam = self.dynamic_scalar(joint)
        return F.normalize(self.output_layer(combined) + lam * text + (1 - lam) * image, dim=-1)


class MoECombiner(nn.Module):
    """The Combiner of CLIP4Cir-MoE: projections, attention between the image and text tokens (self-attention over
    the two, residual + LayerNorm), several expert MLPs mixed by a softmax gating network, and an element-wise gate
    g (one weight per dimension, not one scalar) in the residual mixture g * text + (1 - g) * image.

    Each expert has hidden_dim // n_experts hidden units, so that it has about the Combiner's size."""

    def __init__(self, dim, projection_dim, hidden_dim, n_experts=4, attention_heads=4, dropout=0.5):
        super().__init__()
        if n_experts < 2:
            raise ValueError(f"n_experts={n_experts}: a mixture needs at least 2 experts")
        if projection_dim % attention_heads:
            raise ValueError(f"projection_dim={projection_dim} is not divisible by attention_heads={attention_heads}")
        hidden = max(1, hidden_dim // n_experts)
        self.text_projection = nn.Linear(dim, projection_dim)
        self.image_projection = nn.Linear(dim, projection_dim)
        self.attention = nn.MultiheadAttention(projection_dim, attention_heads, dropout=dropout, batch_first=True)
        self.norm = nn.LayerNorm(projection_dim)
        self.dropout = nn.Dropout(dropout)
        self.gate = nn.Linear(2 * projection_dim, n_experts)
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(2 * projection_dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, dim))
            for _ in range(n_experts))
        self.element_gate = nn.Sequential(nn.Linear(2 * projection_dim, dim), nn.Sigmoid())

    def _joint(self, image, text):
        tokens = torch.stack([F.relu(self.image_projection(image)), F.relu(self.text_projection(text))], 1)
        tokens = self.norm(tokens + self.attention(tokens, tokens, tokens, need_weights=False)[0])
        return self.dropout(tokens.flatten(1))  # [batch, 2 * projection_dim]: the image token, then the text token

    def expert_weights(self, image, text):
        """The gating network's softmax over the experts, [batch, n_experts]."""
        return F.softmax(self.gate(self._joint(image, text)), dim=-1)

    def forward(self, image, text):
        joint = self._joint(image, text)
        weights = F.softmax(self.gate(joint), dim=-1)
        mixture = torch.einsum("be,bed->bd", weights, torch.stack([e(joint) for e in self.experts], 1))
        g = self.element_gate(joint)
        return F.normalize(mixture + g * text + (1 - g) * image, dim=-1)


def build_combiner(name, dim, projection_mult=4, hidden_mult=8, n_experts=4, attention_heads=4, dropout=0.5):
    """A Combiner (name "combiner") or MoECombiner ("moe_combiner") for embeddings of `dim`, its sizes multiples
    of dim; the module's `args` rebuild it (build_combiner(**args))."""
    if name not in COMBINERS:
        raise ValueError(f"unknown combiner {name!r}; choose one of {', '.join(COMBINERS)}")
    sizes = dict(dim=dim, projection_dim=projection_mult * dim, hidden_dim=hidden_mult * dim, dropout=dropout)
    if name == "combiner":
        module = Combiner(**sizes)
    else:
        module = MoECombiner(**sizes, n_experts=n_experts, attention_heads=attention_heads)
    module.args = dict(name=name, dim=dim, projection_mult=projection_mult, hidden_mult=hidden_mult,
                       n_experts=n_experts, attention_heads=attention_heads, dropout=dropout)
    return module
