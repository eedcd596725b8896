import itertools
from dataclasses import replace

import numpy as np
import pytest
import torch

from hepfm import EventLoader, plugins
from hepfm.components import HeadDims, Latents
from hepfm.model import PRESETS, Backbone, EventModel
from hepfm.model.diffusion import ddim_sample, noise, time_embedding


def with_targets(batch):
    """Learnable targets built from the toy events themselves."""
    btag = batch.objects[..., 4].masked_fill(~batch.mask, -1)
    top2 = btag.topk(2, -1).indices.sort(-1).values
    seg = torch.full(batch.mask.shape, -1)
    seg.scatter_(1, top2, 0)
    seg[(batch.objects[..., 5] > 0.5) & batch.mask] = 1
    g = batch.globals
    inv = torch.stack(
        [g[:, 0], g[:, 0] * torch.cos(g[:, 1]), g[:, 0] * torch.sin(g[:, 1]), torch.zeros_like(g[:, 0])], -1
    )
    batch.targets.update(
        assignment=top2,
        segmentation=seg,
        invisible=inv[:, None],
        invisible_mask=torch.ones(len(batch), 1, dtype=torch.bool),
    )
    return batch


HEADS = {
    "classification": {"num_classes": 2},
    "regression": {"targets": ["met", "ht"]},
    "assignment": {"resonances": {"h": ["b1", "b2"]}, "symmetric_daughters": {"h": [["b1", "b2"]]}},
    "segmentation": {"num_classes": 2},
    "visible_diffusion": {},
    "invisible_diffusion": {
        "num_particles": 1,
        "components": [1, 2],
        "target": "invisible",
        "mask_target": "invisible_mask",
    },
}


def build(store, names, preset="tiny", seed=0, **sizes):
    torch.manual_seed(seed)
    reg = plugins.heads()
    heads = {n: (reg.get(n), reg.get(n).Params.model_validate(HEADS[n]), 1.0) for n in names}
    return EventModel(store.schema, store.stats, replace(PRESETS[preset], **sizes), heads)


@pytest.fixture(scope="module")
def batch64(demo_store):
    return with_targets(next(iter(EventLoader(demo_store, batch_size=64, shuffle=False))))


def test_presets_sizes():
    counts = {k: sum(p.numel() for p in Backbone(c, 7, 10).parameters()) for k, c in PRESETS.items()}
    assert counts["tiny"] < 1e6
    assert 2.5e6 < counts["small"] < 3.5e6
    assert 17e6 < counts["lite"] < 23e6
    assert 70e6 < counts["standard"] < 90e6


def test_local_edge_is_the_mean_over_real_neighbours_of_the_edge_mlp():
    """The per-object, edge-list form equals mean_k MLP([h_j - h_i, h_i]) written out by hand."""
    from hepfm.model.backbone import LocalEdge, Packing, _edges

    torch.manual_seed(0)
    b, n, d, k = 5, 7, 16, 3
    counts = [7, 4, 2, 1, 0]  # real objects per event: more than K + 1, fewer, one, none
    mask = torch.arange(n)[None] < torch.tensor(counts)[:, None]
    eta, phi, h = torch.randn(b, n), torch.randn(b, n), torch.randn(b, n, d)
    module = LocalEdge(d)
    for p in module.parameters():
        torch.nn.init.normal_(p)  # a bias that is not zero, so the "no neighbour" case is tested
    packing = Packing.of(mask)  # the module sees the real objects only, as rows
    got = packing.restore(module(packing.pack(h), _edges(eta, phi, mask, k)))

    x = module.norm(h)
    want = torch.zeros(b, n, d)
    for e, i in itertools.product(range(b), range(n)):
        if not mask[e, i]:
            continue
        others = [j for j in range(n) if mask[e, j] and j != i]
        dphi = [float(torch.remainder(phi[e, i] - phi[e, j] + torch.pi, 2 * torch.pi) - torch.pi) for j in others]
        dist = [float(eta[e, i] - eta[e, j]) ** 2 + dp**2 for j, dp in zip(others, dphi, strict=True)]
        nearest = [others[m] for m in np.argsort(dist)[:k]]
        if nearest:
            msgs = [module.edge(torch.cat([x[e, j] - x[e, i], x[e, i]])) for j in nearest]
            want[e, i] = torch.stack(msgs).mean(0)
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4), (got - want).abs().max()
    assert got[3, 0].abs().max() == 0  # an object alone


