"""Baseline regularisers (feature-L2, FDA, Proxy-FDA, AFT, LwF) on tiny hand-built tensors; also the hand-built
contexts the other test_baseline_* files use (tiny linear encoders instead of the pipeline)."""
import copy
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

from forgetbench.data import ArraySplit, ImageDataset
from forgetbench.methods import Batch, FinetuneContext, Method
from forgetbench.models import Model
from forgetbench.heads import Head

IMAGE = 8  # tiny images: 8x8x3


def preprocess(img):
    """PIL image -> float tensor [3, 8, 8] in [0, 1] (larger images are resized)."""
    if img.size != (IMAGE, IMAGE):
        img = img.resize((IMAGE, IMAGE))
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


class Flatten(nn.Module):
    """A linear encoder over flattened pixels, with one parameter the forward pass never uses."""

    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Linear(3 * IMAGE * IMAGE, dim)
        self.unused = nn.Parameter(torch.ones(3))

    def forward(self, x):
        return self.proj(x.flatten(1))


def tiny_dataset(n_per_class=(6, 6, 6), seed=0, name="unit/tiny") -> ImageDataset:
    rng = np.random.default_rng(seed)
    labels = np.concatenate([np.full(n, c) for c, n in enumerate(n_per_class) if n])
    images = rng.integers(0, 256, size=(len(labels), IMAGE, IMAGE, 3), dtype=np.uint8)
    split = ArraySplit(images, labels)
    classes = [f"class{c}" for c in range(len(n_per_class))]
    return ImageDataset(name=name, classnames=classes, templates=["a {}.", "a photo of a {}."],
                        split_builders={"train": lambda: split}, fingerprint=f"{name}:{n_per_class}:{seed}")


def text_encoder(dim: int, seed: int = 0):
    """A deterministic fake text tower: each distinct prompt gets a fixed random embedding."""
    table: dict[str, torch.Tensor] = {}
    gen = torch.Generator().manual_seed(seed)

    def encode(prompts):
        for p in prompts:
            if p not in table:
                table[p] = torch.randn(dim, generator=gen)
        return torch.stack([table[p] for p in prompts])

    return encode


def make_ctx(dim=6, n_classes=3, dataset=None, text=True, seed=0) -> FinetuneContext:
    torch.manual_seed(seed)
    student = Flatten(dim)
    frozen = copy.deepcopy(student)
    for p in frozen.parameters():
        p.requires_grad_(False)
    head = Head(dim, n_classes)
    model = Model(name="unit-model", visual=frozen, preprocess=preprocess, preprocess_id="unit:8x8", feature_dim=dim,
                  encode_text=text_encoder(dim) if text else None, logit_scale=10.0)
    task = SimpleNamespace(finetune=SimpleNamespace(train_split="train"))
    return FinetuneContext(student=student, head=head, frozen=frozen, model=model, task=task,
                           head_initial=copy.deepcopy(head.state_dict()), train_dataset=dataset)


def make_batch(ctx: FinetuneContext, n=12, seed=1) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, IMAGE, IMAGE, generator=gen)
    y = torch.randint(0, ctx.head.out_features, (n,), generator=gen)
    feats = ctx.student(x)
    return Batch(x, y, feats, ctx.head(feats))


def feature_batch(features: torch.Tensor, frozen: torch.Tensor) -> Batch:
    """A Batch whose student and frozen features are given directly (the frozen ones are pre-filled)."""
    n = len(features)
    return Batch(torch.zeros(n, 1), torch.zeros(n, dtype=torch.long), features, torch.zeros(n, 2), frozen)


# ------------------------------------------------------------------------------------------------- the tests
import math  # noqa: E402

import pytest  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from forgetbench.baselines.aft import AFT, aft_distance  # noqa: E402
from forgetbench.baselines.fda import (FDA, SigmoidScale, knn_boundary, knn_order, pair_weights,  # noqa: E402
                                      sigmoid_alignment)
from forgetbench.baselines.feature_l2 import FeatureL2, feature_l2  # noqa: E402
from forgetbench.baselines.lwf import LwF, distillation_kl  # noqa: E402
from forgetbench.baselines.proxy_fda import ProxyFDA, ProxyGenerator, proxy_counts  # noqa: E402
from forgetbench.errors import SpecError  # noqa: E402
from forgetbench.methods import get_method  # noqa: E402


