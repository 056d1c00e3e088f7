"""Tests of fsa_lt.method against independent expectations (fast, CPU, seeded)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fsa_lt.errors import ConfigError
from fsa_lt.method import (
    FSASampler,
    build_batch,
    class_activation_maps,
    confusing_classes,
    decompose_masks,
    fuse_pooled,
    head_tail_split,
    mean_scores_by_class,
    normalize_cams,
    shot_groups,
    synthesize,
    usable_locations,
    usable_masks,
)


def ldam_counts(n_max: int, num_classes: int, imb: int) -> np.ndarray:
    return np.array(
        [int(n_max * (1.0 / imb) ** (i / (num_classes - 1.0))) for i in range(num_classes)], dtype=np.int64
    )


# ----------------------------------------------------------------------- CAM
def test_cam_matches_explicit_loops():
    g = torch.Generator().manual_seed(0)
    b, c, h, w, k = 3, 5, 2, 3, 4
    fmap = torch.randn(b, c, h, w, generator=g)
    weight = torch.randn(k, c, generator=g)
    labels = torch.tensor([2, 0, 3])
    cams = class_activation_maps(fmap, weight, labels)
    assert cams.shape == (b, h, w) and cams.dtype == torch.float32
    f, wt = fmap.double().numpy(), weight.double().numpy()
    expect = np.zeros((b, h, w))
    for i in range(b):
        for y in range(h):
            for x in range(w):
                expect[i, y, x] = sum(wt[labels[i], ch] * f[i, ch, y, x] for ch in range(c))
    np.testing.assert_allclose(cams.numpy(), expect, rtol=1e-5, atol=1e-5)
    # half-precision storage is computed in float32
    cams16 = class_activation_maps(fmap.half(), weight, labels)
    assert cams16.dtype == torch.float32
    np.testing.assert_allclose(cams16.numpy(), expect, rtol=1e-2, atol=1e-2)


def test_normalize_cams_range_and_constant():
    g = torch.Generator().manual_seed(1)
    cams = torch.randn(4, 3, 5, generator=g) * 7 + 3
    cams[2] = 4.25  # constant map
    out = normalize_cams(cams)
    assert out.shape == cams.shape and out.dtype == torch.float32
    for i in (0, 1, 3):
        x = cams[i].double().numpy()
        np.testing.assert_allclose(out[i].numpy(), (x - x.min()) / (x.max() - x.min()), atol=1e-6)
        assert out[i].min().item() == 0.0 and out[i].max().item() == 1.0
    assert torch.equal(out[2], torch.zeros(3, 5))
    assert (out >= 0).all() and (out <= 1).all()
    # idempotent on normalised maps
    assert torch.equal(normalize_cams(out), out)


def test_decompose_masks_strict_thresholds():
    cam = torch.tensor([[[0.0, 0.2, 0.5], [0.8, 0.81, 1.0]]])
    spec, gen = decompose_masks(cam, tau_s=0.8, tau_g=0.2)
    assert spec.dtype == torch.bool and gen.dtype == torch.bool
    assert spec.tolist() == [[[False, False, False], [False, True, True]]]
    assert gen.tolist() == [[[True, False, False], [False, False, False]]]
    spec, gen = decompose_masks(cam, tau_s=0.5, tau_g=0.5)
    assert spec.tolist() == [[[False, False, False], [True, True, True]]]
    assert gen.tolist() == [[[True, True, False], [False, False, False]]]
    for ts, tg in [(0.2, 0.8), (1.1, 0.2), (0.8, -0.1)]:
        with pytest.raises(ConfigError):
            decompose_masks(cam, tau_s=ts, tau_g=tg)


def test_usable_locations_excludes_zero_vectors():
    fmap = torch.ones(2, 3, 2, 2)
    fmap[0, :, 0, 1] = 0.0  # dead location, masked in
    fmap[1, :, 1, 1] = 0.0  # dead location, masked out
    fmap[1, 1, 0, 0] = 0.0  # partly zero vector: still usable
    mask = torch.tensor([[[True, True], [False, True]], [[True, False], [True, False]]])
    u = usable_locations(fmap, mask)
    assert u.shape == (2, 4)
    assert u.tolist() == [[True, False, False, True], [True, False, True, False]]


# ----------------------------------------------------------------- split
@pytest.mark.parametrize(
    "n_max,num_classes,imb,n_head",
    [(5000, 10, 10, 7), (5000, 10, 50, 6), (5000, 10, 100, 5), (500, 100, 10, 72), (500, 100, 50, 54), (500, 100, 100, 48)],
)
def test_head_tail_split_cifar_lt(n_max, num_classes, imb, n_head):
    counts = ldam_counts(n_max, num_classes, imb)
    head, tail = head_tail_split(counts, 0.9)
    assert len(head) == n_head and len(tail) == num_classes - n_head
    assert sorted(head.tolist() + tail.tolist()) == list(range(num_classes))
    # independent check of the definition: head = the n_head largest classes,
    # n_head - 1 of them are not enough, n_head are
    assert set(head.tolist()) == set(range(n_head))
    assert counts[:n_head].sum() >= 0.9 * counts.sum() > counts[: n_head - 1].sum()
    # class ids in a random order: the split follows the counts, not the ids
    perm = np.random.RandomState(imb).permutation(num_classes)
    permuted = np.empty_like(counts)
    permuted[perm] = counts  # class i of the original becomes class perm[i]
    head_p, tail_p = head_tail_split(permuted, 0.9)
    assert set(head_p.tolist()) == set(perm[head].tolist())
    assert set(tail_p.tolist()) == set(perm[tail].tolist())


def test_head_tail_split_ties_and_validation():
    head, tail = head_tail_split([10, 10, 1], 0.45)  # tie: lower id first
    assert head.tolist() == [0] and tail.tolist() == [1, 2]
    head, tail = head_tail_split([5, 10, 10], 0.4)
    assert head.tolist() == [1] and tail.tolist() == [0, 2]
    head, tail = head_tail_split([3, 2, 1], 1.0)
    assert head.tolist() == [0, 1, 2] and tail.tolist() == []
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ConfigError):
            head_tail_split([3, 2, 1], bad)


def test_shot_groups_boundaries():
    counts = [19, 150, 100, 20, 50, 101, 0, 21]
    grp = shot_groups(counts)
    assert grp["many"].tolist() == [1, 5]
    assert grp["medium"].tolist() == [2, 3, 4, 7]
    assert grp["few"].tolist() == [0, 6]
    # CIFAR-10-LT at imbalance 100 has no few-shot class
    grp = shot_groups(ldam_counts(5000, 10, 100))
    assert grp["few"].size == 0 and grp["medium"].tolist() == [8, 9]


# ------------------------------------------------------------- confusion
def test_mean_scores_by_class_matches_loop():
    g = torch.Generator().manual_seed(2)
    k, n = 5, 40
    probs = torch.softmax(torch.randn(n, k, generator=g), dim=1)
    labels = torch.randint(0, k - 1, (n,), generator=g)  # class 4 has no sample
    m = mean_scores_by_class(probs, labels, k)
    expect = np.zeros((k, k))
    for c in range(k):
        rows = [probs[i].double().numpy() for i in range(n) if labels[i] == c]
        if rows:
            expect[c] = np.mean(rows, axis=0)
    np.testing.assert_allclose(m.numpy(), expect, atol=1e-6)
    assert torch.equal(m[4], torch.zeros(k))


def test_confusing_classes_row_wise_not_transpose():
    s = torch.tensor(
        [
            [0.30, 0.05, 0.05, 0.60],
            [0.00, 0.90, 0.10, 0.00],
            [0.10, 0.10, 0.60, 0.20],
            [0.10, 0.50, 0.30, 0.95],  # samples of class 3 are taken for 1, then 2
        ]
    )
    conf = confusing_classes(s, [3], 2)
    assert conf.dtype == torch.long and conf.shape == (1, 2)
    assert conf.tolist() == [[1, 2]]  # row 3 without itself
    assert confusing_classes(s.T, [3], 2).tolist() == [[0, 2]]  # the transposed definition differs
    conf = confusing_classes(s, [2, 0], 3)
    assert conf.tolist() == [[3, 0, 1], [3, 1, 2]]  # self excluded; tie 1/2 (and 0/1) -> lower id
    for row, c in zip(conf.tolist(), [2, 0]):
        assert c not in row
    with pytest.raises(ConfigError):
        confusing_classes(s, [3], 4)
    with pytest.raises(ConfigError):
        confusing_classes(s, [3], 0)


# ---------------------------------------------------------------- fusion
def location_coded(b: int, h: int, w: int, offset: int, channels: int) -> torch.Tensor:
    """Maps whose vector at location l is the one-hot code of channel offset + l."""
    loc = h * w
    f = torch.zeros(b, channels, loc)
    f[:, offset + torch.arange(loc), torch.arange(loc)] = 1.0
    return f.reshape(b, channels, h, w)


def test_fuse_pooled_draws_only_usable_with_exact_ratio():
    g = torch.Generator().manual_seed(3)
    b, h, w = 64, 3, 4
    loc = h * w
    ft = location_coded(b, h, w, 0, 2 * loc)
    fd = location_coded(b, h, w, loc, 2 * loc)
    spec = torch.rand(b, loc, generator=g) < 0.3
    gen = torch.rand(b, loc, generator=g) < 0.4
    spec[:, 0] = True
    gen[:, 1] = True
    # some masked-in locations carry a zero vector and must never be drawn
    dead_t = torch.rand(b, loc, generator=g) < 0.2
    dead_t[:, 0] = False
    dead_d = torch.rand(b, loc, generator=g) < 0.2
    dead_d[:, 1] = False
    ft = ft * (~dead_t).float().reshape(b, 1, h, w)
    fd = fd * (~dead_d).float().reshape(b, 1, h, w)
    s_use = usable_locations(ft, spec)
    g_use = usable_locations(fd, gen)
    assert torch.equal(s_use, spec & ~dead_t) and torch.equal(g_use, gen & ~dead_d)
    gamma = (torch.arange(b) + 0.3) / b  # avoids .5 ties of round(gamma L)
    pooled, cs, cg = fuse_pooled(ft, s_use, fd, g_use, gamma, generator=g, return_counts=True)
    assert pooled.shape == (b, 2 * loc)
    k_expect = torch.tensor([round(float(x) * loc) for x in gamma])
    # counts recovered from the pooled vector through the location codes
    rec_s = (pooled[:, :loc] * loc).round()
    rec_g = (pooled[:, loc:] * loc).round()
    assert torch.equal(rec_s, cs) and torch.equal(rec_g, cg)
    assert torch.allclose(pooled * loc, torch.cat([cs, cg], 1), atol=1e-5)
    assert torch.equal(cs.sum(1), k_expect.float())
    assert torch.equal(cg.sum(1), (loc - k_expect).float())
    assert torch.equal(cs.sum(1) / loc, k_expect.float() / loc)  # specific fraction exactly round(gamma L)/L
    assert ((cs > 0) <= s_use).all() and ((cg > 0) <= g_use).all()
    # pooled == mean of the drawn vectors, on generic (non-coded) maps too
    ft2 = torch.randn(b, 5, h, w, generator=g)
    fd2 = torch.randn(b, 5, h, w, generator=g)
    p2, cs2, cg2 = fuse_pooled(ft2, s_use, fd2, g_use, gamma, generator=g, return_counts=True)
    expect = np.zeros((b, 5))
    for i in range(b):
        drawn = []
        for l in range(loc):
            drawn += [ft2[i].reshape(5, loc)[:, l].numpy()] * int(cs2[i, l])
            drawn += [fd2[i].reshape(5, loc)[:, l].numpy()] * int(cg2[i, l])
        assert len(drawn) == loc
        expect[i] = np.mean(drawn, axis=0)
    np.testing.assert_allclose(p2.numpy(), expect, atol=1e-5)


def test_fuse_pooled_empty_side_fallbacks():
    g = torch.Generator().manual_seed(4)
    b, h, w = 3, 2, 2
    loc = h * w
    ft = location_coded(b, h, w, 0, 2 * loc) * 2.0
    fd = location_coded(b, h, w, loc, 2 * loc)
    spec = torch.tensor([[False] * 4, [True, True, False, False], [False] * 4])
    gen = torch.tensor([[False, True, True, False], [False] * 4, [False] * 4])
    gamma = torch.tensor([0.9, 0.1, 0.5])
    pooled, cs, cg = fuse_pooled(ft, spec, fd, gen, gamma, generator=g, return_counts=True)
    # row 0: S empty -> all L draws from G
    assert cs[0].sum() == 0 and cg[0].sum() == loc and (cg[0, [0, 3]] == 0).all()
    # row 1: G empty -> all L draws from S
    assert cg[1].sum() == 0 and cs[1].sum() == loc and (cs[1, 2:] == 0).all()
    # row 2: both empty -> [choice] the tail sample's own average-pooled feature
    assert cs[2].sum() == 0 and cg[2].sum() == 0
    assert torch.allclose(pooled[2], ft[2].mean(dim=(1, 2)))
    assert torch.allclose(pooled[:2] * loc, torch.cat([cs, cg], 1)[:2] * torch.tensor([2.0] * loc + [1.0] * loc))


def test_fuse_pooled_uniform_over_specific_locations():
    g = torch.Generator().manual_seed(5)
    b, h, w = 4000, 4, 4
    loc = h * w
    ft = torch.rand(b, 8, h, w, generator=g) + 0.1
    spec = torch.zeros(b, loc, dtype=torch.bool)
    chosen = [1, 6, 7, 12]
    spec[:, chosen] = True
    gen = torch.ones(b, loc, dtype=torch.bool)
    _, cs, cg = fuse_pooled(ft, spec, ft, gen, torch.ones(b), generator=g, return_counts=True)
    tot = cs.sum(0)
    assert tot.sum() == b * loc and cg.sum() == 0
    expected = b * loc / len(chosen)
    assert torch.all((tot[chosen] - expected).abs() < 0.02 * expected)  # ~8 sd of a multinomial count
    mask = torch.ones(loc, dtype=torch.bool)
    mask[chosen] = False
    assert tot[mask].sum() == 0


def test_synthesize_pairs_tail_rows_with_donor_blocks():
    g = torch.Generator().manual_seed(6)
    h, w = 2, 3
    loc = h * w
    ft = location_coded(2, h, w, 0, 2 * loc) + 0.01  # no zero vectors
    fd = location_coded(4, h, w, loc, 2 * loc) + 0.01
    cam_t = torch.zeros(2, h, w)
    cam_t[0, 0, 0] = 1.0  # tail 0: specific location 0
    cam_t[1, 1, 2] = 1.0  # tail 1: specific location 5
    cam_d = torch.ones(4, h, w)
    cam_d[:, 0, 1] = 0.0  # donors: generic location 1 only
    pooled, gamma, cs, cg = synthesize(ft, cam_t, fd, cam_d, 0.8, 0.2, generator=g, gamma=torch.full((4,), 0.5), return_counts=True)
    assert pooled.shape == (4, 2 * loc) and gamma.shape == (4,)
    assert cs[:2, 0].tolist() == [3.0, 3.0] and cs[2:, 5].tolist() == [3.0, 3.0]
    assert (cg[:, 1] == 3).all()
    _, gam = synthesize(ft, cam_t, fd, cam_d, generator=g)
    assert gam.shape == (4,) and ((gam >= 0) & (gam < 1)).all()
    with pytest.raises(ConfigError):
        synthesize(ft, cam_t, fd[:3], cam_d[:3])


def test_synthesize_gamma_range_by_hand():
    """gamma ~ U(lo, hi) is lo + (hi - lo) u for the plain draw u; (0, 1) is the plain draw itself; with
    gamma fixed at 1 every location comes from the tail's one specific location, so the pooled
    feature is that location's vector."""
    h, w = 2, 3
    loc = h * w
    ft = location_coded(2, h, w, 0, 2 * loc) + 0.01
    fd = location_coded(4, h, w, loc, 2 * loc) + 0.01
    cam_t = torch.zeros(2, h, w)
    cam_t[0, 0, 0] = 1.0
    cam_t[1, 1, 2] = 1.0
    cam_d = torch.ones(4, h, w)
    cam_d[:, 0, 1] = 0.0
    plain = synthesize(ft, cam_t, fd, cam_d, generator=torch.Generator().manual_seed(3))
    same = synthesize(ft, cam_t, fd, cam_d, generator=torch.Generator().manual_seed(3), gamma_range=(0.0, 1.0))
    assert torch.equal(plain[0], same[0]) and torch.equal(plain[1], same[1])
    _, g = synthesize(ft, cam_t, fd, cam_d, generator=torch.Generator().manual_seed(3), gamma_range=(0.25, 0.75))
    torch.testing.assert_close(g, 0.25 + 0.5 * plain[1])
    pooled, g1 = synthesize(ft, cam_t, fd, cam_d, generator=torch.Generator().manual_seed(3), gamma_range=(1.0, 1.0))
    assert (g1 == 1.0).all()
    torch.testing.assert_close(pooled[:2], ft[0, :, 0, 0].expand(2, -1))   # tail 0's location 0, twice
    torch.testing.assert_close(pooled[2:], ft[1, :, 1, 2].expand(2, -1))   # tail 1's location 5
    for bad in ((0.6, 0.4), (-0.1, 0.5), (0.5, 1.5), (0.5,)):
        with pytest.raises(ConfigError, match="gamma_range"):
            synthesize(ft, cam_t, fd, cam_d, gamma_range=bad)


