"""Phase III: fine-tune the classifier on balanced batches with synthetic tail features.

The paper's Algorithm 1 (METHOD.md): the backbone is frozen, the FC layer starts from
Phase I and is trained with cross-entropy on batches of N_t real tail samples,
N_t x N_a synthetic tail samples (class-specific part of a tail sample fused with the
class-generic part of a donor from each confusing class) and N_t (1 + N_a) real head
samples.  `finetune.augment: false` is the paper's "No Aug" control.

Modes: "cached" reads the Phase II store (un-augmented feature maps); "online"
recomputes maps and CAMs through the frozen backbone under training augmentation for
every batch (for data sets whose maps cannot be stored).  The test set goes through the
frozen backbone once; evaluation is then the classifier on those pooled features.
"""
from __future__ import annotations

import copy
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from ..config import Config
from ..data import build_dataset, class_counts, make_loader, validation_source
from ..engine import distributed as dist
from ..engine.checkpoint import check_compatible, load_checkpoint, load_model_state, save_checkpoint
from ..engine.metrics import confusion_matrix, logit_stats, logit_sums, relative_shift, summarize
from ..engine.run import seed_everything
from ..engine.trainer import FP32_NOTE, feature_maps
from ..errors import CheckpointError, ConfigError, DataError
from ..method import FSASampler, build_batch, cam_weights, class_activation_maps, normalize_cams, synthesize, usable_masks
from . import eval_features, rebalance, records, store
from .common import (build_model, command_hint, finish_phase, log_metrics, needs_staging, phase_run,
                     save_confusion_matrix, short_metrics, test_checkpoint, upstream_record)
from .phase_i import completed

PHASE = "phase_iii"