@pytest.fixture(autouse=True)
def single_thread():
    """Tiny tensors: one thread avoids OpenMP spin-waits, which cost 100x on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def clustered(n=24, dim=8, clusters=4, spread=0.3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(clusters, dim, generator=gen)
    return centres[torch.arange(n) % clusters] + spread * torch.randn(n, dim, generator=gen)


def rotation(dim, seed=0):
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=torch.Generator().manual_seed(seed)))
    return q


def unit(a):
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def knn_overlap(student, reference, k):
    """Mean fraction of each sample's k reference neighbours that are also its k student neighbours."""
    _, s_order = knn_order(student)
    _, r_order = knn_order(reference)
    return np.mean([len(set(a[:k].tolist()) & set(b[:k].tolist())) / k for a, b in zip(s_order, r_order)])


def test_feature_l2_known_answer_zero_at_reference_and_not_rotation_invariant():
    s, r = torch.randn(5, 4), torch.randn(5, 4)
    expected = np.mean(np.sum((unit(s.numpy()) - unit(r.numpy())) ** 2, axis=1))
    assert feature_l2(s, r).item() == pytest.approx(expected, rel=1e-5)
    method = FeatureL2()
    assert method.loss(None, feature_batch(r.clone(), r)).item() == 0.0
    q = rotation(4)
    assert abs(feature_l2(s @ q, r).item() - feature_l2(s, r).item()) > 1e-3


def test_fda_pair_weights_by_hand():
    ref = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-1.0, 0.0]])
    cos, order = knn_order(ref)
    w = pair_weights(cos, order, k=1, rule="distance").numpy()
    c = unit(ref.numpy()) @ unit(ref.numpy()).T
    for i in range(4):
        others = [j for j in range(4) if j != i]
        nearest = max(others, key=lambda j: c[i, j])
        for j in others:
            expected = max(c[i, j], 0.0) if j == nearest else -(1 - c[i, j])
            assert w[i, j] == pytest.approx(expected, abs=1e-6)
        assert w[i, i] == 0.0
    assert (pair_weights(cos, order, k=1, rule="uniform").numpy()[w < 0] == -1).all()


def test_fda_loss_matches_a_hand_computation():
    ref, student = clustered(10, 5), torch.randn(10, 5)
    scale = SigmoidScale(log_t=math.log(3.0), bias=-2.0)
    cos, order = knn_order(ref)
    loss = sigmoid_alignment(student, pair_weights(cos, order, 3), scale).item()
    c_ref, c = unit(ref.numpy()) @ unit(ref.numpy()).T, unit(student.numpy()) @ unit(student.numpy()).T
    per_anchor = []
    for i in range(10):
        ranked = [j for j in np.argsort(-c_ref[i], kind="stable") if j != i]
        terms = []
        for j in ranked:
            w = max(c_ref[i, j], 0) if j in ranked[:3] else -(1 - c_ref[i, j])
            terms.append(np.log1p(np.exp(-w * (3.0 * c[i, j] - 2.0))))
        per_anchor.append(np.mean(terms))
    assert loss == pytest.approx(np.mean(per_anchor), rel=1e-5)


def test_fda_is_rotation_invariant_while_feature_l2_is_not():
    ref = clustered(16, 6)
    student = ref + 0.5 * torch.randn(16, 6, generator=torch.Generator().manual_seed(3))
    method = FDA()
    method.scale = SigmoidScale()
    q = rotation(6, seed=1)
    a = method.alignment(None, feature_batch(student, ref)).item()
    b = method.alignment(None, feature_batch(student @ q, ref)).item()
    assert a == pytest.approx(b, rel=1e-5)
    assert abs(feature_l2(student @ q, ref).item() - feature_l2(student, ref).item()) > 1e-2


def test_fda_prefers_the_reference_structure_and_gradient_steps_recover_it():
    ref = clustered(24, 8)
    method = FDA(k=5)
    method.scale = SigmoidScale()
    aligned = method.alignment(None, feature_batch(ref.clone(), ref)).item()
    shuffled = method.alignment(None, feature_batch(ref[torch.randperm(24)], ref)).item()
    assert aligned < shuffled
    student = torch.nn.Parameter(torch.randn(24, 8, generator=torch.Generator().manual_seed(5)))
    opt = torch.optim.SGD([student], lr=3.0)
    before, overlap_before = None, knn_overlap(student.detach(), ref, 5)
    for _ in range(30):
        loss = method.alignment(None, feature_batch(student, ref))
        before = loss.item() if before is None else before
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert method.alignment(None, feature_batch(student, ref)).item() < before
    assert overlap_before < 0.5 and knn_overlap(student.detach(), ref, 5) > 0.8


def test_fda_setup_returns_learnable_temperature_and_bias():
    method = FDA()
    groups = method.setup(make_ctx())  # no training data: SigLIP's initial bias
    params = groups[0]["params"]
    assert len(params) == 2 and all(p.requires_grad for p in params)
    assert method.scale.log_t.exp().item() == pytest.approx(10.0) and method.scale.bias.item() == -10.0