# --------------------------------------------------------------- sampler
def make_store(seed=7):
    rs = np.random.RandomState(seed)
    counts = np.array([3, 60, 2, 40, 6, 80])  # class order is not frequency order
    labels = np.repeat(np.arange(6), counts)
    labels = labels[rs.permutation(labels.size)]
    head, tail = head_tail_split(counts, 0.9)
    scores = torch.softmax(torch.tensor(rs.randn(6, 6), dtype=torch.float32), 1)
    conf = confusing_classes(scores, tail, 3)
    return counts, labels, head, tail, conf


def test_sampler_batch_composition():
    counts, labels, head, tail, conf = make_store()
    assert sorted(head.tolist()) == [1, 3, 5] and sorted(tail.tolist()) == [0, 2, 4]
    lab = torch.as_tensor(labels)
    s = FSASampler(labels, head, tail, conf, n_t=16, n_a=2, generator=torch.Generator().manual_seed(0))
    assert s.batch_size == 2 * 16 * 3
    for _ in range(20):
        d = s.sample()
        assert d["tail_idx"].shape == (16,) and d["tail_labels"].shape == (16,)
        assert d["donor_idx"].shape == (16, 2) and d["donor_classes"].shape == (16, 2)
        assert d["head_idx"].shape == (48,) and d["head_labels"].shape == (48,)
        assert set(lab[d["tail_idx"]].tolist()) <= set(tail.tolist())
        assert torch.equal(lab[d["tail_idx"]], d["tail_labels"])
        assert set(lab[d["head_idx"]].tolist()) <= set(head.tolist())
        assert torch.equal(lab[d["head_idx"]], d["head_labels"])
        for i, c in enumerate(d["tail_labels"].tolist()):
            row = tail.tolist().index(c)
            assert d["donor_classes"][i].tolist() == conf[row, :2].tolist()
        assert torch.equal(lab[d["donor_idx"]], d["donor_classes"])
    # reproducible with a seeded generator
    a = FSASampler(labels, head, tail, conf, n_t=8, n_a=3, generator=torch.Generator().manual_seed(11)).sample()
    b = FSASampler(labels, head, tail, conf, n_t=8, n_a=3, generator=torch.Generator().manual_seed(11)).sample()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_sampler_tail_modes_and_donor_uniformity():
    counts, labels, head, tail, conf = make_store()
    lab = torch.as_tensor(labels)
    n = 30000
    inst = FSASampler(labels, head, tail, conf, n_t=n, n_a=1, generator=torch.Generator().manual_seed(1))
    cls = FSASampler(labels, head, tail, conf, n_t=n, n_a=1, tail_sampling="class", generator=torch.Generator().manual_seed(1))
    fi = torch.bincount(inst.sample()["tail_labels"], minlength=6)[tail].double() / n
    fc = torch.bincount(cls.sample()["tail_labels"], minlength=6)[tail].double() / n
    tail_counts = torch.tensor(counts[tail], dtype=torch.float64)
    assert torch.allclose(fi, tail_counts / tail_counts.sum(), atol=0.015)  # instance: proportional to counts
    assert torch.allclose(fc, torch.full((3,), 1 / 3, dtype=torch.float64), atol=0.015)  # class: uniform
    # every sample of a class is a possible donor, uniformly
    d = inst.sample()
    donors = d["donor_idx"][:, 0]
    for c in torch.unique(d["donor_classes"]).tolist():
        idx = donors[d["donor_classes"][:, 0] == c]
        members = torch.nonzero(lab == c).reshape(-1)
        freq = torch.stack([(idx == m).sum() for m in members]).double() / idx.numel()
        assert torch.allclose(freq, torch.full_like(freq, 1 / members.numel()), atol=0.03)


