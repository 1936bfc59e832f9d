"""SPT: sensitivity-aware visual parameter-efficient fine-tuning.

Paper: He, Cai, Zhang, Tao, Zhuang. "Sensitivity-Aware Visual Parameter-Efficient Fine-Tuning", ICCV 2023 (oral),
arXiv 2303.08566. Official code: github.com/ziplab/SPT (`engine.py: get_sensitivity`,
`model/vision_transformer_timm.py`).

1. **Sensitivity** (one pass): with a randomly initialised head on the frozen pretrained ViT, accumulate the squared
   gradient of every backbone weight over a few batches (16 of 32 in the code). Head, class token, patch and position
   embeddings are not ranked.
2. **Allocation**: one global ranking; the top-tau entries are "sensitive". A weight matrix with at least cost/alpha
   sensitive entries (cost = the parameters of a rank-r LoRA or adapter for it; alpha = 10) gets that structured
   module; a vector (bias, LayerNorm) with at least 1/beta of its entries sensitive (beta = 5) is tuned fully;
   otherwise a matrix, or a Linear's bias, tunes exactly its sensitive entries (a sparse delta). tau is chosen so
   that the trainable parameters (head excluded) come closest to the budget.
3. **Training** of those parameters and the head.

Choices of this implementation (the chapter states them too):
- The ViT is timm's `VisionTransformer`, whose attention has one fused `qkv` Linear; the official code splits q, k
  and v into three matrices. Here the unit is the Linear module (qkv, proj, fc1, fc2), so a structured module on
  `qkv` covers q, k and v together (LoRA cost in*r + r*3*out).
- Structured LoRA uses peft (`inject_adapter_in_model`, `lora_alpha = r`, i.e. no extra scaling, as the official
  code; dropout 0.1, drawn again in the backward pass instead of keeping its mask: `methods.dropout`). The official
  branch also has DropPath 0.1, which is left out here. On qkv, fc1 and fc2 the LoRA module keeps no copy of its
  input: it computes it again in the backward pass from what the LayerNorm or GELU before it keeps
  (`methods.recompute`).
- The adapter (SPT-Adapter and the adapter baseline) is sequential on the Linear's output,
  y + up(GELU(down(dropout(y)))), with a zero-initialised up-projection, as the official `*SPTSeq` blocks. It keeps
  its output instead of its input (`methods.recompute.SeqAdapter`), which after fc1 the GELU keeps anyway.
- Sparse deltas are `clipadapt.methods.sparse.SparseLinear` layers: only the delta at the chosen positions is a
  parameter, so weight decay and the optimizer state touch the chosen entries only, and an autograd Function computes
  the layer without keeping the summed matrix W + scatter(delta), and only the input columns the entries read, for
  the backward pass. peft's SHiRA was considered for
  this part but requires exactly r(m + n) entries per matrix, while SPT's per-matrix counts are arbitrary.
- A Linear's bias below the 1/beta threshold trains exactly its sensitive entries (a sparse delta), as the official
  code's sparse-gradient Linear does; LayerNorm vectors below it are not trained (nor in the official code) and,
  unlike the official count, not counted: the budget counts what is trained.
"""
from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from itertools import islice

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..finetune import batches, check_targets
from .base import Method, option
from .dropout import mask_free_dropout
from .recompute import SeqAdapter, recompute_lora_inputs
from .sparse import add_sparse
from .registry import build_method, method_class, register

NOT_RANKED = ("head", "cls_token", "patch_embed", "pos_embed")
STRUCTURED_KINDS = ("lora", "adapter")


# ---- 1. sensitivity