@torch.no_grad()
def pooled_features(model, loader, device, gather: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled backbone features (pre-logits) and labels of a whole loader, all ranks gathered
    (`gather`: False when every rank's loader covers the whole set)."""
    feats, labels = [], []
    for f, y in feature_maps(model, loader, device):
        feats.append(model.forward_head(f, pre_logits=True))
        labels.append(y)
    feats, labels = torch.cat(feats), torch.cat(labels)
    return (dist.all_gather_cat(feats), dist.all_gather_cat(labels)) if gather else (feats, labels)


@torch.no_grad()
def evaluate_head(fc: nn.Module, feats: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    pred = torch.cat([fc(f).argmax(1) for f in feats.split(8192)])
    return confusion_matrix(pred, labels, num_classes).cpu()


HISTORY_KEYS = ("iteration", "top1", "many", "medium", "few", "head", "tail")


@torch.no_grad()
def diagnose_head(fc: nn.Module, feats: torch.Tensor, is_head: torch.Tensor, start: dict | None) -> dict:
    """What a classifier does to the class prior on `feats` (`engine.metrics.logit_stats`: share of
    head predictions, logit norm, head-minus-tail logit gap) and how far its trained parameters moved
    from `start` (their values when training began; None: nothing trained)."""
    sums = torch.zeros(3, dtype=torch.float64)
    for f in feats.split(8192):
        sums += logit_sums(fc(f), is_head)
    out = logit_stats(sums, len(feats))
    out["shift"] = None if start is None else relative_shift(dict(fc.named_parameters()), start)
    return out


def _history_entry(m: dict, diag: dict) -> dict:
    return {**{k: m[k] for k in HISTORY_KEYS}, **diag}


def _draw(sampler, augment: bool) -> dict:
    """One FSA draw plus the images it needs, in the order [tail, donors or extra tail, head]."""
    d = sampler.sample()
    mid = d["donor_idx"].reshape(-1) if augment else sampler.draw_tail(sampler.n_t * sampler.n_a)
    d["mid_idx"] = mid
    d["all_idx"] = torch.cat([d["tail_idx"], mid, d["head_idx"]])
    return d


class _SamplerBatches:
    """DataLoader batch_sampler: each batch is one FSA draw; the draws wait in `pending`
    (the loader returns batches in the order they were drawn)."""

    def __init__(self, sampler, augment: bool):
        self.sampler, self.augment, self.pending = sampler, augment, []

    def __iter__(self):
        while True:
            d = _draw(self.sampler, self.augment)
            self.pending.append(d)
            yield d["all_idx"].tolist()

    def __len__(self):
        return 2**62


class OnlineBatches:
    """Online mode: the sampled images go through the frozen backbone under training
    augmentation, and their maps and CAMs (from the Phase I classifier) are made anew."""

    def __init__(self, cfg, model, phase_i_weight, train_set, sampler, device, generator, augment: bool, seed: int):
        self.cfg, self.model, self.weight = cfg, model, phase_i_weight
        self.sampler, self.device, self.gen, self.augment = sampler, device, generator, augment
        self.in_memory = hasattr(train_set, "data") and cfg.train.fast_path != "off"
        if self.in_memory:
            from ..data.device_loader import DeviceLoader

            self.images = DeviceLoader(train_set.data, train_set.targets, 1, device, train_set.mean,
                                       train_set.std, train=True, seed=seed)
        else:
            self.batcher = _SamplerBatches(sampler, augment)
            loader = torch.utils.data.DataLoader(
                build_dataset(cfg, "train", augment=True), batch_sampler=self.batcher,
                num_workers=cfg.dataset.num_workers, pin_memory=device.type == "cuda")
            self._it = iter(loader)

    @torch.no_grad()
    def next(self):
        s = self.sampler
        if self.in_memory:
            d = _draw(s, self.augment)
            x = self.images.augment_indices(d["all_idx"], self.gen)
        else:
            x = next(self._it)[0].to(self.device, non_blocking=True)
            d = self.batcher.pending.pop(0)
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        fm = self.model.forward_features(x).float()  # extraction: fp32 (engine.trainer.PRECISION_RULE)
        nt, nm = s.n_t, d["mid_idx"].numel()
        pooled = fm.mean((2, 3))
        if self.augment:
            lab = torch.cat([d["tail_labels"], s.labels[d["mid_idx"]]])
            cams = normalize_cams(class_activation_maps(fm[: nt + nm], self.weight, lab))
            e = self.cfg.extract
            mid, _ = synthesize(fm[:nt], cams[:nt], fm[nt: nt + nm], cams[nt: nt + nm], e.tau_s, e.tau_g,
                                generator=self.gen, gamma_range=tuple(self.cfg.finetune.gamma_range))
            mid_labels = d["tail_labels"].repeat_interleave(s.n_a)
        else:
            mid, mid_labels = pooled[nt: nt + nm], s.labels[d["mid_idx"]]
        feats = torch.cat([pooled[:nt], mid, pooled[nt + nm:]])
        labels = torch.cat([d["tail_labels"], mid_labels, d["head_labels"]])
        return feats, labels


METHOD_NAMES = {"fsa": "fsa", "crt": "crt", "lws": "lws", "tau_norm": "tau-norm", "la_posthoc": "la-posthoc"}


def output_note(cfg: Config, note: str) -> str:
    """Where a Phase III run writes: <note>[-<variant>][-<method>[-store|-val]|-online][-fs<finetune.seed>][-noaug].
    The "No Aug" control, the baselines, variants and Phase III seeds sit beside the FSA run and read
    the same Phase I model and Phase II store: ``-store`` is cRT / LWS on the stored features (not
    their recipe), ``-val`` post-hoc LA with tau chosen on validation, ``-online`` FSA over images
    through the frozen backbone (finetune.mode=online)."""
    f = cfg.finetune
    out = f"{note}-{f.variant}" if f.variant else note
    if f.method != "fsa":
        out += f"-{METHOD_NAMES[f.method]}"
        if f.method in ("crt", "lws") and cfg.baseline.input == "store":
            out += "-store"
        if f.method == "la_posthoc" and f.tau_from == "validation":
            out += "-val"
    elif f.mode == "online":
        out += "-online"
    if f.seed is not None:
        out += f"-fs{f.seed}"
    return out if f.augment else f"{out}-noaug"


def finetune(cfg: Config, note: str, workdir=".", device=None, force: bool = False, upstream: dict | None = None,
             say=print) -> dict:
    """Phase III of `cfg` over the finished Phase I and II of `note` (`upstream`: their records,
    found on disk when not given), written to `output_note(cfg, note)`."""
    dist.init_from_env(device)
    workdir = Path(workdir)
    out = output_note(cfg, note)
    if upstream is None:
        rec_i = upstream_record(workdir, "phase_i", cfg, note, consumer=PHASE)
        upstream = {"phase_i": rec_i, "phase_ii": upstream_record(workdir, "phase_ii", cfg, note, {"phase_i": rec_i})}
    state = records.inspect_phase(workdir, PHASE, cfg, out, upstream=upstream, force=force,
                                  command=command_hint(PHASE, cfg, note))
    if state.status == "complete" and not force:
        say(f"[{PHASE}] {cfg.name} / {out}: complete outputs with these settings and these Phase I / II outputs; reusing them")
        return completed(workdir, PHASE, cfg.name, out)
    if state.status == "stale":
        say(f"[{PHASE}] {cfg.name} / {out}: {state.reason}; fine-tuning again")
    prep = _prepare(cfg, note, workdir, upstream)  # every check that needs no training, before any folder
    with phase_run(cfg, PHASE, out, workdir, device, staging=needs_staging(state, force)) as run:
        return _finetune(cfg, run, note, prep, upstream)


def check_choices(cfg: Config) -> None:
    """A method that must choose something has somewhere to choose it (a ConfigError before any work)."""
    f = cfg.finetune
    if f.method == "tau_norm" and f.tau is None and not cfg.dataset.validation and cfg.model.classifier != "cosine":
        raise ConfigError("finetune.method=tau_norm has no default tau: it is chosen on a validation split "
                          "(dataset.validation=true) or set (finetune.tau=...)")
    if cfg.dataset.validation:
        validation_source(cfg)  # a data set without a validation split: a one-line DataError


def _prepare(cfg: Config, note: str, workdir: Path, upstream: dict) -> dict:
    f, e = cfg.finetune, cfg.extract
    folder = workdir / "feature" / cfg.name / note
    index = store.read_index(folder)
    if index.get("phase_i_run_id") not in (None, upstream["phase_i"]["run_id"]):
        raise CheckpointError(f"{folder / 'index.json'} was made from another Phase I run than "
                              f"{cfg.name} / {note} holds now: redo Phase II (fsa-lt extract --force)")
    if abs(float(index["h_r"]) - e.h_r) > 1e-12:
        raise ConfigError(f"extract.h_r={e.h_r} differs from the h_r={index['h_r']} of the Phase II store {folder}: "
                          "Phase III samples and reports head/tail by the store's split; extract again with this h_r "
                          "(under another --note) or drop the override")
    train_set = build_dataset(cfg, "train", augment=False)
    test_set = build_dataset(cfg, "test")
    counts = class_counts(train_set)
    K = len(counts)
    if index["num_classes"] != K or index["class_counts"] != counts.tolist():
        raise DataError(f"{folder / 'index.json'} was extracted from another training set "
                        f"({index['num_classes']} classes) than {cfg.dataset.name} now ({K} classes)")
    if index["n_f"] < f.n_a:
        raise ConfigError(f"finetune.n_a={f.n_a} exceeds the {index['n_f']} confusing classes of the store")
    mode = f.mode or index["mode"]
    if mode == "cached" and index["mode"] != "cached":
        raise ConfigError(f"finetune.mode=cached needs a cached feature store; {folder} was extracted online")
    check_choices(cfg)
    val_set = None
    if cfg.dataset.validation:
        val_set = build_dataset(cfg, "val")
        if val_set.num_classes != K:
            raise DataError(f"the validation split has {val_set.num_classes} classes, the training split {K}")
        if len(val_set) == 0:
            raise DataError(f"the validation split ({validation_source(cfg)}) holds no image")
    ckpt = records.resolve(workdir, index["checkpoint"])
    state = load_checkpoint(ckpt, expect_phase="phase_i")
    check_compatible(state, ckpt, cfg.model.name, K)
    if mode == "cached":
        store.check_shards(folder, index)
    return {"folder": folder, "index": index, "train_set": train_set, "test_set": test_set, "val_set": val_set,
            "counts": counts, "mode": mode, "ckpt": ckpt, "state": state}


def _full_state(backbone, head, cfg, counts, iteration, metrics, index) -> dict:
    """A whole model (the frozen backbone, the Phase III classifier) as a checkpoint; a baseline's
    classifier is folded into the model's own head, or kept as ``logit_adjust`` where it cannot be."""
    model = copy.deepcopy(backbone).cpu()
    model.reset_classifier(len(counts))
    state, adjust = rebalance.head_state(head, model.get_classifier())
    model.get_classifier().load_state_dict(state)
    extra = {"logit_adjust": adjust} if adjust is not None else {}
    return {**extra,
        "phase": PHASE, "model_name": cfg.model.name, "num_classes": len(counts),
        "class_counts": torch.as_tensor(counts), "model": model.state_dict(), "iteration": iteration,
        "epoch": iteration, "metrics": metrics, "config": cfg.to_dict(),
        "augment": cfg.finetune.augment, "mode": cfg.finetune.mode or index["mode"], "phase_i_checkpoint": index["checkpoint"],
    }


def _finetune(cfg: Config, run, note: str, prep: dict, upstream: dict) -> dict:
    f, e, b = cfg.finetune, cfg.extract, cfg.baseline
    dev = run.device
    seed = cfg.seed if f.seed is None else f.seed
    seed_everything(seed)
    folder, index, train_set, test_set = prep["folder"], prep["index"], prep["train_set"], prep["test_set"]
    counts, mode = prep["counts"], prep["mode"]
    K = len(counts)
    tau_s, tau_g = e.tau_s, e.tau_g  # thresholds apply here, so they can be swept without Phase II
    backbone = build_model(cfg, K, dev, pretrained=False)
    load_model_state(backbone, prep["state"], prep["ckpt"])
    seed_everything(seed)  # build_model seeds its initialisation with `seed`; what follows draws with Phase III's
    backbone.eval()
    for p in backbone.parameters():
        p.requires_grad_(False)
    phase_i_weight = cam_weights(backbone.get_classifier()).clone()
    fc = copy.deepcopy(backbone.get_classifier()).float()
    for p in fc.parameters():
        p.requires_grad_(True)

    world, rank = dist.world_size(), dist.rank()
    if f.n_t % world:
        raise ConfigError(f"finetune.n_t={f.n_t} is not divisible by the world size {world}")
    recipe = f.method in ("crt", "lws") and b.input == "images"
    if recipe and b.batch_size % world:
        raise ConfigError(f"baseline.batch_size={b.batch_size} is not divisible by the world size {world}")
    gen = torch.Generator(device=dev).manual_seed(seed * 7919 + rank)
    head = np.asarray(index["head"], dtype=np.int64)
    tail = np.asarray(index["tail"], dtype=np.int64)
    confusing = torch.tensor([index["confusing"][str(int(c))] for c in tail], dtype=torch.long)
    labels = torch.as_tensor(np.asarray(train_set.targets), dtype=torch.long, device=dev)
    sampler = FSASampler(labels, head, tail, confusing, n_t=f.n_t // world, n_a=f.n_a,
                         tail_sampling=f.tail_sampling, generator=gen, device=dev, rest_sampling=f.rest_sampling)

    t0 = time.perf_counter()
    splits = _EvalSplits(cfg, prep, backbone, dev)
    test_feats, test_labels = splits.test
    val = splits.val
    if mode == "cached":
        # maps and CAMs in (device) memory, or memory-mapped and gathered per batch (store.open_store)
        fmaps, cams, store_labels, pooled_real, how = store.open_store(folder, index, dev, e.store_access)
        if not torch.equal(store_labels, labels.cpu()):
            raise DataError(f"{folder}: stored labels differ from the training set (order or content)")
        run.log.info(f"feature store {how}")
        batches = None
        # each stored sample's usable locations, once: the same batches without per-batch CAM work
        masks = usable_masks(fmaps, cams, tau_s, tau_g) if f.method == "fsa" and f.augment else None
    else:
        fmaps = cams = pooled_real = masks = None
        batches = (OnlineBatches(cfg, backbone, phase_i_weight, train_set, sampler, dev, gen, f.augment, seed)
                   if f.method == "fsa" else None)
    batch = 2 * sampler.n_t * (1 + f.n_a)
    if f.method == "fsa":
        rest = "head" if f.rest_sampling == "head" else f"drawn {f.rest_sampling} from every class"
        lo, hi = f.gamma_range
        gamma = "" if (lo, hi) == (0.0, 1.0) else f"; gamma ~ U({lo:g}, {hi:g})"
        what = (f"augmentation {'on' if f.augment else 'OFF (No-Aug control)'}; batch {batch} per rank x {world} "
                f"({sampler.n_t} tail, {sampler.n_t * f.n_a} {'synthetic' if f.augment else 'extra real'} tail, "
                f"{sampler.n_t * (1 + f.n_a)} {rest}); tau_s {tau_s} tau_g {tau_g}{gamma}")
    else:
        what = f"method {f.method} (a baseline on the frozen backbone, not FSA)"
    run.log.info(f"mode {mode}; {what}; head {len(head)} / tail {len(tail)} classes; seed {seed}; "
                 f"precision {FP32_NOTE}; evaluation features {splits.how}; setup {time.perf_counter() - t0:.1f}s")

    is_head = torch.zeros(K, dtype=torch.bool, device=test_feats.device)
    is_head[torch.as_tensor(head, dtype=torch.long, device=test_feats.device)] = True
    m0 = summarize(evaluate_head(fc, test_feats, test_labels, K), counts, e.h_r)
    m0["iteration"] = 0
    log_metrics(run, "test", m0, 0)
    diag0 = diagnose_head(fc, test_feats, is_head, None)
    history = [_history_entry(m0, diag0)]
    extra_payload, plan = {}, None
    if f.method == "fsa":
        def next_batch():
            if mode == "cached":
                return build_batch(sampler, pooled_real, fmaps, cams, tau_s, tau_g, augment=f.augment, generator=gen,
                                   masks=masks, gamma_range=tuple(f.gamma_range))
            return batches.next()

        head_module, plan = fc, rebalance.fsa_plan(f)
        plan.loss, extra_payload["loss"] = rebalance.fsa_loss(cfg, counts, head, tail, dev)
    elif f.method in ("crt", "lws"):
        head_module = rebalance.baseline_head(f.method, fc, backbone, seed)
        if recipe:
            plan = rebalance.recipe_plan(b, f.method, len(train_set), world)
            next_batch = rebalance.RecipeBatches(
                backbone, train_set, labels, b.batch_size // world, b.samples_per_class, b.bn, dev, seed, rank,
                lambda: build_dataset(cfg, "train", augment=True), cfg.dataset.num_workers)
            extra_payload["input"] = "images"
        else:
            if pooled_real is None:  # an online store: the pooled features of the training images, once
                train_loader = make_loader(train_set, cfg, dev, train=False, batch_size=cfg.train.eval_batch_size,
                                           shard=False)
                pooled_real = pooled_features(backbone, train_loader, dev, gather=False)[0]
            plan = rebalance.fsa_plan(f)
            plan.what = "like for like with FSA (stored features, class-balanced draws): " + plan.what
            next_batch = rebalance.store_batches(pooled_real, labels, batch, gen)
            extra_payload["input"] = "store"
        run.log.info(f"{f.method}: {plan.what}")
    else:
        head_module, extra_payload["tau"] = rebalance.fixed_head(f, fc, counts, val, run.log.info)
    extra_payload["recipe"] = plan.what if plan is not None else "no training"

    t1 = time.perf_counter()
    ckpt_dir = run.dirs["ckpt"]
    best = None
    start = {n: p.detach().clone() for n, p in head_module.named_parameters() if p.requires_grad} if plan else None
    select = rebalance.ValidationSelect(head_module, val[0], val[1]) if f.select == "validation" else None
    if select is not None:
        select.offer(0)
    if plan is not None:
        best = _train_head(run, cfg, head_module, next_batch, plan, test_feats, test_labels, counts, history,
                           backbone, index, lambda: diagnose_head(head_module, test_feats, is_head, start),
                           on_eval=select.offer if select is not None else None)
    iterations = plan.iterations if plan is not None else 0
    dt = time.perf_counter() - t1
    chosen = iterations
    if select is not None:
        select.offer(iterations)
        if select.chosen != iterations:  # the last classifier's test view stays in the history
            m_last = summarize(evaluate_head(head_module, test_feats, test_labels, K), counts, e.h_r)
            m_last["iteration"] = iterations
            history.append(_history_entry(m_last, diagnose_head(head_module, test_feats, is_head, start)))
        extra_payload["selection"] = select.restore()
        chosen = extra_payload["selection"]["iteration"]
        run.log.info(f"iteration {chosen} of {iterations} chosen on the validation split (class-balanced accuracy "
                     f"{extra_payload['selection']['validation_accuracy']:.2f}): the run's final classifier")
    if recipe and b.bn == "train":  # the backbone's running statistics moved: its features, anew
        if world > 1:  # each rank moved them on its own batches: one model, the mean of the ranks'
            for name, buf in backbone.named_buffers():
                if name.endswith(("running_mean", "running_var")):
                    buf.copy_(dist.all_reduce_sum(buf.clone()) / world)
        splits.recompute(backbone)
        test_feats, test_labels = splits.test
        val = splits.val
    cm = evaluate_head(head_module, test_feats, test_labels, K)
    final = summarize(cm, counts, e.h_r)
    final["iteration"] = chosen
    if plan is None:  # nothing trained: the adjusted classifier is the only point
        history = []
    diag = diagnose_head(head_module, test_feats, is_head, start)
    if chosen == iterations:  # an earlier chosen classifier is in the history already, and so is the last
        history.append(_history_entry(final, diag))
    log_metrics(run, "test", final, iterations)
    run.log.info(_diag_line(diag0, diag))
    save_confusion_matrix(run, cm)
    if run.main:
        st = _full_state(backbone, head_module, cfg, counts, chosen, final, index)
        save_checkpoint(ckpt_dir / "last.pt", st)
        if best is None or final["top1"] > best["top1"]:
            best = final
            save_checkpoint(ckpt_dir / "best_model.pt", st)
    if val is not None:
        extra_payload.update(_on_validation(run, f, head_module, val, test_feats, test_labels, counts, e.h_r, K, dev))
    run.log.info(f"{iterations} iterations in {dt:.1f}s" + (f" ({iterations / dt:.1f} it/s)" if iterations else "")
                 + f"; final top1 {final['top1']:.2f} (Phase I {m0['top1']:.2f}); best {best['top1']:.2f} "
                 f"at iteration {best['iteration']} (test-set selected)")
    payload = {"final": final, "best": best, "phase_i": m0, "history": history, "method": f.method, **extra_payload}
    ck = run.dirs["ckpt"]
    inputs = {"phase_i": {"run_id": upstream["phase_i"]["run_id"], "checkpoint": index["checkpoint"]},
              "phase_ii": {"run_id": upstream["phase_ii"]["run_id"]}}
    rec = finish_phase(run, payload, inputs=inputs, outputs={"last.pt": ck / "last.pt", "best_model.pt": ck / "best_model.pt"},
                       summary={"final": short_metrics(final), "best (test-selected)": short_metrics(best)},
                       iterations_per_second=iterations / dt if iterations else None,
                       environment_extra={"precision": FP32_NOTE})
    return dict(payload, record=rec)


class _EvalSplits:
    """The pooled backbone features of the test split and, with dataset.validation, of the validation
    split; from the cache beside the store while the backbone is Phase I's (`eval_features`)."""

    def __init__(self, cfg, prep, backbone, dev):
        self.cfg, self.dev = cfg, dev
        self.sets = {"test": prep["test_set"], "val": prep["val_set"]}
        self.val_counts = (np.bincount(np.asarray(prep["val_set"].targets), minlength=len(prep["counts"]))
                           if prep["val_set"] is not None else None)
        self.feats, hits = {}, []
        for name, ds in self.sets.items():
            if ds is None:
                continue
            key = eval_features.cache_key(prep["ckpt"], name, ds, cfg.model.name)
            feats, labels, hit = eval_features.pooled(lambda ds=ds: self._compute(backbone, ds), prep["folder"], key,
                                                      len(ds), dev)
            self.feats[name] = (feats, labels)
            hits.append(f"{name} {'cached' if hit else 'computed'}")
        self.how = ", ".join(hits)

    def _compute(self, backbone, ds):
        loader = make_loader(ds, self.cfg, self.dev, train=False, batch_size=self.cfg.train.eval_batch_size)
        return pooled_features(backbone, loader, self.dev)

    def recompute(self, backbone):
        for name, ds in self.sets.items():
            if ds is not None:
                self.feats[name] = self._compute(backbone, ds)
        self.how = "recomputed after training (the backbone's BatchNorm statistics moved)"

    @property
    def test(self):
        return self.feats["test"]

    @property
    def val(self):
        if "val" not in self.feats:
            return None
        return (*self.feats["val"], self.val_counts)


def _on_validation(run, f, head_module, val, test_feats, test_labels, counts, h_r, K, dev) -> dict:
    """The final classifier on the validation split, and post-hoc logit adjustment on top of it with tau
    chosen there (grid [0, 2], 0 = the classifier as it is): what a prior correction adds to this method."""
    vf, vl, vc = val
    vm = summarize(evaluate_head(head_module, vf, vl, K), counts, h_r)
    out = {"validation": {"per_class_images": [int(c) for c in vc], "final": vm}}
    if f.method == "la_posthoc":
        return out
    info = rebalance.choose_on_validation(lambda t: rebalance.posthoc(head_module, counts, t, dev),
                                          rebalance.TAU_GRIDS["la_posthoc"], vf, vl, vc)
    adjusted = rebalance.posthoc(head_module, counts, info["tau"], dev)
    m = summarize(evaluate_head(adjusted, test_feats, test_labels, K), counts, h_r)
    out["posthoc_la"] = dict(info, final=m)
    run.log.info(f"+ post-hoc LA (tau {info['tau']:g} chosen on validation): top1 {m['top1']:.2f}")
    return out


def _diag_line(first: dict, last: dict) -> str:
    def gap(d):
        return "-" if d.get("head_tail_gap") is None else f"{d['head_tail_gap']:+.3f}"

    shift = "" if last.get("shift") is None else f"; trained parameters moved {last['shift']:.3f} of their norm"
    return (f"test predictions in head classes {first['pred_head']:.1f}% -> {last['pred_head']:.1f}%; mean logit norm "
            f"{first['logit_norm']:.2f} -> {last['logit_norm']:.2f}; head-minus-tail logit {gap(first)} -> {gap(last)}"
            + shift)


def _train_head(run, cfg: Config, head_module, next_batch, plan, test_feats, test_labels, counts, history, backbone,
                index, diagnose=None, on_eval=None):
    """The one Phase III loop: SGD with cross-entropy on `head_module` over `next_batch()` as `plan` says
    (FSA, its control, cRT and LWS); the test features evaluated every ``plan.eval_every`` iterations
    before the last (the caller evaluates the final head), each evaluation with `diagnose()`'s view
    of the prior into `history`, and `on_eval(iteration)` called there (the validation selection).
    Returns the best of those evaluations (test-set selected, reported as such) or None."""
    f, e = cfg.finetune, cfg.extract
    dev, world, K = run.device, dist.world_size(), len(counts)
    ckpt_dir = run.dirs["ckpt"]
    train_fc = DDP(head_module, device_ids=[dev.index] if dev.type == "cuda" else None) if world > 1 else head_module
    opt = torch.optim.SGD([p for p in train_fc.parameters() if p.requires_grad], lr=plan.lr, momentum=plan.momentum,
                          weight_decay=plan.weight_decay)
    best = None
    loss_sum = torch.zeros((), device=dev, dtype=torch.float64)
    t1 = time.perf_counter()
    for it in range(1, plan.iterations + 1):
        if plan.lr_at is not None:
            for g in opt.param_groups:
                g["lr"] = plan.lr_at(it)
        x, y = next_batch()
        loss = plan.loss(train_fc(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_sum += loss.detach()
        if it % plan.log_every == 0 or it == plan.iterations:
            n = plan.log_every if it % plan.log_every == 0 else it % plan.log_every
            avg = float(dist.all_reduce_sum(loss_sum.clone()) / world / n)
            loss_sum.zero_()
            run.scalar("train/loss", avg, it)
            run.log.info(f"iter {it:6d}/{plan.iterations} loss {avg:.4f} lr {opt.param_groups[0]['lr']:.5g} | "
                         f"{time.perf_counter() - t1:.1f}s")
        if plan.eval_every and it % plan.eval_every == 0 and it < plan.iterations:
            m = summarize(evaluate_head(head_module, test_feats, test_labels, K), counts, e.h_r)
            m["iteration"] = it
            history.append(_history_entry(m, diagnose() if diagnose else {}))
            log_metrics(run, "test", m, it)
            if on_eval is not None:
                on_eval(it)
            if best is None or m["top1"] > best["top1"]:
                best = m
                if run.main:
                    save_checkpoint(ckpt_dir / "best_model.pt", _full_state(backbone, head_module, cfg, counts, it, m, index))
        if run.main and it % f.save_every == 0 and plan.eval_every:
            save_checkpoint(ckpt_dir / f"model_iter_{it:06d}.pt", _full_state(backbone, head_module, cfg, counts, it, None, index))
    return best


def test(cfg: Config, note: str, workdir=".", device=None, checkpoint: str = "best") -> dict:
    """Evaluate a Phase III checkpoint; writes test_<checkpoint>.json, never the run's record."""
    dist.init_from_env(device)
    return test_checkpoint(cfg, note, workdir, device, checkpoint, PHASE, "iteration", out_note=output_note(cfg, note))