def test_sampler_rejects_bad_configs():
    counts, labels, head, tail, conf = make_store()
    with pytest.raises(ConfigError):
        FSASampler(labels, head, tail, conf, n_a=4)
    with pytest.raises(ConfigError):
        FSASampler(labels, head, tail, conf[:2], n_a=2)
    bad = conf.clone()
    bad[0, 0] = 6  # a class without any training sample
    bad_labels = labels.copy()
    with pytest.raises(ConfigError, match="without training samples"):
        FSASampler(np.append(bad_labels, 7), head, tail, bad, n_a=2)
    with pytest.raises(ConfigError):
        FSASampler(labels, head, tail, conf, tail_sampling="balanced")


def test_build_batch_labels_and_no_aug_control():
    counts, labels, head, tail, conf = make_store()
    g = torch.Generator().manual_seed(9)
    n = labels.size
    fmaps = (torch.rand(n, 6, 3, 3, generator=g) + 0.05).half()  # fp16 storage
    cams = normalize_cams(torch.rand(n, 3, 3, generator=g))
    pooled = fmaps.float().mean(dim=(2, 3))
    lab = torch.as_tensor(labels)
    s = FSASampler(labels, head, tail, conf, n_t=16, n_a=3, generator=torch.Generator().manual_seed(3))
    feats, y = build_batch(s, pooled, fmaps, cams, 0.8, 0.2)
    assert feats.shape == (128, 6) and feats.dtype == torch.float32 and y.shape == (128,)
    s2 = FSASampler(labels, head, tail, conf, n_t=16, n_a=3, generator=torch.Generator().manual_seed(3))
    d = s2.sample()
    assert torch.equal(y[:16], d["tail_labels"])
    assert torch.equal(y[16:64], d["tail_labels"].repeat_interleave(3))  # synthetic: the tail class
    assert torch.equal(y[64:], d["head_labels"])
    assert torch.equal(feats[:16], pooled[d["tail_idx"]]) and torch.equal(feats[64:], pooled[d["head_idx"]])
    # synthetic rows are not copies of real samples
    dist = ((feats[16:64, None, :] - pooled[None]) ** 2).sum(-1).min(dim=1).values
    assert (dist > 1e-8).all()
    # pooled_real may be omitted
    f3, y3 = build_batch(FSASampler(labels, head, tail, conf, generator=torch.Generator().manual_seed(3)), None, fmaps, cams)
    assert torch.allclose(f3[:16], feats[:16], atol=1e-6) and torch.equal(y3, y)

    # "No Aug" control: same size, same head/tail balance, only real samples
    fn, yn = build_batch(s, pooled, fmaps, cams, augment=False)
    assert fn.shape == (128, 6) and yn.shape == (128,)
    is_tail = torch.isin(yn, torch.as_tensor(tail))
    assert is_tail[:64].all() and not is_tail[64:].any()
    dist, which = ((fn[:, None, :] - pooled[None]) ** 2).sum(-1).min(dim=1)
    assert (dist == 0).all() and torch.equal(lab[which], yn)