def test_knn_boundary_by_hand():
    # anchor 0's frozen cosines to 1, 2, 3: 0.9, 0.5, 0.1; with K = 1 its boundary is (0.9 + 0.5) / 2
    cos = torch.tensor([[1.0, 0.9, 0.5, 0.1], [0.9, 1.0, 0.3, 0.2], [0.5, 0.3, 1.0, 0.7], [0.1, 0.2, 0.7, 1.0]])
    order = cos.masked_fill(torch.eye(4, dtype=torch.bool), -2.0).argsort(1, descending=True)[:, :-1]
    expected = np.mean([(0.9 + 0.5) / 2, (0.9 + 0.3) / 2, (0.7 + 0.5) / 2, (0.7 + 0.2) / 2])
    assert knn_boundary(cos, order, 1) == pytest.approx(expected)
    assert knn_boundary(cos, order, 3) == pytest.approx(np.mean([0.1, 0.2, 0.3, 0.1]))  # all are neighbours


def test_fda_bias_starts_at_the_frozen_knn_boundary_of_the_training_batches(cache):
    ctx = make_ctx(dataset=tiny_dataset((8, 8, 8, 8)), n_classes=4)
    ctx.task.train = SimpleNamespace(batch_size=16)
    method = FDA(k=3)
    method.setup(ctx)
    from forgetbench.features import cached_extract

    feats, labels = cached_extract(ctx.frozen, ctx.model, ctx.train_dataset, "train", "cpu")
    batches = list(method.batch_sampler(ctx, labels, 16, seed=0))
    expected = np.mean([knn_boundary(*knn_order(torch.from_numpy(feats[b])), 3) for b in batches])
    assert method.scale.bias.item() == pytest.approx(-10.0 * expected, rel=1e-5)
    method = FDA(k=3, bias_init="siglip")
    method.setup(ctx)
    assert method.scale.bias.item() == -10.0


def _negative_share(bias: float) -> float:
    """||gradient of the FDA loss from its non-neighbour pairs|| / ||... from its neighbour pairs||, at the start
    (student = frozen features)."""
    ref = clustered(32, 8, clusters=4, spread=0.6)
    cos, order = knn_order(ref)
    weights = pair_weights(cos, order, 5, "uniform")
    scale = SigmoidScale(math.log(10.0), bias)
    norms = []
    for part in (weights.clamp_max(0.0), weights.clamp_min(0.0)):
        student = ref.clone().requires_grad_(True)
        norms.append(torch.autograd.grad(sigmoid_alignment(student, part, scale), student)[0].norm().item())
    return norms[0] / norms[1]


def test_fda_negatives_count_with_the_bias_at_the_knn_boundary_and_not_with_siglips():
    ref = clustered(32, 8, clusters=4, spread=0.6)
    boundary = knn_boundary(*knn_order(ref), 5)
    at_boundary, siglip = _negative_share(-10.0 * boundary), _negative_share(-10.0)
    assert at_boundary > 1.0  # the 26 non-neighbours push at least as hard as the 5 neighbours pull
    assert siglip < 0.15 and at_boundary > 10 * siglip  # SigLIP's bias (boundary at cosine 1): negatives barely count


def test_proxy_counts_and_generator_mixes():
    assert proxy_counts(10, 53, 0.4) == (4, 21)
    assert proxy_counts(1, 2, 0.4) == (1, 1)
    assert proxy_counts(3, 0, 0.4) == (1, 0)
    gen = ProxyGenerator(dim=6, hidden=8)
    cos, order = knn_order(torch.randn(10, 6))
    mixes = gen(F.normalize(torch.randn(10, 6), dim=-1), order, cos.gather(1, order), 4, (2, 3))
    assert mixes[0].shape == (10, 2, 4) and mixes[1].shape == (10, 3, 5)
    for m in mixes:
        assert (m >= 0).all() and torch.allclose(m.sum(-1), torch.ones(m.shape[:2]))


def _proxy_method(dim=8, **params):
    method = ProxyFDA(k=5, **params)
    method.setup(make_ctx(dim=dim))
    return method


def test_proxy_fda_generator_loss_trains_only_the_generator_and_decreases():
    ref = clustered(20, 8)
    method = _proxy_method()
    student = ref + 0.3 * torch.randn(20, 8)
    student.requires_grad_(True)
    fda, generator = method.losses(None, feature_batch(student, ref))
    grad = torch.autograd.grad(generator, student, allow_unused=True)[0]
    assert grad is None or grad.abs().max() == 0
    assert torch.autograd.grad(fda, student)[0].abs().max() > 0
    opt = torch.optim.Adam(method.generator.parameters(), lr=1e-2)
    first = None
    for _ in range(40):
        _, g = method.losses(None, feature_batch(student.detach(), ref))
        first = g.item() if first is None else first
        opt.zero_grad()
        g.backward()
        opt.step()
    assert method.losses(None, feature_batch(student.detach(), ref))[1].item() < first