def test_attention_softmax_matches_torch_with_masked_keys():
    """The written-out softmax gives torch's values and gradients, exact zeros on masked keys."""
    from hepfm.model.backbone import _softmax

    torch.manual_seed(0)
    scores = 5 * torch.randn(4, 3, 6, 6)
    scores[..., 3:] = float("-inf")  # masked keys
    scores[..., 0, :] = 40 + scores[..., 0, :]  # large logits: no overflow
    ours, ref = scores.clone().requires_grad_(), scores.clone().requires_grad_()
    y, want = _softmax(ours), ref.softmax(-1)
    assert torch.allclose(y, want, atol=1e-6)
    assert (y[..., 3:] == 0).all()
    g = torch.randn_like(y)
    y.backward(g), want.backward(g)
    assert torch.allclose(ours.grad, ref.grad, atol=1e-6)


def test_permutation_equivariance_and_padding_invariance(demo_store, batch64):
    model = build(demo_store, ["classification", "regression", "assignment", "segmentation"]).eval()
    b = batch64
    perm = torch.randperm(b.mask.shape[1], generator=torch.Generator().manual_seed(1))
    permuted = type(b)(
        b.objects[:, perm],
        b.mask[:, perm],
        b.globals,
        b.weights,
        {**b.targets, "segmentation": b.targets["segmentation"][:, perm]},
    )
    with torch.no_grad():
        lat, lat_p = model.encode(b), model.encode(permuted)
        torch.testing.assert_close(lat_p.objects, lat.objects[:, perm], atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(lat_p.event, lat.event, atol=2e-5, rtol=1e-4)
        out, out_p = model(b), model(permuted)
        for key, name in (("classification", "logits"), ("regression", "standardised")):
            torch.testing.assert_close(out_p[key][name], out[key][name], atol=2e-5, rtol=1e-4)
        # assignment: the decoded objects are the same physical objects
        a, a_p = (model.heads["assignment"].predict(o["assignment"])["assignment"] for o in (out, out_p))
        assert torch.equal(perm[a_p].sort(-1).values, a.sort(-1).values)

        garbage = b.objects.clone()
        garbage[~b.mask] = torch.randn(int((~b.mask).sum()), 7) * 1e3
        junk = type(b)(garbage, b.mask, b.globals, b.weights, b.targets)
        lat_j, out_j = model.encode(junk), model(junk)
        assert torch.equal(lat_j.objects, lat.objects) and torch.equal(lat_j.event, lat.event)
        for key in out:
            for name in out[key]:
                assert torch.equal(out_j[key][name], out[key][name]), (key, name)
        assert (lat.objects[~b.mask] == 0).all()


@pytest.mark.parametrize("head", sorted(HEADS))
def test_each_head_overfits_64_events(demo_store, batch64, head):
    model = build(demo_store, [head], feature_dropout=0.0)  # overfitting: no regularisation
    steps = 700 if head == "visible_diffusion" else 250 if head == "invisible_diffusion" else 120
    opt = torch.optim.AdamW(model.parameters(), 5e-3, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, 5e-3, total_steps=steps, pct_start=0.1)

    def evaluate():
        torch.manual_seed(123)  # same noise and times for the diffusion heads
        model.eval()
        with torch.no_grad():
            loss, _, _ = model.loss(batch64)
        model.train()
        return float(loss)

    before = evaluate()
    for _ in range(steps):
        loss, _, _ = model.loss(batch64)
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
    after = evaluate()
    assert after < 0.5 * before, (head, before, after)


def _assignment_head(params):
    cls = plugins.heads().get("assignment")
    from hepfm.schema import EventSchema

    torch.manual_seed(0)
    return cls(cls.Params.model_validate(params), HeadDims(16, EventSchema()))


def _latents(b=8, n=18, d=16, real=10):
    mask = torch.zeros(b, n, dtype=torch.bool)
    mask[:, :real] = True
    return Latents(torch.randn(b, n, d), torch.randn(b, d), mask)


def test_assignment_symmetries_and_conflict_free_decoding():
    head = _assignment_head(
        {
            "resonances": {"t1": ["b", "q1", "q2"], "t2": ["b", "q1", "q2"]},
            "symmetric_daughters": {"t1": [["q1", "q2"]], "t2": [["q1", "q2"]]},
            "symmetric_resonances": [["t1", "t2"]],
        }
    )
    lat = _latents()
    batch = type("B", (), {})()
    out = head(lat, batch)
    target = torch.tensor([[0, 1, 2, 3, 4, 5]] * 8)
    target[1] = torch.tensor([7, 8, 9, 0, 1, -1])  # t2 not matchable in this event

    def loss(t):
        batch.targets = {"assignment": t}
        batch.mask = lat.mask
        return float(head.loss(out, batch)[0])

    base = loss(target)
    swapped_q = target[:, [0, 2, 1, 3, 5, 4]]  # W daughters swapped in both tops
    swapped_t = target[:, [3, 4, 5, 0, 1, 2]]  # t1 <-> t2
    assert loss(swapped_q) == pytest.approx(base, rel=1e-6)
    assert loss(swapped_t) == pytest.approx(base, rel=1e-6)
    assert loss(target[:, [1, 0, 2, 3, 4, 5]]) != pytest.approx(base, rel=1e-6)  # b <-> q is not a symmetry

    decoded = head.predict(out)["assignment"]
    for row in decoded.tolist():
        used = [i for i in row if i >= 0]
        assert len(used) == len(set(used)) == 6
        assert all(i < 10 for i in used)  # only real objects


def test_assignment_decoding_is_exact_for_small_multiplicity():
    head = _assignment_head({"resonances": {"t": ["b"], "tbar": ["b"]}})
    lat = _latents(b=64, real=4)
    out = head(lat, None)
    got = head.predict(out)
    lp_t, lp_tb = out["logp/t"], out["logp/tbar"]
    for e in range(64):
        best = max(
            ((i, j) for i, j in itertools.permutations(range(4), 2)),
            key=lambda ij: float(lp_t[e, ij[0]] + lp_tb[e, ij[1]]),
        )
        assert tuple(got["assignment"][e].tolist()) == best
    few = _latents(b=2, real=1)
    dec = head.predict(head(few, None))["assignment"]
    assert ((dec >= 0).sum(-1) == 1).all()  # one object: one resonance assigned, never reused


def test_assignment_jets_only_never_picks_a_lepton():
    head = _assignment_head({"resonances": {"t": ["b"], "tbar": ["b"]}, "candidates": "jets"})
    lat = _latents(b=32, real=6)
    objects = torch.zeros(32, 18, 7)
    objects[:, :2, 5] = 1.0  # objects 0 and 1 are leptons
    batch = type("B", (), {"objects": objects})()
    got = head.predict(head(lat, batch))["assignment"]
    assert ((got >= 2) & (got < 6)).all()


def test_diffusion_recovers_gaussian_mixture():
    torch.manual_seed(0)
    means = torch.tensor([[-1.0, 3.0], [3.0, 1.0]])
    scales = torch.tensor([[0.5, 0.3], [0.4, 0.8]])

    def sample(n):
        comp = torch.randint(0, 2, (n,))
        return means[comp] + scales[comp] * torch.randn(n, 2)

    class Denoiser(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(
                torch.nn.Linear(2 + 32, 128),
                torch.nn.SiLU(),
                torch.nn.Linear(128, 128),
                torch.nn.SiLU(),
                torch.nn.Linear(128, 2),
            )

        def forward(self, x, t):
            return self.net(torch.cat([x, time_embedding(t, 32)], -1))

    net = Denoiser()
    opt = torch.optim.Adam(net.parameters(), 2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 3000)
    for _ in range(3000):
        x0 = sample(512)
        t = torch.rand(512)
        x_t, v = noise(x0, t)
        loss = ((net(x_t, t) - v) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    gen = ddim_sample(net, (20000, 2), steps=20, generator=torch.Generator().manual_seed(1))
    ref = sample(200000)
    m_gen, m_ref = gen.mean(0), ref.mean(0)
    assert torch.allclose(m_gen, m_ref, rtol=0.1), (m_gen, m_ref)
    c_gen, c_ref = torch.cov(gen.T), torch.cov(ref.T)
    assert (c_gen - c_ref).abs().max() < 0.1 * c_ref.abs().max(), (c_gen, c_ref)
    assert np.allclose(np.diag(c_gen.numpy()), np.diag(c_ref.numpy()), rtol=0.1)


def test_bench_model_figures():
    from hepfm.bench import bench_model

    r = bench_model(presets=("tiny",), batch_size=32, seconds=0.3)
    tiny = r["tiny"]
    assert tiny["parameters"] < 1e6 and tiny["forward_flops_per_event"] > 1e5
    assert tiny["train_flops_per_event"] > 2 * tiny["forward_flops_per_event"]
    assert tiny["train_events_per_s"] > 0 and 0 < tiny["mfu_train"] < 1
    assert 0 < r["real_object_fraction"] < 1 and r["matmul_flops_range"][0] <= r["matmul_flops_range"][1]
    assert set(r["parameters_only"]) == {"small", "lite", "standard"}
    full = bench_model(presets=("tiny",), batch_size=32, seconds=0.3, rounds=1, full=True)
    assert full["real_object_fraction"] == 1  # every slot real: more FLOPs per event than toy events
    assert full["tiny"]["forward_flops_per_event"] > 2 * tiny["forward_flops_per_event"]