def test_usable_masks_are_the_per_sample_rule_and_leave_batches_bit_identical():
    counts, labels, head, tail, conf = make_store()
    g = torch.Generator().manual_seed(11)
    n = labels.size
    fmaps = torch.rand(n, 5, 3, 3, generator=g).half()
    fmaps[torch.rand(n, 1, 3, 3, generator=g).expand(n, 5, 3, 3) < 0.2] = 0  # dead locations
    raw = torch.randn(n, 3, 3, generator=g)
    raw[0] = 2.5  # a constant CAM: no specific location, all generic
    spec, gen = usable_masks(fmaps, raw, 0.8, 0.2, chunk=7)  # chunks that do not divide n
    # the rule by hand, one sample at a time, in numpy
    f = fmaps.float().numpy().reshape(n, 5, 9)
    r = raw.numpy().reshape(n, 9)
    for i in range(n):
        lo, hi = r[i].min(), r[i].max()
        m = (r[i] - lo) / (hi - lo) if hi > lo else np.zeros(9)
        alive = (f[i] != 0).any(axis=0)
        assert np.array_equal(spec[i].numpy(), (m > 0.8) & alive)
        assert np.array_equal(gen[i].numpy(), (m < 0.2) & alive)
    assert not spec[0].any() and torch.equal(gen[0], torch.as_tensor((f[0] != 0).any(axis=0)))
    # the batches drawn with the precomputed masks are those computed per draw, bit for bit
    pooled = fmaps.float().mean(dim=(2, 3))
    for gamma_range in ((0.0, 1.0), (0.5, 0.9)):  # the paper's gamma, and a narrower range
        out = []
        for masks in (None, (spec, gen)):
            gen_ = torch.Generator().manual_seed(5)
            s = FSASampler(labels, head, tail, conf, n_t=8, n_a=3, generator=gen_)
            out.append([build_batch(s, pooled, fmaps, raw, 0.8, 0.2, masks=masks, gamma_range=gamma_range)
                        for _ in range(20)])
        for (fa, ya), (fb, yb) in zip(*out):
            assert torch.equal(fa, fb) and torch.equal(ya, yb)
    with pytest.raises(ConfigError, match="tau"):
        usable_masks(fmaps, raw, 0.2, 0.8)