def test_proxy_fda_prefers_the_reference_structure():
    ref = clustered(20, 8)
    method = _proxy_method()
    aligned = method.losses(None, feature_batch(ref.clone(), ref))[0].item()
    shuffled = method.losses(None, feature_batch(ref[torch.randperm(20)], ref))[0].item()
    assert aligned < shuffled


def test_aft_distance_known_answer_and_zero_at_reference():
    s, r, w = torch.randn(7, 5), torch.randn(7, 4), torch.rand(4)

    def kernel(a):
        a = a - a.mean(0)
        a = a / (np.linalg.norm(a, axis=1, keepdims=True) + 1e-8)
        return a @ a.T

    expected = np.sqrt(np.mean((kernel(s.numpy()) - kernel(r.numpy() * w.numpy())) ** 2) + 1e-8)
    assert aft_distance(s, r, w).item() == pytest.approx(expected, rel=1e-5)
    method = AFT()
    method.setup(make_ctx(dim=4))
    assert method.loss(None, feature_batch(r.clone(), r)).item() == pytest.approx(10 * math.sqrt(1e-8), rel=1e-3)


def test_aft_learns_to_down_weight_pure_noise_dimensions():
    torch.manual_seed(0)
    method = AFT()
    method.setup(make_ctx(dim=16))
    opt = torch.optim.Adam([method.s], lr=5e-2)
    for step in range(150):
        informative = clustered(32, 8, spread=0.2, seed=100 + step)
        noise = torch.randn(32, 8) * informative.std()
        loss = method.loss(None, feature_batch(informative, torch.cat([informative, noise], 1)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    weights = method.s.detach().sigmoid()
    assert weights[8:].max() < weights[:8].min()
    assert weights[8:].mean() < 0.3 < 0.5 < weights[:8].mean()


def test_lwf_is_zero_at_the_reference_matches_kd_by_hand_and_descends():
    t, s = torch.randn(4, 3), torch.randn(4, 3)
    p, q = F.softmax(t / 2, -1).numpy(), F.softmax(s / 2, -1).numpy()
    assert distillation_kl(t, s, 2.0).item() == pytest.approx(4 * np.mean(np.sum(p * np.log(p / q), 1)), rel=1e-5)
    ctx = make_ctx()
    method = LwF()
    method.setup(ctx)
    assert method.loss(ctx, make_batch(ctx)).item() == pytest.approx(0.0, abs=1e-7)
    with torch.no_grad():
        ctx.student.proj.weight.add_(0.5 * torch.randn_like(ctx.student.proj.weight))
    opt = torch.optim.SGD(ctx.student.parameters(), lr=0.5)
    first = method.loss(ctx, make_batch(ctx)).item()
    for _ in range(10):
        loss = method.loss(ctx, make_batch(ctx))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert method.loss(ctx, make_batch(ctx)).item() < first


def test_check_params_rejects_undeclared_and_ill_formed_hyper_parameters():
    with pytest.raises(SpecError, match="did you mean 'lam'"):
        get_method("fda")(lamda=2.0)
    with pytest.raises(SpecError, match="negative_weight.*expected one of distance, uniform, got 'hard'"):
        get_method("proxy-fda")(negative_weight="hard")
    with pytest.raises(SpecError, match="'snapshots': expected an integer >= 2, got 1.5"):
        get_method("zscl")(snapshots=1.5)
    with pytest.raises(SpecError, match="'k': expected an integer >= 1, got 0"):  # the range, declared
        get_method("fda")(k=0)
    with pytest.raises(SpecError, match=r"'alpha': expected a number in \[0, 1\], got 1.5"):
        get_method("wise-ft")(alpha=1.5)
    assert get_method("l2sp")(alpha=1).params == {"alpha": 1.0}  # an integer where a float is declared: the float


def test_a_method_in_the_older_form_declares_defaults_and_a_reference():
    class Older(Method):
        name = "test-older-form"
        reference = "a paper"
        defaults = {"beta": 1.0, "steps": 3}

    assert Older.citation == "a paper" and Older.defaults == {"beta": 1.0, "steps": 3}
    assert Older(beta=2).params == {"beta": 2.0, "steps": 3}
    with pytest.raises(SpecError, match="'steps': expected an integer, got 'x'"):
        Older(steps="x")