def ranked_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The backbone parameters SPT ranks: all but the head, class token, patch and position embeddings."""
    return {n: p for n, p in model.named_parameters() if not any(k in n for k in NOT_RANKED)}


def sensitivity(model: nn.Module, data, batch_size: int = 32, n_batches: int = 16) -> dict[str, torch.Tensor]:
    """Sum over the first `n_batches` batches of `data` (in order) of the squared gradient of the cross-entropy, per
    backbone weight. `data` is a list-indexed dataset (`clipadapt.finetune`), e.g. a TensorDataset of images and labels.

    `model` must already carry the (randomly initialised) head of the task. It is left unchanged: no step is taken,
    and requires_grad flags and train/eval mode are restored.
    """
    if len(data) < 1 or n_batches < 1:
        raise ValueError("sensitivity needs at least one batch of training images")
    ranked = ranked_parameters(model)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    was_training = model.training
    model.train()
    model.requires_grad_(True)
    dev = next(model.parameters()).device
    scores = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in ranked.items()}
    for x, y in islice(batches(data, batch_size), n_batches):
        model.zero_grad(set_to_none=True)
        F.cross_entropy(check_targets(model(x.to(dev)), y), y.to(dev)).backward()
        for name, p in ranked.items():
            scores[name] += p.grad.detach().float() ** 2
    model.zero_grad(set_to_none=True)
    for name, p in model.named_parameters():
        p.requires_grad_(flags[name])
    model.train(was_training)
    return scores


def magnitude_scores(model: nn.Module) -> dict[str, torch.Tensor]:
    """Control: rank entries by |weight| instead of sensitivity."""
    return {n: p.detach().abs().float() for n, p in ranked_parameters(model).items()}


def random_scores(model: nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """Control: a random ranking."""
    g = torch.Generator().manual_seed(seed)
    return {n: torch.rand(p.shape, generator=g) for n, p in ranked_parameters(model).items()}


# ---- 2. allocation

def structured_cost(linear: nn.Linear, kind: str, rank: int) -> int:
    """Parameters of the structured module for `linear`: LoRA in*r + r*out; adapter out*r + r*out + r + out."""
    if kind == "lora":
        return linear.in_features * rank + rank * linear.out_features
    if kind == "adapter":
        return 2 * linear.out_features * rank + rank + linear.out_features
    raise ValueError(f"unknown structured kind {kind!r}; use one of {', '.join(STRUCTURED_KINDS)}")


@dataclass
class Allocation:
    """Where a budget goes. Names are those of the model the allocation was computed on."""
    structured: list[str]                       # Linear modules that get a LoRA / adapter
    vectors: list[str]                          # 1-D parameters tuned fully
    sparse: dict[str, torch.Tensor]             # weight name -> flat indices of its tuned entries
    params: int                                 # trainable parameters, head excluded
    tau: int                                    # number of top-ranked entries that produced it
    kind: str = "lora"
    rank: int = 8
    cost: dict[str, int] = field(default_factory=dict)   # parameters per structured module and per full vector

    @property
    def sparse_params(self) -> int:
        return sum(len(v) for v in self.sparse.values())

    @property
    def structured_params(self) -> int:
        return sum(self.cost[m] for m in self.structured)


def _units(model: nn.Module, scores: dict[str, torch.Tensor], kind: str, rank: int, alpha: float, beta: float):
    """Per ranked tensor: (name, module name or None, size, threshold count, value if over the threshold)."""
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    units = []
    for name, s in scores.items():
        module = name.rsplit(".", 1)[0]
        if s.dim() == 1:
            units.append((name, None, s.numel(), s.numel() / beta, s.numel()))
        elif module in linears and name.endswith(".weight"):
            cost = structured_cost(linears[module], kind, rank)
            units.append((name, module, s.numel(), cost / alpha if alpha > 0 else float("inf"), cost))
        else:   # any other tensor can only take sparse entries
            units.append((name, None, s.numel(), float("inf"), 0))
    return units


def allocate(model: nn.Module, scores: dict[str, torch.Tensor], budget: int, kind: str = "lora", rank: int = 8,
             alpha: float = 10.0, beta: float = 5.0) -> Allocation:
    """SPT's budget allocation from per-entry `scores` (sensitivity, or a control's scores).

    alpha = 0 never gives a structured module (unstructured-only SPT); alpha = inf gives one to every matrix with a
    sensitive entry (structured-only SPT, plus full vectors).
    """
    if kind not in STRUCTURED_KINDS:
        raise ValueError(f"unknown structured kind {kind!r}; use one of {', '.join(STRUCTURED_KINDS)}")
    names = list(scores)
    if not names:
        raise ValueError("no ranked parameters: is this a timm VisionTransformer?")
    units = _units(model, scores, kind, rank, alpha, beta)
    flat = torch.cat([scores[n].flatten() for n in names]).numpy()
    order = np.argsort(-flat, kind="stable")                   # global ranking, most sensitive first
    sizes = np.array([u[2] for u in units])
    unit_of = np.repeat(np.arange(len(units)), sizes)[order]   # unit of the k-th ranked entry
    positions = [np.flatnonzero(unit_of == u) for u in range(len(units))]   # ranks of each unit's entries
    thresholds = np.array([u[3] for u in units])
    full = np.array([u[4] for u in units])
    is_vector = np.array([scores[u[0]].dim() == 1 for u in units])
    linears = {n for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    sparse_ok = ~is_vector | np.array([u[0].endswith(".bias") and u[0].rsplit(".", 1)[0] in linears for u in units])

    def counts(tau: int) -> np.ndarray:
        return np.array([np.searchsorted(p, tau) for p in positions])

    def total(tau: int) -> int:
        c = counts(tau)
        over = (c >= thresholds) & (c > 0)
        return int(np.where(over, full, np.where(sparse_ok, c, 0)).sum())

    extra = _always_trained(model)
    budget = budget - extra
    if budget < 1:
        raise ValueError(f"budget {budget + extra:,} is too small: the class token alone takes {extra:,} parameters; "
                         f"give at least {extra + 1:,}")
    lo, hi = 0, len(flat)
    if total(hi) < budget:
        raise ValueError(f"budget {budget + extra:,} is more than SPT can spend on this model with {kind} rank {rank} "
                         f"({total(hi) + extra:,}: every matrix structured, every vector tuned); lower the budget, "
                         "raise the rank, or use full fine-tuning")
    while hi - lo > 1:   # total is non-decreasing in tau: largest tau with total <= budget
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if total(mid) <= budget else (lo, mid)
    tau = lo if budget - total(lo) <= total(lo + 1) - budget else lo + 1
    c = counts(tau)
    structured, vectors, sparse, cost = [], [], {}, {}
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    top = np.sort(order[:tau])
    for u, (name, module, size, thr, value) in enumerate(units):
        if c[u] == 0:
            continue
        if c[u] >= thr and is_vector[u]:
            vectors.append(name)
            cost[name] = int(size)
        elif c[u] >= thr and module is not None:
            structured.append(module)
            cost[module] = int(value)
        elif sparse_ok[u]:   # a matrix's or a Linear bias's sensitive entries
            idx = top[(top >= offsets[u]) & (top < offsets[u + 1])] - offsets[u]
            sparse[name] = torch.from_numpy(idx.astype(np.int64))
    return Allocation(structured, vectors, sparse, total(tau) + extra, tau, kind, rank, cost)


def _always_trained(model: nn.Module) -> int:
    """The class token is trained in every SPT set-up and counted in its budget (as the official count's 768)."""
    cls = getattr(model, "cls_token", None)
    return 0 if cls is None else cls.numel()


# ---- 3. the modules

def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def add_structured(model: nn.Module, modules: list[str], kind: str, rank: int = 8, dropout: float = 0.1) -> list[nn.Parameter]:
    """Add LoRA (peft) or sequential adapters to the named Linear modules; returns the new parameters."""
    if not modules:
        return []
    if kind == "lora":
        from peft import LoraConfig, inject_adapter_in_model
        before = {id(p) for p in model.parameters()}
        flags = {id(p): p.requires_grad for p in model.parameters()}
        inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=rank, lora_dropout=dropout, target_modules=modules), model)
        recompute_lora_inputs(model, modules)   # no copy of the input where a LayerNorm or GELU keeps its source
        new = [p for p in model.parameters() if id(p) not in before]
        for p in model.parameters():   # peft marks only its adapters trainable; keep the caller's other flags
            p.requires_grad_(flags.get(id(p), True))
        return new
    if kind == "adapter":
        new = []
        for name in modules:
            ad = SeqAdapter(model.get_submodule(name), rank, dropout)
            _set_module(model, name, ad)
            new += [*ad.down.parameters(), *ad.up.parameters()]
        return new
    raise ValueError(f"unknown structured kind {kind!r}; use one of {', '.join(STRUCTURED_KINDS)}")