# ----------------------------------------------------------------- effect
def _toy_problem(seed: int):
    """3 classes; feature maps of C channels x 16 locations.

    Each sample: its class pattern (a class channel, weak) at 4 'object' locations
    and a background style (one of 4 style channels, strong) at the other 12, plus
    small non-negative noise. In the true distribution the style is uniform and
    independent of the class. The 5 training samples of the tail class (2) all
    have style 0, so a classifier fitted to the real data learns 'style 0 => tail'.
    """
    g = torch.Generator().manual_seed(seed)
    k, styles, h, w = 3, 4, 4, 4
    loc = h * w
    c = k + styles + 4
    obj = torch.tensor([5, 6, 9, 10])

    def draw(y, st):
        n = y.numel()
        f = torch.zeros(n, c, loc)
        f[torch.arange(n), k + st, :] = 1.0
        o = torch.zeros(n, c)
        o[torch.arange(n), y] = 0.5
        f[:, :, obj] = o[:, :, None]
        f += 0.1 * torch.randn(n, c, loc, generator=g).abs()
        return f.reshape(n, c, h, w)

    y_tr = torch.cat([torch.zeros(200), torch.ones(200), torch.full((5,), 2.0)]).long()
    s_tr = torch.randint(0, styles, (y_tr.numel(),), generator=g)
    s_tr[y_tr == 2] = 0
    y_te = torch.arange(k).repeat_interleave(300)
    s_te = torch.randint(0, styles, (y_te.numel(),), generator=g)
    return draw(y_tr, s_tr), y_tr, draw(y_te, s_te), y_te, k, c


