"""Adapting frozen multimodal embeddings with a small contrastive head (Margaritis, Petridis & Bertsimas, 2025,
arXiv 2502.02048; the authors' code: github.com/margaeor/emb-adapt-cl).

What the authors' code does, and this module follows:
- **Head**: Linear(d, min(d // 2, 16)) -> ReLU -> Linear(16, 128): a 16-unit bottleneck, no output normalisation.
  Inputs are standardised per dimension with the training rows' statistics, as the authors' usage example does
  (`StandardScaler` before the projector); their MM-IMDb script feeds BERT/ViT [CLS] vectors unscaled.
- **Loss**: every pair (i < j) of a mini-batch is a positive if the two samples share the label, a negative
  otherwise; the pair's logit is the dot product of the two projections over a temperature (0.1), scored by
  binary cross-entropy. Adam, lr 1e-3, batch 128, 10 epochs; 20% of the training rows are held out to watch the
  loss and the pair AUC (no early stopping).
- **Fusion**: one head over the concatenated embeddings ("joint"), or one head per modality with the projections
  concatenated ("per-modality").
- **Baselines**: the raw (concatenated) embeddings and PCA to 128 dimensions (per modality or joint); the
  downstream classifiers are scikit-learn's with their defaults (decision tree, random forest, gradient boosting,
  MLP, logistic regression, RBF SVM with C = 1, gamma = 1). The authors' list also has XGBoost, left out here.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..bench import training_memory
from ..engine import TrainSpec, train
from ..finetune import batches, fit_classifier
from ..utils import progress, seed_everything
from .base import Method, option
from .registry import register
from .spt import full_finetune

FUSIONS = ("joint", "per-modality")
REPRESENTATIONS = ("raw", "pca", "head")


class ProjectionHead(nn.Module):
    """d -> min(d // 2, 16) -> ReLU -> out_dim, as the authors' `ProjectionHead`, on standardised inputs (the mean
    and scale of the head's training rows, kept as buffers)."""

    def __init__(self, in_dim: int, out_dim: int = 128):
        super().__init__()
        hidden = min(in_dim // 2, 16)
        self.fc1, self.fc2 = nn.Linear(in_dim, hidden), nn.Linear(hidden, out_dim)
        self.register_buffer("mean", torch.zeros(in_dim))
        self.register_buffer("scale", torch.ones(in_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1((x - self.mean) / self.scale)))


def pairs(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (i, j) of every pair i < j among n samples."""
    i, j = torch.triu_indices(n, n, offset=1)
    return i, j


def pair_loss(z: torch.Tensor, y: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Mean binary cross-entropy over all pairs i < j of the batch: logit <z_i, z_j> / T, target 1 iff y_i == y_j."""
    i, j = pairs(len(z))
    logits = (z[i] * z[j]).sum(1) / temperature
    return F.binary_cross_entropy_with_logits(logits, (y[i] == y[j]).float())


@dataclass
class HeadConfig:
    """The authors' defaults (`main_mmimdb.py`): 128 outputs, T = 0.1, batch 128, 10 epochs, Adam lr 1e-3. With a
    few hundred labelled rows an epoch is a handful of updates, so the ci chapter trains more epochs."""
    out_dim: int = option(128, "output dimension of the projection head", paper=128)
    temperature: float = option(0.1, "temperature of the pair loss", paper=0.1)
    batch_size: int = option(128, "embeddings per batch (the loss compares every pair in it)", paper=128)
    epochs: int = option(10, "passes over the labelled embeddings", paper=10, minimum=1)
    lr: float = option(1e-3, "Adam learning rate", paper=1e-3)
    monitor_fraction: float = option(0.2, "share held out from training to watch the loss and pair AUC")
    seed: int = option(0, "seed of the split, the initialisation and the batch order")
    device: str = option("cpu", "where the head trains (cuda for the paper's large embedding sets)")
    precision: str = option("fp32", "fp32, fp16 or bf16 (a GPU's autocast)")


@register("contrastive-head", "contrastive head")
class ContrastiveHead(Method):
    """A small projection head on frozen embeddings, trained with the pair loss (same label or not)."""
    family, backbones, chapter, config_class = "embeddings", ("embeddings",), "contrastive DA", HeadConfig

    def _apply(self, backbone, kind, data):
        return ProjectionHead(backbone, self.cfg.out_dim)

    def extra_state(self, model):
        """The standardisation of the inputs, set from the training rows."""
        return {"mean": model.mean, "scale": model.scale}


def pair_auc(z: torch.Tensor, y: torch.Tensor) -> float:
    """ROC AUC of cosine similarity for telling same-label pairs from different-label pairs."""
    from sklearn.metrics import roc_auc_score
    i, j = pairs(len(z))
    same = (y[i] == y[j]).numpy()
    if same.all() or not same.any():
        return float("nan")
    return float(roc_auc_score(same, F.cosine_similarity(z[i], z[j]).numpy()))


def train_head(x: np.ndarray, y: np.ndarray, cfg: HeadConfig | None = None) -> tuple[ProjectionHead, list[dict]]:
    """Train a projection head on embeddings `x` with labels `y`; returns it (on the CPU) and a per-epoch history.

    It trains on `clipadapt.engine.train` (`cfg.device`, `cfg.precision`). The head
    always trains in one process: its loss compares every pair of a mini-batch, so splitting a batch across DDP
    processes would drop the pairs between shares, and the head trains in seconds to minutes anyway."""
    cfg = cfg or HeadConfig()
    if len(x) != len(y):
        raise ValueError(f"{len(x)} embeddings but {len(y)} labels")
    if len(np.unique(y)) < 2:
        raise ValueError("the contrastive head needs at least two classes among the labelled samples")
    if not np.isfinite(x).all():
        bad = np.nonzero(~np.isfinite(x).all(1))[0]
        raise ValueError(f"{len(bad)} embeddings hold NaN or infinity (rows {bad[:5].tolist()}...): fix or drop them "
                         "before training the head")
    if cfg.batch_size < 2:
        raise ValueError(f"batch_size must be at least 2 (the pair loss compares the rows of a batch), got "
                         f"{cfg.batch_size}")
    spec = TrainSpec(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=0.0, no_decay="none",
                     optimizer="adam", schedule="constant", precision=cfg.precision, seed=cfg.seed)
    seed_everything(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(len(x))
    n_mon = int(round(cfg.monitor_fraction * len(x)))
    mon, fit = order[:n_mon], order[n_mon:]
    xt, yt = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y)
    head = ProjectionHead(x.shape[1], cfg.out_dim)
    head.mean.copy_(xt[fit].mean(0))   # standardise the inputs, as the authors' example does before the projector
    head.scale.copy_(xt[fit].std(0).clamp_min(1e-6))
    xt, yt = xt.to(cfg.device), yt.to(cfg.device)

    def data(gen, shard):   # whole batches in one process (shard ignored: see above); a lone last row is skipped
        perm = torch.as_tensor(fit)[torch.randperm(len(fit), generator=gen)]
        return [idx for idx in perm.split(cfg.batch_size) if len(idx) >= 2]

    def loss(m, idx):
        return pair_loss(m(xt[idx]).float(), yt[idx], cfg.temperature)

    def monitor(epoch, row):
        if n_mon >= 2:
            with torch.no_grad():
                zm = head(xt[mon]).float().cpu()
                row.update(monitor_loss=pair_loss(zm, yt[mon].cpu(), cfg.temperature).item(),
                           monitor_pair_auc=pair_auc(zm, yt[mon].cpu()))

    run = train(head, spec, data, loss, device=cfg.device, ddp=False, reseed=False, on_epoch=monitor)
    history = [{"epoch": h["epoch"], "train_loss": h["loss"]} | {k: v for k, v in h.items() if k.startswith("monitor")}
               for h in run["history"]]
    return head.cpu().eval(), history


# ---- representations: raw, PCA or head, joint or per modality

@dataclass
class Represented:
    train: np.ndarray
    test: np.ndarray
    trainable: int        # parameters fitted by the representation step (PCA: its components)
    fit_s: float
    history: list


def represent(kind: str, fusion: str, train: dict[str, np.ndarray], y_train: np.ndarray,
              test: dict[str, np.ndarray], cfg: HeadConfig | None = None) -> Represented:
    """Features for the downstream classifiers from per-modality embeddings (`train`/`test`: modality -> n x d)."""
    from sklearn.decomposition import PCA
    if kind not in REPRESENTATIONS:
        raise ValueError(f"unknown representation {kind!r}; known: {', '.join(REPRESENTATIONS)}")
    if fusion not in FUSIONS:
        raise ValueError(f"unknown fusion {fusion!r}; known: {', '.join(FUSIONS)}")
    if set(train) != set(test):
        raise ValueError(f"train has modalities {sorted(train)} but test has {sorted(test)}")
    cfg = cfg or HeadConfig()
    mods = sorted(train)
    groups = [[m] for m in mods] if fusion == "per-modality" else [mods]
    t0, outs_tr, outs_te, trainable, history = time.perf_counter(), [], [], 0, []
    for group in groups:
        a = np.concatenate([train[m] for m in group], 1)
        b = np.concatenate([test[m] for m in group], 1)
        if kind == "raw":
            outs_tr.append(a), outs_te.append(b)
        elif kind == "pca":
            k = min(cfg.out_dim, *a.shape)
            pca = PCA(n_components=k, random_state=cfg.seed).fit(a)
            outs_tr.append(pca.transform(a)), outs_te.append(pca.transform(b))
            trainable += pca.components_.size + pca.mean_.size
        else:
            head, hist = train_head(a, y_train, cfg)
            with torch.no_grad():
                outs_tr.append(head(torch.as_tensor(a)).numpy()), outs_te.append(head(torch.as_tensor(b)).numpy())
            trainable += sum(p.numel() for p in head.parameters())
            history.append({"modalities": "+".join(group), "history": hist})
    return Represented(np.concatenate(outs_tr, 1), np.concatenate(outs_te, 1), trainable,
                       time.perf_counter() - t0, history)


def classifiers(seed: int = 0) -> dict:
    """The downstream classifiers of the authors' code, scikit-learn defaults (seeded where they draw)."""
    from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.svm import SVC
    from sklearn.tree import DecisionTreeClassifier
    return {"CART": DecisionTreeClassifier(random_state=seed), "RF": RandomForestClassifier(random_state=seed),
            "GBM": GradientBoostingClassifier(random_state=seed), "MLP": MLPClassifier(random_state=seed),
            "LR": LogisticRegression(max_iter=1000), "SVC": SVC(kernel="rbf", C=1, gamma=1)}


def evaluate(features: Represented, y_train: np.ndarray, y_test: np.ndarray, names=None, seed: int = 0) -> list[dict]:
    """Macro-F1 (%), fit seconds and whether the fit converged (scikit-learn raised no ConvergenceWarning: the
    authors' defaults leave LR and MLP short of it on some data) of each downstream classifier on one
    representation. Other warnings pass on to the caller."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.metrics import f1_score
    rows = []
    for name, clf in classifiers(seed).items():
        if names is not None and name not in names:
            continue
        t0 = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pred = clf.fit(features.train, y_train).predict(features.test)
        for w in caught:
            if not issubclass(w.category, ConvergenceWarning):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        rows.append({"classifier": name, "macro_f1": 100 * f1_score(y_test, pred, average="macro"),
                     "classifier_s": time.perf_counter() - t0,
                     "converged": not any(issubclass(w.category, ConvergenceWarning) for w in caught)})
    return rows


def labelled_sample(y_pool: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Positions of `n` labelled rows drawn from a pool, stratified by class (as a site labels a few of each)."""
    from sklearn.model_selection import train_test_split
    if n >= len(y_pool):
        raise ValueError(f"asked for {n} labelled rows from a pool of {len(y_pool)}")
    idx, _ = train_test_split(np.arange(len(y_pool)), train_size=n, stratify=y_pool, random_state=seed)
    return np.sort(idx)


def benchmark(x: dict[str, np.ndarray], y: np.ndarray, labelled: dict[int, np.ndarray], test: np.ndarray,
              setups: dict[str, tuple[str, str]], cfg: HeadConfig | None = None, classifier_names=None,
              show_progress: bool = True):
    """Every setup (label -> (representation, fusion)) x downstream classifier x seed.

    `x`: modality -> embeddings of every row; `labelled`: seed -> rows with labels for that seed (the head, PCA and
    the classifiers fit on them); `test`: the held-out rows. A tidy DataFrame (macro-F1 in %).
    """
    import dataclasses

    import pandas as pd
    cfg = cfg or HeadConfig()
    rows = []
    jobs = [(s, label) for s in labelled for label in setups]
    for seed, label in progress(jobs, desc="representations x seeds", disable=not show_progress):
        kind, fusion = setups[label]
        tr = labelled[seed]
        f = represent(kind, fusion, {m: v[tr] for m, v in x.items()}, y[tr], {m: v[test] for m, v in x.items()},
                      dataclasses.replace(cfg, seed=seed))
        for r in evaluate(f, y[tr], y[test], classifier_names, seed):
            rows.append({"seed": seed, "setup": label, "representation": kind, "fusion": fusion,
                         "dim": f.train.shape[1], "trainable": f.trainable, "fit_s": f.fit_s, **r})
    return pd.DataFrame(rows)


def finetuned_image_features(load_model, images: np.ndarray, y: np.ndarray, labelled: np.ndarray, fit_cfg=None):
    """The expensive reference: fine-tune the whole image encoder with a linear head on the labelled images
    (`clipadapt.finetune`), then use its features (the [CLS] vector before the head) for every row.

    `load_model(num_classes)` returns a `clipadapt.models.vit.LoadedViT`. Returns (features of all rows, info with
    trainable parameters, seconds and the training memory of one step).
    """
    fit_cfg = fit_cfg or TrainSpec(epochs=10, warmup=0.1, eval_every=10, eval_last=1)
    lv = load_model(int(y.max()) + 1)
    model = full_finetune(lv.model)
    train = lv.dataset(images[labelled], y[labelled])
    t0 = time.perf_counter()
    fit_classifier(model, train, train, fit_cfg)
    seconds = time.perf_counter() - t0
    xb, yb = next(iter(batches(train, fit_cfg.batch_size)))
    mem = training_memory(model, lambda: F.cross_entropy(model(xb), yb))
    model.eval()
    with torch.no_grad():
        feats = np.concatenate([model.forward_head(model.forward_features(xb2), pre_logits=True).numpy()
                                for xb2, _ in batches(lv.dataset(images, y), 256)])
    return feats, {"trainable": sum(p.numel() for p in model.parameters() if p.requires_grad), "train_s": seconds,
                   **mem}
