"""FSA batch sampling and vectorised feature fusion (paper Algorithm 1, METHOD.md Phase III).

A Phase III batch is

* ``n_t`` real tail samples,
* ``n_t * n_a`` synthetic tail samples: for each real tail sample and each of the
  first ``n_a`` confusing classes of its class, one donor sample of that class; the
  synthetic sample's pooled feature is the mean of ``round(gamma L)`` vectors drawn
  (with replacement) from the tail map's class-specific locations and
  ``L - round(gamma L)`` drawn from the donor map's class-generic locations,
  ``gamma ~ U(0, 1)``; it is labelled with the tail class,
* ``n_t * (1 + n_a)`` real head samples (the paper; ``rest_sampling`` draws this half
  from every class instead, a variant),

so ``2 n_t (1 + n_a)`` samples (128 with the defaults ``n_t=16, n_a=3``).

Because global average pooling follows the fused map, the arrangement of the drawn
vectors does not matter and the fusion is computed directly in pooled form: per
location draw counts times the feature vectors, divided by ``L``.

Everything in the per-batch path is vectorised torch code on the sampler's device,
driven by a ``torch.Generator``; there is no Python loop over samples and no host
synchronisation (except moving indices to the host when the feature store itself is
kept in host memory).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from fsa_lt.errors import ConfigError
from fsa_lt.method.cam import _check_taus, decompose_masks, normalize_cams, usable_locations

REST_SAMPLING = ("head", "instance", "sqrt")

__all__ = ["FSASampler", "batch_prior", "check_gamma_range", "fuse_pooled", "synthesize", "usable_masks", "build_batch"]


def _as_long(x, device) -> Tensor:
    if isinstance(x, Tensor):
        return x.detach().to(device=device, dtype=torch.long).reshape(-1)
    return torch.as_tensor(np.asarray(x, dtype=np.int64).reshape(-1), device=device)


class FSASampler:
    """Draws the indices of one Phase III batch (real tail, donors, real head).

    Args:
        labels: ``N`` class ids of the training samples (the feature store's order).
        head_classes: head class ids (from :func:`~fsa_lt.method.split.head_tail_split`).
        tail_classes: tail class ids; row ``i`` of ``confusing`` belongs to
            ``tail_classes[i]``.
        confusing: LongTensor ``len(tail_classes) x n_f`` as returned by
            :func:`~fsa_lt.method.confusion.confusing_classes`.
        n_t: real tail samples per batch.
        n_a: donors (augmentations) per tail sample, ``1 <= n_a <= n_f``; the first
            ``n_a`` columns of ``confusing`` are used (METHOD.md default n_a = n_f).
        tail_sampling: ``'instance'`` [choice, default]: uniform over tail samples;
            ``'class'``: a tail class uniformly (among tail classes with at least
            one sample), then a sample of it uniformly.
        rest_sampling: the batch's other half, ``n_t (1 + n_a)`` real samples:
            ``'head'`` [choice, default, the paper]: uniform over head samples;
            ``'instance'`` (a variant): uniform over all training samples, so every
            class at its training frequency; ``'sqrt'`` (a variant): a class with
            probability proportional to the square root of its count, then a sample
            of it uniformly.
        generator: ``torch.Generator`` on ``device`` (a fresh unseeded one if None).
        device: where the index tables live and the draws happen (default: the
            device of ``labels`` if it is a tensor, else CPU).

    Raises:
        ConfigError: bad sizes, overlapping head/tail, no head or tail sample, a
            used confusing class that is the tail class itself, is out of range
            or has no training sample.
    """

    def __init__(
        self,
        labels,
        head_classes,
        tail_classes,
        confusing,
        n_t: int = 16,
        n_a: int = 3,
        tail_sampling: str = "instance",
        generator: torch.Generator | None = None,
        device=None,
        rest_sampling: str = "head",
    ) -> None:
        if device is None:
            device = labels.device if isinstance(labels, Tensor) else torch.device("cpu")
        device = torch.device(device)
        self.device = device
        self.n_t = int(n_t)
        self.n_a = int(n_a)
        if self.n_t < 1:
            raise ConfigError(f"n_t must be >= 1, got {n_t}")
        if tail_sampling not in ("instance", "class"):
            raise ConfigError(f"tail_sampling must be 'instance' or 'class', got {tail_sampling!r}")
        self.tail_sampling = tail_sampling
        if rest_sampling not in REST_SAMPLING:
            raise ConfigError(f"rest_sampling must be one of {', '.join(REST_SAMPLING)}, got {rest_sampling!r}")
        self.rest_sampling = rest_sampling

        labels_t = _as_long(labels, device)
        head = _as_long(head_classes, device)
        tail = _as_long(tail_classes, device)
        if isinstance(confusing, Tensor):
            conf = confusing.detach().to(device=device, dtype=torch.long)
        else:
            conf = torch.as_tensor(np.asarray(confusing, dtype=np.int64), device=device)
        if conf.dim() != 2:
            raise ConfigError(f"confusing must be a 2-d table (tail classes x n_f), got shape {tuple(conf.shape)}")
        if labels_t.numel() == 0:
            raise ConfigError("FSASampler: no training labels")
        if tail.numel() == 0:
            raise ConfigError("FSASampler: no tail class")
        if head.numel() == 0:
            raise ConfigError("FSASampler: no head class")
        if conf.shape[0] != tail.numel():
            raise ConfigError(
                f"confusing has {conf.shape[0]} rows but there are {tail.numel()} tail classes"
            )
        n_f = conf.shape[1]
        if not (1 <= self.n_a <= n_f):
            raise ConfigError(f"n_a must be in [1, n_f] = [1, {n_f}], got {n_a}")
        for name, t in (("labels", labels_t), ("head classes", head), ("tail classes", tail), ("confusing", conf)):
            if t.numel() and int(t.min()) < 0:
                raise ConfigError(f"FSASampler: negative class id in {name}")
        k = int(max(int(labels_t.max()), int(head.max()), int(tail.max()), int(conf.max()))) + 1
        self.num_classes = k
        is_head = torch.zeros(k, dtype=torch.bool, device=device)
        is_head[head] = True
        is_tail = torch.zeros(k, dtype=torch.bool, device=device)
        is_tail[tail] = True
        if bool((is_head & is_tail).any()):
            raise ConfigError("FSASampler: a class is both head and tail")
        if torch.unique(tail).numel() != tail.numel():
            raise ConfigError("FSASampler: repeated tail class")

        counts = torch.bincount(labels_t, minlength=k)
        used = conf[:, : self.n_a]
        if bool((used == tail[:, None]).any()):
            raise ConfigError("FSASampler: a tail class is listed among its own confusing classes")
        empty = used[counts[used] == 0]
        if empty.numel():
            raise ConfigError(
                "FSASampler: confusing class(es) without training samples: "
                + ", ".join(str(int(c)) for c in torch.unique(empty)[:10])
            )

        # samples sorted by class, with per-class offsets and counts
        self.labels = labels_t
        self.order = torch.argsort(labels_t, stable=True)
        self.class_counts = counts
        self.class_offsets = torch.cumsum(counts, 0) - counts
        self.tail_pool = torch.nonzero(is_tail[labels_t]).reshape(-1)
        self.head_pool = torch.nonzero(is_head[labels_t]).reshape(-1)
        if self.tail_pool.numel() == 0:
            raise ConfigError("FSASampler: no training sample of any tail class")
        if self.head_pool.numel() == 0:
            raise ConfigError("FSASampler: no training sample of any head class")
        self.tail_classes = tail
        self.head_classes = head
        self.tail_classes_nonempty = tail[counts[tail] > 0]
        self.sqrt_weights = counts.double().sqrt()  # 'sqrt': P(class j) proportional to sqrt(n_j)
        row = torch.full((k,), -1, dtype=torch.long, device=device)
        row[tail] = torch.arange(tail.numel(), device=device)
        self.class_to_row = row
        self.confusing = conf[:, : self.n_a].contiguous()
        if generator is None:
            generator = torch.Generator(device=device)
            generator.seed()
        elif torch.device(generator.device).type != device.type:
            raise ConfigError(f"FSASampler: generator is on {generator.device}, sampler on {device}")
        self.generator = generator

    # ------------------------------------------------------------------ draws
    @property
    def batch_size(self) -> int:
        """``2 n_t (1 + n_a)``: the size of a batch built from one :meth:`sample`."""
        return 2 * self.n_t * (1 + self.n_a)

    def _randint(self, high: int, size) -> Tensor:
        return torch.randint(0, high, size, generator=self.generator, device=self.device)

    def draw_from_classes(self, classes: Tensor) -> Tensor:
        """One sample index drawn uniformly from each class in ``classes`` (any shape).

        Every class must have at least one training sample.
        """
        cnt = self.class_counts[classes]
        u = torch.rand(classes.shape, generator=self.generator, device=self.device)
        pos = torch.minimum((u * cnt).long(), cnt - 1)  # clamp guards float rounding up to cnt
        return self.order[self.class_offsets[classes] + pos]

    def draw_tail(self, n: int) -> Tensor:
        """``n`` real tail sample indices under the sampler's ``tail_sampling`` rule."""
        if self.tail_sampling == "instance":
            return self.tail_pool[self._randint(self.tail_pool.numel(), (n,))]
        cls = self.tail_classes_nonempty[self._randint(self.tail_classes_nonempty.numel(), (n,))]
        return self.draw_from_classes(cls)

    def draw_head(self, n: int) -> Tensor:
        """``n`` real head sample indices, uniform among head samples [choice]."""
        return self.head_pool[self._randint(self.head_pool.numel(), (n,))]

    def draw_rest(self, n: int) -> Tensor:
        """``n`` indices of the batch's other half under ``rest_sampling``: head samples
        (:meth:`draw_head`, the paper), any training sample uniformly ('instance'), or a class
        with probability proportional to sqrt(n_j), then one of its samples ('sqrt')."""
        if self.rest_sampling == "head":
            return self.draw_head(n)
        if self.rest_sampling == "instance":
            return self._randint(self.labels.numel(), (n,))
        cls = torch.multinomial(self.sqrt_weights, n, replacement=True, generator=self.generator)
        return self.draw_from_classes(cls)

    def sample(self) -> dict[str, Tensor]:
        """Indices of one batch.

        Returns a dict of LongTensors on the sampler's device:
        ``tail_idx`` [n_t], ``tail_labels`` [n_t], ``donor_idx`` [n_t, n_a] (column j
        is a sample of the j-th confusing class of the tail sample's class),
        ``donor_classes`` [n_t, n_a], ``head_idx`` [n_t (1 + n_a)], ``head_labels`` (the batch's
        other half, drawn by :meth:`draw_rest`: head samples unless ``rest_sampling`` says otherwise).
        """
        tail_idx = self.draw_tail(self.n_t)
        tail_labels = self.labels[tail_idx]
        donor_classes = self.confusing[self.class_to_row[tail_labels]]
        donor_idx = self.draw_from_classes(donor_classes)
        head_idx = self.draw_rest(self.n_t * (1 + self.n_a))
        return {
            "tail_idx": tail_idx,
            "tail_labels": tail_labels,
            "donor_idx": donor_idx,
            "donor_classes": donor_classes,
            "head_idx": head_idx,
            "head_labels": self.labels[head_idx],
        }


# ---------------------------------------------------------------------- fusion
def batch_prior(class_counts, head_classes, tail_classes, tail_sampling: str = "instance",
                rest_sampling: str = "head") -> Tensor:
    """The class prior q that FSA's batches impose: the expected fraction of a batch's labels in each class.

    Half of a batch is the real tail samples and the synthetic (or, for the No-Aug control, extra
    real) samples made from them, all labelled with the drawn tail sample's class, so that half
    gives a tail class n_j / (2 N_tail) under instance sampling and 1 / (2 |T|) under class
    sampling. The other half (``rest_sampling``) gives, under 'head' (the paper: uniform over the
    head classes' images), a head class n_j / (2 N_head); under 'instance', every class
    n_j / (2 N); under 'sqrt', every class sqrt(n_j) / (2 sum_k sqrt(n_k)). The two halves add.
    A class neither half draws gets 0. Float64, sums to 1.
    """
    n = torch.as_tensor(np.asarray(class_counts, dtype=np.float64))
    head = torch.as_tensor(np.asarray(head_classes, dtype=np.int64)).reshape(-1)
    tail = torch.as_tensor(np.asarray(tail_classes, dtype=np.int64)).reshape(-1)
    if head.numel() == 0 or tail.numel() == 0:
        raise ConfigError("batch_prior: needs head and tail classes")
    q = torch.zeros_like(n)
    if tail_sampling == "class":
        present = tail[n[tail] > 0]
        q[present] = 0.5 / present.numel()
    elif tail_sampling == "instance":
        q[tail] = 0.5 * n[tail] / n[tail].sum()
    else:
        raise ConfigError(f"tail_sampling must be 'instance' or 'class', got {tail_sampling!r}")
    if rest_sampling == "head":
        q[head] += 0.5 * n[head] / n[head].sum()
    elif rest_sampling == "instance":
        q += 0.5 * n / n.sum()
    elif rest_sampling == "sqrt":
        q += 0.5 * n.sqrt() / n.sqrt().sum()
    else:
        raise ConfigError(f"rest_sampling must be one of {', '.join(REST_SAMPLING)}, got {rest_sampling!r}")
    return q


def fuse_pooled(
    fmap_tail: Tensor,
    spec_usable: Tensor,
    fmap_donor: Tensor,
    gen_usable: Tensor,
    gamma,
    generator: torch.Generator | None = None,
    return_counts: bool = False,
):
    """Pooled feature of fused maps (Algorithm 1, drawn directly in pooled form).

    For each row ``b`` with ``L = H W`` locations, ``k_b = round(gamma_b L)``
    (``torch.round``: half to even) locations are drawn uniformly with replacement
    from the usable specific locations ``S_b`` of ``fmap_tail[b]`` and ``L - k_b``
    from the usable generic locations ``G_b`` of ``fmap_donor[b]``; the result is
    the sum of the drawn vectors divided by ``L``.

    * ``S_b`` empty: all ``L`` draws come from ``G_b``; ``G_b`` empty: all from ``S_b``.
    * [choice] both empty: the tail sample's plain average-pooled feature
      ``fmap_tail[b].mean((1, 2))`` (nothing can be fused, so the real sample is kept).

    Args:
        fmap_tail, fmap_donor: ``B x C x H x W`` (any float dtype, computed in float32).
        spec_usable, gen_usable: ``B x L`` (or ``B x H x W``) bool, typically from
            :func:`~fsa_lt.method.cam.usable_locations`.
        gamma: ``B`` tensor (or a number) in ``[0, 1]``.
        generator: ``torch.Generator`` on the maps' device, for the draws.
        return_counts: also return the per-location draw counts.

    Returns:
        ``pooled`` (``B x C`` float32), or ``(pooled, counts_spec, counts_gen)`` with
        ``B x L`` float32 counts (how often each location of the tail / donor map
        was drawn; each row of the two sums to ``L``, or to 0 in the both-empty case).
    """
    if fmap_tail.dim() != 4 or fmap_donor.shape != fmap_tail.shape:
        raise ConfigError(
            f"fuse_pooled: tail and donor maps must both be B x C x H x W of one shape, "
            f"got {tuple(fmap_tail.shape)} and {tuple(fmap_donor.shape)}"
        )
    b, c, h, w = fmap_tail.shape
    loc = h * w
    dev = fmap_tail.device
    s = spec_usable.reshape(b, -1).to(device=dev, dtype=torch.bool)
    g = gen_usable.reshape(b, -1).to(device=dev, dtype=torch.bool)
    if s.shape[1] != loc or g.shape[1] != loc:
        raise ConfigError(f"fuse_pooled: masks must have {loc} locations per sample")
    gam = torch.as_tensor(gamma, dtype=torch.float32, device=dev).expand(b)
    k = torch.round(gam.clamp(0.0, 1.0) * loc).long()

    has_s = s.any(dim=1)
    has_g = g.any(dim=1)
    k = torch.where(has_s & has_g, k, torch.where(has_s, torch.full_like(k, loc), torch.zeros_like(k)))
    k_g = torch.where(has_g, loc - k, torch.zeros_like(k))

    # multinomial needs a positive row sum: rows with an empty set draw from a dummy
    # uniform row, and the position mask below discards those draws (k or k_g is 0).
    ws = torch.where(has_s[:, None], s.float(), torch.ones_like(s, dtype=torch.float32))
    wg = torch.where(has_g[:, None], g.float(), torch.ones_like(g, dtype=torch.float32))
    draw_s = torch.multinomial(ws, loc, replacement=True, generator=generator)  # B x L location ids
    draw_g = torch.multinomial(wg, loc, replacement=True, generator=generator)
    pos = torch.arange(loc, device=dev)[None, :]
    keep_s = (pos < k[:, None]).float()
    keep_g = (pos < k_g[:, None]).float()
    counts_s = torch.zeros(b, loc, dtype=torch.float32, device=dev).scatter_add_(1, draw_s, keep_s)
    counts_g = torch.zeros(b, loc, dtype=torch.float32, device=dev).scatter_add_(1, draw_g, keep_g)

    ft = fmap_tail.float().reshape(b, c, loc)
    fd = fmap_donor.float().reshape(b, c, loc)
    pooled = (torch.einsum("bcl,bl->bc", ft, counts_s) + torch.einsum("bcl,bl->bc", fd, counts_g)) / loc
    neither = ~(has_s | has_g)
    pooled = torch.where(neither[:, None], ft.mean(dim=2), pooled)
    if return_counts:
        return pooled, counts_s, counts_g
    return pooled


def synthesize(
    fmap_tail: Tensor,
    cam_tail: Tensor,
    fmap_donor: Tensor,
    cam_donor: Tensor,
    tau_s: float = 0.8,
    tau_g: float = 0.2,
    generator: torch.Generator | None = None,
    gamma=None,
    return_counts: bool = False,
    gamma_range: tuple[float, float] = (0.0, 1.0),
):
    """Synthetic tail samples (pooled) from tail maps and donor maps.

    Args:
        fmap_tail: ``Bt x C x H x W`` tail maps; ``cam_tail``: ``Bt x H x W`` their CAMs
            (for their own class).
        fmap_donor: ``B x C x H x W`` donor maps with ``B = Bt * n_a``; ``cam_donor``
            ``B x H x W`` their CAMs (for the donor's own class). Donor rows
            ``i*n_a .. i*n_a + n_a - 1`` pair with tail row ``i`` (the order of
            ``donor_idx.reshape(-1)``); with ``B == Bt`` rows pair one to one.
        tau_s, tau_g: mask thresholds (specific ``> tau_s`` on the tail CAM,
            generic ``< tau_g`` on the donor CAM).
        generator: for gamma and the draws.
        gamma: ``B`` mixing ratios; ``U(0, 1)`` [choice] if None.
        gamma_range: ``(lo, hi)`` with ``0 <= lo <= hi <= 1``: gamma drawn ``U(lo, hi)``
            (``lo + (hi - lo) u``, u the same uniform draw) when ``gamma`` is None; the
            default ``(0, 1)`` is the paper's (a variant otherwise).

    CAMs are expected normalised (:func:`~fsa_lt.method.cam.normalize_cams`); they
    are min-max normalised again here, which leaves normalised maps unchanged
    (min-max is idempotent) and makes raw CAMs safe.

    Returns:
        ``(pooled B x C float32, gamma B)`` (plus the two count tensors of
        :func:`fuse_pooled` if ``return_counts``).
    """
    _check_taus(tau_s, tau_g)
    check_gamma_range(gamma_range)
    bt, bd = fmap_tail.shape[0], fmap_donor.shape[0]
    if bt == 0 or bd % bt != 0:  # before any CAM work (an empty tail batch cannot be normalised)
        raise ConfigError(f"synthesize: {bd} donor maps do not pair with {bt} tail maps")
    spec = usable_locations(fmap_tail, decompose_masks(normalize_cams(cam_tail), tau_s, tau_g)[0].to(fmap_tail.device))
    gen = usable_locations(fmap_donor, decompose_masks(normalize_cams(cam_donor), tau_s, tau_g)[1].to(fmap_donor.device))
    return _fuse_paired(fmap_tail, spec, fmap_donor, gen, generator, gamma, return_counts, gamma_range)


def check_gamma_range(gamma_range) -> tuple[float, float]:
    """``(lo, hi)`` as floats, or a ConfigError unless ``0 <= lo <= hi <= 1``."""
    try:
        lo, hi = (float(v) for v in gamma_range)
    except (TypeError, ValueError):
        raise ConfigError(f"gamma_range must be two numbers (lo, hi), got {gamma_range!r}") from None
    if not 0.0 <= lo <= hi <= 1.0:
        raise ConfigError(f"gamma_range must satisfy 0 <= lo <= hi <= 1, got ({lo:g}, {hi:g})")
    return lo, hi


def _fuse_paired(fmap_tail: Tensor, spec: Tensor, fmap_donor: Tensor, gen: Tensor, generator, gamma,
                 return_counts: bool, gamma_range=(0.0, 1.0)):
    """:func:`synthesize` once the usable locations are known (and the rows checked to pair, as
    :func:`synthesize` and the sampler's donor blocks guarantee): pair the rows, draw gamma, fuse."""
    bt, bd = fmap_tail.shape[0], fmap_donor.shape[0]
    dev = fmap_donor.device
    rep = bd // bt
    ft = fmap_tail.to(dev)
    if rep > 1:
        ft = ft.repeat_interleave(rep, dim=0)
        spec = spec.to(dev).repeat_interleave(rep, dim=0)
    if gamma is None:
        gamma = torch.rand(bd, generator=generator, device=dev)
        lo, hi = float(gamma_range[0]), float(gamma_range[1])
        if (lo, hi) != (0.0, 1.0):  # the default stays the plain draw, bit for bit
            gamma = lo + (hi - lo) * gamma
    else:
        gamma = torch.as_tensor(gamma, dtype=torch.float32, device=dev).expand(bd)
    out = fuse_pooled(ft, spec, fmap_donor, gen, gamma, generator=generator, return_counts=return_counts)
    if return_counts:
        pooled, cs, cg = out
        return pooled, gamma, cs, cg
    return out, gamma


def usable_masks(fmaps: Tensor, cams: Tensor, tau_s: float = 0.8, tau_g: float = 0.2,
                 chunk: int = 4096) -> tuple[Tensor, Tensor]:
    """Every stored sample's usable class-specific and class-generic locations, once.

    Row ``i`` is what :func:`synthesize` computes for sample ``i`` when it is drawn (as a tail
    sample: the specific mask; as a donor: the generic one): the min-max normalised CAM
    thresholded at ``tau_s`` / ``tau_g``, less the locations whose feature vector is all zero.
    Both depend on the sample alone, so a Phase III that draws thousands of batches from one
    store computes them here in one pass instead of per draw (:func:`build_batch` ``masks=``),
    with bit-identical batches.

    Args:
        fmaps: ``N x C x H x W`` stored maps (CPU, device, or any row-sliceable store such as
            the memory-mapped one; read ``chunk`` rows at a time). cams: ``N x H x W`` their CAMs.

    Returns:
        ``(specific, generic)``: two ``N x L`` bool tensors on the maps' device.
    """
    _check_taus(tau_s, tau_g)
    n = fmaps.shape[0]
    if len(fmaps.shape) != 4 or cams.shape[0] != n:
        raise ConfigError(f"usable_masks: maps {tuple(fmaps.shape)} and CAMs {tuple(cams.shape)} do not pair")
    loc = fmaps.shape[2] * fmaps.shape[3]
    spec = torch.empty(n, loc, dtype=torch.bool, device=fmaps.device)
    gen = torch.empty(n, loc, dtype=torch.bool, device=fmaps.device)
    for a in range(0, n, chunk):
        f = fmaps[a:a + chunk]
        s, g = decompose_masks(normalize_cams(cams[a:a + chunk].to(f.device)), tau_s, tau_g)
        spec[a:a + chunk] = usable_locations(f, s)
        gen[a:a + chunk] = usable_locations(f, g)
    return spec, gen


def build_batch(
    sampler: FSASampler,
    pooled_real: Tensor | None,
    fmaps: Tensor,
    cams: Tensor,
    tau_s: float = 0.8,
    tau_g: float = 0.2,
    augment: bool = True,
    generator: torch.Generator | None = None,
    masks: tuple[Tensor, Tensor] | None = None,
    gamma_range: tuple[float, float] = (0.0, 1.0),
) -> tuple[Tensor, Tensor]:
    """One Phase III batch from a feature store (the "cached" mode).

    Args:
        sampler: the :class:`FSASampler` (its device is where the batch is built).
        pooled_real: ``N x C`` average-pooled features of the store (None: computed
            from the drawn maps).
        fmaps: ``N x C x H x W`` final feature maps (CPU or device, fp16 allowed;
            computation is float32).
        cams: ``N x H x W`` normalised CAMs of each sample for its own class.
        augment: True: FSA. False: the paper's "No Aug" control, the synthetic part
            is replaced by ``n_t n_a`` more real tail samples drawn the same way.
        generator: for gamma and the location draws (default: the sampler's).
        masks: the store's :func:`usable_masks` (None: computed from the drawn CAMs per
            batch); the same batch either way, without the per-batch CAM work.
        gamma_range: gamma ~ U(lo, hi) (see :func:`synthesize`; default the paper's U(0, 1)).

    Returns:
        ``(features, labels)``: ``2 n_t (1 + n_a) x C`` float32 and LongTensor, on the
        sampler's device, ordered [real tail (n_t), synthetic or extra real tail
        (n_t n_a), real head (n_t (1 + n_a))]; synthetic samples carry the class of
        their tail sample.
    """
    dev = sampler.device
    if generator is None:
        generator = sampler.generator
    d = sampler.sample()

    def gather(store: Tensor, idx: Tensor) -> Tensor:
        return store[idx.to(store.device)].to(dev).float()

    def pooled_of(idx: Tensor) -> Tensor:
        if pooled_real is not None:
            return gather(pooled_real, idx)
        return gather(fmaps, idx).mean(dim=(2, 3))

    tail_feat = pooled_of(d["tail_idx"])
    head_feat = pooled_of(d["head_idx"])
    if augment:
        donor = d["donor_idx"].reshape(-1)
        if masks is None:
            synth, _ = synthesize(gather(fmaps, d["tail_idx"]), gather(cams, d["tail_idx"]), gather(fmaps, donor),
                                  gather(cams, donor), tau_s, tau_g, generator=generator, gamma_range=gamma_range)
        else:
            spec, gen = masks
            synth, _ = _fuse_paired(gather(fmaps, d["tail_idx"]), spec[d["tail_idx"].to(spec.device)].to(dev),
                                    gather(fmaps, donor), gen[donor.to(gen.device)].to(dev), generator, None, False,
                                    check_gamma_range(gamma_range))
        mid_labels = d["tail_labels"].repeat_interleave(sampler.n_a)
    else:
        extra = sampler.draw_tail(sampler.n_t * sampler.n_a)
        synth = pooled_of(extra)
        mid_labels = sampler.labels[extra]
    feats = torch.cat([tail_feat, synth, head_feat], dim=0)
    labels = torch.cat([d["tail_labels"], mid_labels, d["head_labels"]], dim=0)
    return feats, labels