def _zero_linear(c, k):
    clf = torch.nn.Linear(c, k)
    torch.nn.init.zeros_(clf.weight)
    torch.nn.init.zeros_(clf.bias)
    return clf


def _phase_i(pooled, y, k, c, steps: int = 300):
    """'Phase I' on the toy problem: a linear classifier on all training samples
    (instance-uniform, full batch, cross-entropy), as plain long-tailed training does."""
    clf = _zero_linear(c, k)
    opt = torch.optim.SGD(clf.parameters(), lr=0.5, momentum=0.9)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(clf(pooled), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return clf


def _accuracy(clf, f_te, y_te, k):
    with torch.no_grad():
        pred = clf(f_te.mean(dim=(2, 3))).argmax(dim=1)
    return [(pred[y_te == i] == i).float().mean().item() for i in range(k)]


def _finetune(augment: bool, seed: int = 0, steps: int = 250, from_phase_i: bool = False):
    f_tr, y_tr, f_te, y_te, k, c = _toy_problem(seed)
    head, tail = head_tail_split(np.bincount(y_tr.numpy(), minlength=k), 0.9)
    assert head.tolist() == [0, 1] and tail.tolist() == [2]
    # a "Phase I" classifier that knows the objects (its CAMs mark the object locations)
    w_cam = torch.zeros(k, c)
    w_cam[torch.arange(k), torch.arange(k)] = 1.0
    cams = normalize_cams(class_activation_maps(f_tr, w_cam, y_tr))
    pooled = f_tr.mean(dim=(2, 3))
    probs = torch.softmax(10 * pooled @ w_cam.T, dim=1)
    conf = confusing_classes(mean_scores_by_class(probs, y_tr, k), tail, 2)
    sampler = FSASampler(y_tr, head, tail, conf, n_t=8, n_a=2, generator=torch.Generator().manual_seed(seed + 1))
    clf = _phase_i(pooled, y_tr, k, c) if from_phase_i else _zero_linear(c, k)
    opt = torch.optim.SGD(clf.parameters(), lr=0.5, momentum=0.9)
    for _ in range(steps):
        x, y = build_batch(sampler, pooled, f_tr, cams, 0.8, 0.2, augment=augment)
        loss = torch.nn.functional.cross_entropy(clf(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return _accuracy(clf, f_te, y_te, k)


def test_effect_fsa_helps_tail_class_over_no_aug_control():
    acc_aug = _finetune(augment=True)
    acc_ctl = _finetune(augment=False)
    # the control overfits to the tail samples' background; FSA decorrelates it
    assert acc_ctl[2] < 0.5, acc_ctl
    assert acc_aug[2] > acc_ctl[2] + 0.3, (acc_aug, acc_ctl)
    assert np.mean(acc_aug) > np.mean(acc_ctl), (acc_aug, acc_ctl)


def test_effect_phase_iii_raises_tail_accuracy_over_phase_i():
    """Phase III (classifier initialised from Phase I) raises the tail class over Phase I."""
    f_tr, y_tr, f_te, y_te, k, c = _toy_problem(0)
    acc_i = _accuracy(_phase_i(f_tr.mean(dim=(2, 3)), y_tr, k, c), f_te, y_te, k)
    acc_iii = _finetune(augment=True, from_phase_i=True)
    assert acc_i[2] < 0.5, acc_i  # plain training: the tail class is learnt as 'style 0'
    assert acc_iii[2] > acc_i[2] + 0.3, (acc_i, acc_iii)
    assert np.mean(acc_iii) > np.mean(acc_i), (acc_i, acc_iii)


def test_synthesize_refuses_maps_that_do_not_pair():
    """Donor rows come in blocks of n_a per tail row: a donor count that is not a multiple of the
    tail count, or no tail row at all, is a one-line ConfigError before any CAM work."""
    f = lambda n: (torch.rand(n, 4, 2, 2), torch.rand(n, 2, 2))  # noqa: E731
    for bt, bd in ((0, 3), (2, 3)):
        (ft, ct), (fd, cd) = f(bt), f(bd)
        with pytest.raises(ConfigError, match=f"{bd} donor maps do not pair with {bt} tail maps"):
            synthesize(ft, ct, fd, cd)
