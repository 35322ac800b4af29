"""models/combiner.py: shapes and unit outputs, gradients against finite differences (torch.autograd.gradcheck in
double precision), the forward pass against the same layers applied one by one, and gates that are distributions."""
import pytest
import torch
import torch.nn.functional as F

from models.combiner import COMBINERS, build_combiner, element_wise_sum

SMALL = dict(projection_mult=2, hidden_mult=3, n_experts=3, attention_heads=2)


@pytest.mark.parametrize("name", COMBINERS)
def test_unit_outputs_of_the_embedding_size(name):
    torch.manual_seed(0)
    m = build_combiner(name, dim=16)
    out = m(F.normalize(torch.randn(5, 16), dim=-1), F.normalize(torch.randn(5, 16), dim=-1))
    assert out.shape == (5, 16)
    assert torch.allclose(out.norm(dim=-1), torch.ones(5), atol=1e-6)
    assert build_combiner(**m.args).state_dict().keys() == m.state_dict().keys()


@pytest.mark.parametrize("name", COMBINERS)
def test_gradcheck_in_double_precision(name):
    torch.manual_seed(0)
    m = build_combiner(name, dim=4, dropout=0.0, **SMALL).double().eval()
    image = torch.randn(2, 4, dtype=torch.double, requires_grad=True)
    text = torch.randn(2, 4, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(m, (image, text), eps=1e-6, atol=1e-5)
    weights = dict(m.named_parameters())
    some = {k: weights[k] for k in list(weights)[:3] + list(weights)[-2:]}  # the first and last layers' parameters

    def of_parameters(*values):
        return torch.func.functional_call(m, {**weights, **dict(zip(some, values))}, (image.detach(), text.detach()))
    assert torch.autograd.gradcheck(of_parameters, tuple(some.values()), eps=1e-6, atol=1e-5, fast_mode=True)


def test_combiner_is_clip4cirs_formula():
    torch.manual_seed(1)
    m = build_combiner("combiner", dim=8, **SMALL).eval()
    image, text = torch.randn(4, 8), torch.randn(4, 8)
    joint = torch.cat([F.relu(m.text_projection_layer(text)), F.relu(m.image_projection_layer(image))], -1)
    lam = torch.sigmoid(m.dynamic_scalar[3](F.relu(m.dynamic_scalar[0](joint))))
    want = m.output_layer(F.relu(m.combiner_layer(joint))) + lam * text + (1 - lam) * image
    assert torch.allclose(m(image, text), want / want.norm(dim=-1, keepdim=True), atol=1e-6)
    # CLIP4Cir's parameter names: its released Combiner state dicts load
    assert {k.rsplit(".", 1)[0] for k in m.state_dict()} == {
        "text_projection_layer", "image_projection_layer", "combiner_layer", "output_layer", "dynamic_scalar.0",
        "dynamic_scalar.3"}


def test_moe_gates_are_distributions_and_mix_the_experts():
    torch.manual_seed(2)
    m = build_combiner("moe_combiner", dim=8, **SMALL).eval()
    image, text = torch.randn(6, 8), torch.randn(6, 8)
    w = m.expert_weights(image, text)
    assert w.shape == (6, 3) and (w > 0).all() and torch.allclose(w.sum(-1), torch.ones(6))
    # the same forward pass, one expert at a time
    joint = m._joint(image, text)
    mixture = sum(w[:, e:e + 1] * m.experts[e](joint) for e in range(3))
    g = m.element_gate(joint)
    assert g.shape == (6, 8) and ((g > 0) & (g < 1)).all()
    want = mixture + g * text + (1 - g) * image
    assert torch.allclose(m(image, text), want / want.norm(dim=-1, keepdim=True), atol=1e-6)


def test_element_wise_sum_weighs_both_inputs_the_same():
    image, text = torch.tensor([[3.0, 0.0]]), torch.tensor([[0.0, 0.5]])
    assert torch.allclose(element_wise_sum(image, text), torch.tensor([[1.0, 1.0]]) / 2 ** 0.5)


def test_bad_sizes_are_named():
    with pytest.raises(ValueError, match="unknown combiner 'mlp'"):
        build_combiner("mlp", dim=8)
    with pytest.raises(ValueError, match="not divisible by attention_heads=3"):
        build_combiner("moe_combiner", dim=8, projection_mult=1, attention_heads=3)


def test_group_loss_is_each_querys_cross_entropy_over_its_target_and_its_group():
    """CombinerLoss's group term against a loop over queries: softmax of 100 x cosine over [target, the query's
    unpadded group members], the target the answer; the total adds group_weight x it to the batch loss."""
    from models.losses import ClipLoss
    from tasks.composed import CombinerLoss

    torch.manual_seed(0)
    combiner = build_combiner("combiner", dim=8, **SMALL).eval()
    ref, txt, tgt = torch.randn(4, 8), torch.randn(4, 8), torch.randn(4, 8)
    group, mask = torch.randn(4, 3, 8), torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 0, 0]], dtype=torch.bool)
    ids = torch.arange(4)
    out = CombinerLoss(combiner, group_weight=0.5)(ref, txt, tgt, ids, group, mask)
    q = combiner(F.normalize(ref, dim=-1), F.normalize(txt, dim=-1))
    expected = []
    for b in range(4):
        cands = F.normalize(torch.stack([tgt[b], *group[b][mask[b]]]), dim=-1)
        expected.append(-torch.log_softmax(100 * cands @ q[b], 0)[0])
    assert torch.allclose(out["group"], torch.stack(expected).mean(), atol=1e-5)
    batch = ClipLoss()(q, tgt, 100.0, ids=ids)
    assert torch.allclose(out["contrastive"], batch, atol=1e-6)
    assert torch.allclose(out["loss"], batch + 0.5 * out["group"], atol=1e-6)
    assert set(CombinerLoss(combiner)(ref, txt, tgt, ids, group, mask)) == {"loss"}  # weight 0: the batch loss alone