def apply_allocation(model: nn.Module, alloc: Allocation, dropout: float = 0.1) -> nn.Module:
    """Freeze the backbone, then make trainable exactly what `alloc` says, plus the head. In place; returns model."""
    vectors = [model.get_parameter(n) for n in alloc.vectors]
    sparse = [(model.get_submodule(n.rsplit(".", 1)[0]), n.rsplit(".", 1)[1], idx) for n, idx in alloc.sparse.items()]
    model.requires_grad_(False)
    add_structured(model, alloc.structured, alloc.kind, alloc.rank, dropout)
    for name in alloc.structured:   # the dropout in front of each LoRA / adapter keeps no mask (same draws)
        mask_free_dropout(model.get_submodule(name))
    for p in vectors:
        p.requires_grad_(True)
    for module, attr, idx in sparse:
        add_sparse(module, attr, idx)
    model.get_submodule("head").requires_grad_(True)
    if getattr(model, "cls_token", None) is not None:
        model.cls_token.requires_grad_(True)
    return model


def backbone_trainable(model: nn.Module) -> int:
    """Trainable parameters outside the head (what SPT's budget counts)."""
    return sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and not n.startswith("head"))


# ---- baselines on the same backbone (registered in `clipadapt.methods.baselines`)

def block_linears(model: nn.Module, suffix: str) -> list[str]:
    """Names of the Linear modules of `model` whose name ends with `suffix` (e.g. "attn.qkv" of every block)."""
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.endswith(suffix)]


def linear_probe(model: nn.Module) -> nn.Module:
    """Only the head trains."""
    model.requires_grad_(False)
    model.get_submodule("head").requires_grad_(True)
    return model


def full_finetune(model: nn.Module) -> nn.Module:
    """Everything trains."""
    return model.requires_grad_(True)


def lora_budget(model: nn.Module, rank: int) -> int:
    """The backbone parameters LoRA of `rank` on every qkv projection trains (SPT's default budget here)."""
    return sum(structured_cost(model.get_submodule(n), "lora", rank) for n in block_linears(model, "attn.qkv"))


# ---- SPT and its controls as registered methods

@dataclass(frozen=True)
class SPTConfig:
    budget: int | None = option(None, "trainable backbone parameters, head excluded (None: what LoRA of `rank` "
                                      "trains on the backbone, so SPT and LoRA compare at equal cost)",
                                paper="0.3M-0.8M on ViT-B/16 (Tables 1-2)", minimum=1)
    rank: int = option(8, "rank of the structured LoRA / adapter modules", paper=8, minimum=1)
    alpha: float = option(10.0, "a matrix gets a structured module when its sensitive entries reach cost/alpha", paper=10.0)
    beta: float = option(5.0, "a vector is tuned fully when 1/beta of its entries are sensitive", paper=5.0)
    sensitivity_batches: int = option(16, "batches of the sensitivity pass (official get_sensitivity)", paper=16)
    sensitivity_batch_size: int = option(32, "images per sensitivity batch", paper=32)
    dropout: float = option(0.1, "dropout of the structured modules")
    seed: int = option(0, "seed of the sensitivity pass (and of the random-mask control's ranking)")


def allocation_to_dict(alloc: Allocation) -> dict:
    return {**asdict(alloc), "sparse": {n: idx.tolist() for n, idx in alloc.sparse.items()}}


def allocation_from_dict(d: dict) -> Allocation:
    return Allocation(**{**d, "sparse": {n: torch.tensor(i, dtype=torch.long) for n, i in d["sparse"].items()}})


@register("spt-lora", "SPT-LoRA")
class SPT(Method):
    """SPT-LoRA: a budget goes to the most sensitive weights, as LoRA modules, full vectors or sparse entries."""
    family, backbones, chapter, config_class, needs_data = "peft", ("image",), "SPT", SPTConfig, True
    scores, structured_kind, alpha = "sensitivity", "lora", None   # alpha None: the config's

    def ranking(self, model: nn.Module, data) -> dict[str, torch.Tensor]:
        if self.scores == "random":
            return random_scores(model, self.cfg.seed)
        if self.scores == "magnitude":
            return magnitude_scores(model)
        torch.manual_seed(self.cfg.seed)
        return sensitivity(model, data, self.cfg.sensitivity_batch_size, self.cfg.sensitivity_batches)

    def _apply(self, backbone, kind, data):
        import time
        if self.structure:   # loading a trained model: the allocation it was trained with
            alloc = allocation_from_dict(self.structure)
        else:
            budget = self.cfg.budget if self.cfg.budget is not None else lora_budget(backbone, self.cfg.rank)
            t0 = time.perf_counter()
            scores = self.ranking(backbone, data)
            self.info["ranking_s"] = time.perf_counter() - t0
            alpha = self.cfg.alpha if self.alpha is None else self.alpha
            alloc = allocate(backbone, scores, budget, self.structured_kind, self.cfg.rank, alpha, self.cfg.beta)
            self.structure = allocation_to_dict(alloc)
        self.info["allocation"] = alloc
        return apply_allocation(backbone, alloc, self.cfg.dropout)

    def stored(self, model: nn.Module) -> int:
        """What trained plus the position of every sparse entry."""
        return super().stored(model) + sum(len(idx) for idx in self.structure["sparse"].values())


@register("spt-adapter", "SPT-Adapter")
class SPTAdapter(SPT):
    """SPT-Adapter: as SPT-LoRA, with sequential adapters as the structured modules."""
    structured_kind = "adapter"


# ---- one entry point for the chapter: every method by registry name on the same backbone

PEFT_METHODS = ("linear-probe", "full-finetune", "lora", "adapter", "spt-lora", "spt-adapter", "spt-unstructured",
                "spt-structured", "random-mask", "magnitude-mask")


def prepare(method: str, model: nn.Module, data, **options) -> dict:
    """Make `model` (a timm ViT with the task's head) the registered `method`, in place; `options` are the
    method's config fields (budget, rank, seed, ...; those it does not have are ignored, None leaves the default).
    Returns what was done: the method, trainable count (head excluded), the allocation (SPT) and ranking seconds."""
    fields = {f.name for f in dataclasses.fields(method_class(method).config_class)}
    m = build_method(method, **{k: v for k, v in options.items() if k in fields and v is not None})
    m.apply(model, data)
    return {"method": method, "built": m, "allocation": m.info.get("allocation"),
            "ranking_s": m.info.get("ranking_s", 0.0), "trainable": backbone_trainable(model)}
