"""The contract every registered method keeps, as one matrix over the registry (after peft's common tester), on
tiny randomly initialised backbones of each kind:

- gradients reach exactly the parameters the method declares trainable, and every one of them;
- one optimiser step changes only those (every frozen weight and buffer stays bit-identical);
- the trainable count is the paper's formula where one exists;
- the same seed gives identical outputs;
- save, load onto a fresh backbone: identical outputs;
- test-time methods reset exactly (weights and optimiser state).
"""
import copy

import pytest
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer

from clipadapt.methods import build_method, known_methods, load_trained, method_class
from clipadapt.methods.base import ClassTexts, backbone_kind

DIM, DEPTH, K = 32, 2, 3
CLASSES = ("circle", "square", "triangle")


def _tok(texts):
    """A deterministic stand-in tokenizer: character codes, padded to CLIP's context of 12."""
    return torch.tensor([[(ord(c) % 90) + 1 for c in t[:12].ljust(12)] for t in texts])


def _clip():
    import open_clip
    cfg = {"embed_dim": DIM, "vision_cfg": {"image_size": 16, "layers": DEPTH, "width": DIM, "patch_size": 8,
                                            "head_width": 16},
           "text_cfg": {"context_length": 12, "vocab_size": 100, "width": DIM, "heads": 2, "layers": DEPTH}}
    return open_clip.CLIP(**cfg).eval()


def _vl():
    from clipadapt.data import vltasks
    from clipadapt.models import seq2seq
    tok = seq2seq.build_word_tokenizer(vltasks.language_corpus(60, 1))
    lm = seq2seq.tiny_lm(seq2seq.TinyLMConfig(d_model=DIM, heads=2, ffn=64), len(tok))
    return seq2seq.VLModel(lm, tok, 16).eval()


def _vl_batch():
    from clipadapt.data import vltasks
    from clipadapt.models import seq2seq
    g = torch.Generator().manual_seed(1)
    split = vltasks.make_vl_split(12, 6, 5)
    return seq2seq.collate(split.examples[:6], torch.randn(12, 4, 16, generator=g), _vl().tokenizer)


KINDS = {   # backbone kind -> (fresh backbone, batch, forward giving comparable outputs, a loss of those outputs)
    "image": (lambda: VisionTransformer(img_size=16, patch_size=8, embed_dim=DIM, depth=DEPTH, num_heads=2,
                                        num_classes=K),
              lambda g: (torch.randn(8, 3, 16, 16, generator=g), torch.arange(8) % K),
              lambda m, b: m(b[0]), lambda out, b: F.cross_entropy(out, b[1])),
    "clip": (lambda: ClassTexts(_clip(), _tok, [f"a photo of a {c}." for c in CLASSES]),
             lambda g: (torch.randn(4, 2, 3, 16, 16, generator=g), torch.arange(4) % K),   # 4 clips of 2 frames
             lambda m, b: m(b[0]), lambda out, b: F.cross_entropy(out, b[1])),
    "vl": (_vl, lambda g: _vl_batch(), lambda m, b: m(b), lambda out, b: out),
    "embeddings": (lambda: 16, lambda g: (torch.randn(12, 16, generator=g), torch.arange(12) % K),
                   lambda m, b: m(b[0]), lambda out, b: __import__("clipadapt.methods.contrastive_da",
                                                                    fromlist=["x"]).pair_loss(out, b[1])),
}
OPTIONS = {"clip": {"depth": DEPTH}}   # prompts in every block of the 2-block towers
LABELLED = [(name, kind) for name in known_methods("labelled") for kind in method_class(name).backbones]
TRAINED = [(name, kind) for name, kind in LABELLED if method_class(name).family != "zero-shot"]


def _data(g):
    x, y = KINDS["image"][1](g)
    return torch.utils.data.TensorDataset(torch.cat([x, x]), torch.cat([y, y]))


def _build(name, kind, seed=0):
    """A fresh backbone (weights from `seed`) made `name`: (method, model, batch)."""
    torch.manual_seed(seed)
    backbone = KINDS[kind][0]()
    fields = {f for f in method_class(name).config_class.__dataclass_fields__}
    method = build_method(name, **{k: v for k, v in {**OPTIONS.get(kind, {}), "budget": 600, "sensitivity_batches": 2,
                                                     "sensitivity_batch_size": 8}.items() if k in fields})
    g = torch.Generator().manual_seed(seed)
    model = method.apply(backbone, _data(g) if method.needs_data else None)
    return method, model, KINDS[kind][1](torch.Generator().manual_seed(seed + 100))


def _outputs(kind, model, batch):
    model.eval()
    with torch.no_grad():
        return KINDS[kind][2](model, batch)


def _step(kind, method, model, batch):
    model.train()
    loss = KINDS[kind][3](KINDS[kind][2](model, batch), batch)
    opt = torch.optim.AdamW(method.param_groups(model, 1e-2, 0.1))
    opt.zero_grad()
    loss.backward()
    opt.step()


def test_the_registry_has_every_chapters_methods_under_one_lowercase_name():
    names = set(known_methods())
    assert len(names) >= 20
    assert {"zero-shot", "linear-probe", "full-finetune", "lora", "adapter", "spt-lora", "spt-adapter",
            "spt-unstructured", "spt-structured", "random-mask", "magnitude-mask", "pe-clip", "pe-clip-adapters",
            "pe-clip-sha", "pe-clip-mean-pool", "maple", "vl-pet-large", "vl-pet-small", "vl-adapter", "bitfit",
            "prompt-tuning", "contrastive-head", "source", "tent", "tpt", "batclip"} <= names
    assert all(n == n.lower() and " " not in n and "_" not in n for n in names)


def test_registering_refuses_a_second_name_a_bad_name_and_an_unknown_family():
    from clipadapt.methods import register
    from clipadapt.methods.base import Method
    cls = type("X", (Method,), {"family": "peft", "backbones": ("image",)})
    with pytest.raises(ValueError, match="'lora' is registered twice"):
        register("lora")(cls)
    with pytest.raises(ValueError, match="lowercase and hyphenated"):
        register("My_Method")(cls)
    with pytest.raises(ValueError, match="family 'magic'"):
        register("x-method")(type("Y", (Method,), {"family": "magic"}))
    assert "x-method" not in known_methods()


def test_every_method_says_what_its_options_mean():
    from clipadapt.methods.base import config_help
    for name in known_methods():
        rows = config_help(method_class(name).config_class)
        assert all(r["help"] for r in rows), (name, [r["field"] for r in rows if not r["help"]])


def test_an_unknown_name_lists_the_close_ones():
    with pytest.raises(ValueError, match="unknown method 'spt_lora'; did you mean spt-lora"):
        build_method("spt_lora")
    with pytest.raises(ValueError, match="has no option 'rnak'; its options: .*rank"):
        build_method("lora", rnak=4)


def test_a_method_refuses_a_backbone_it_does_not_adapt_and_says_which_it_does():
    with pytest.raises(ValueError, match="maple adapts an open_clip CLIP with one text per class"):
        build_method("maple").apply(KINDS["image"][0]())
    with pytest.raises(TypeError, match="not a backbone"):
        backbone_kind("a string")
    with pytest.raises(ValueError, match="ranks or fits on the labelled training images"):
        build_method("spt-lora").apply(KINDS["image"][0]())


@pytest.mark.parametrize("name, kind", LABELLED)
def test_gradients_reach_exactly_the_declared_trainable_parameters(name, kind):
    method, model, batch = _build(name, kind)
    declared = set(method.trainable(model))
    if method.family == "zero-shot":
        assert not declared
        return
    assert declared
    model.train()
    KINDS[kind][3](KINDS[kind][2](model, batch), batch).backward()
    got = {n for n, p in model.named_parameters() if p.grad is not None}
    assert got == declared, (sorted(got - declared)[:3], sorted(declared - got)[:3])


@pytest.mark.parametrize("name, kind", TRAINED)
def test_one_step_changes_only_the_trainable_parameters(name, kind):
    method, model, batch = _build(name, kind)
    before = copy.deepcopy(model.state_dict())
    _step(kind, method, model, batch)
    after = model.state_dict()
    declared = {p.data_ptr() for p in method.trainable(model).values()}   # tied weights appear under two names
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed and all(after[n].data_ptr() in declared for n in changed), sorted(changed)[:3]


@pytest.mark.parametrize("name, kind", LABELLED)
def test_the_same_seed_gives_identical_outputs(name, kind):
    outs = []
    for _ in range(2):
        method, model, batch = _build(name, kind)
        if method.family != "zero-shot":
            _step(kind, method, model, batch)
        outs.append(_outputs(kind, model, batch))
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize("name, kind", LABELLED)
def test_saved_then_loaded_onto_a_fresh_backbone_gives_identical_outputs(name, kind, tmp_path):
    method, model, batch = _build(name, kind)
    if method.family != "zero-shot":
        _step(kind, method, model, batch)
    if kind == "embeddings":   # the standardisation a training run sets must travel too
        model.mean.fill_(0.5)
    expected = _outputs(kind, model, batch)
    method.save(model, tmp_path / "m")
    saved = torch.load(tmp_path / "m" / "weights.pt")
    assert set(saved) == set(method.trainable(model)) | set(method.extra_state(model))   # only what trained
    torch.manual_seed(0)
    fresh = KINDS[kind][0]()
    torch.manual_seed(123)   # the new modules start elsewhere; the loaded weights must replace them
    loaded_method, loaded = load_trained(tmp_path / "m", fresh)
    assert loaded_method.cfg == method.cfg
    assert torch.equal(_outputs(kind, loaded, batch), expected)


def test_loading_onto_another_backbone_is_refused_with_what_to_do(tmp_path):
    method, model, batch = _build("lora", "image")
    method.save(model, tmp_path / "m")
    wider = VisionTransformer(img_size=16, patch_size=8, embed_dim=48, depth=DEPTH, num_heads=2, num_classes=K)
    with pytest.raises(ValueError, match="load onto the backbone they were trained on"):
        load_trained(tmp_path / "m", wider)
    with pytest.raises(FileNotFoundError, match="no saved method"):
        load_trained(tmp_path / "nothing", wider)


def test_a_broken_model_is_not_saved(tmp_path):
    method, model, _ = _build("linear-probe", "image")
    with torch.no_grad():
        model.head.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        method.save(model, tmp_path / "m")
    assert not (tmp_path / "m" / "weights.pt").exists()


HEAD, R = DIM * K + K, 8
SHA = 2 * DIM * (DIM // 8) + DIM // 8 + DIM   # PE-CLIP's bottleneck adapter, reduction 8
RR = DIM // 8
TDA = 2 * DIM + DIM + 1 + DIM * RR + RR + 2 * 3 * RR * RR + 2 * 3 * RR + RR * DIM + DIM   # LN, scale, down, GRU, up
PROMPTS = DEPTH * (2 * DIM + DIM * DIM + DIM)   # per prompted block: 2 text vectors and their projection
everything = lambda method, model: sum(p.numel() for p in model.parameters())
FORMULAS = {   # trainable parameters by the papers' formulas on the tiny backbones
    ("linear-probe", "image"): lambda m, model: HEAD,
    ("linear-probe", "clip"): lambda m, model: DIM * K + K,
    ("lora", "image"): lambda m, model: DEPTH * (DIM * R + R * 3 * DIM) + HEAD,
    ("adapter", "image"): lambda m, model: DEPTH * (2 * DIM * R + R + DIM) + HEAD,
    ("full-finetune", "image"): everything,
    ("full-finetune", "vl"): everything,
    ("full-finetune", "clip"): lambda m, model: everything(m, model) - 1,   # all but logit_scale
    ("pe-clip-sha", "clip"): lambda m, model: 2 * DEPTH * SHA,
    ("pe-clip-adapters", "clip"): lambda m, model: DEPTH * (SHA + TDA) + DEPTH * (SHA + SHA),
    ("pe-clip", "clip"): lambda m, model: DEPTH * (SHA + TDA) + DEPTH * (SHA + SHA) + PROMPTS,
    ("pe-clip-mean-pool", "clip"): lambda m, model: 2 * DEPTH * (SHA + SHA) + PROMPTS,
    ("maple", "clip"): lambda m, model: PROMPTS,
    ("zero-shot", "clip"): lambda m, model: 0,
    ("contrastive-head", "embeddings"): lambda m, model: 16 * 8 + 8 + 8 * 128 + 128,   # 16 -> min(16 // 2, 16) -> 128
    # SPT: what its allocation spends (budget, class token) plus the head
    **{(n, "image"): (lambda m, model: m.info["allocation"].params + HEAD)
       for n in ("spt-lora", "spt-adapter", "spt-unstructured", "spt-structured", "random-mask", "magnitude-mask")},
}   # the VL model's methods are counted against Table 2's shares in test_vlpet


@pytest.mark.parametrize("name, kind", sorted(FORMULAS))
def test_the_trainable_count_is_the_papers_formula(name, kind):
    method, model, _ = _build(name, kind)
    assert sum(p.numel() for p in method.trainable(model).values()) == FORMULAS[(name, kind)](method, model)


@pytest.mark.parametrize("name", known_methods("test-time"))
def test_test_time_methods_reset_exactly(name):
    from clipadapt.methods.tpt import TPTConfig
    torch.manual_seed(0)
    clip = _clip()
    opts = {"n_views": 4} if method_class(name).config_class is TPTConfig else {}
    m = build_method(name, clip, _tok, CLASSES, **opts)
    w0 = [p.detach().clone() for p in m.params]
    opt0 = copy.deepcopy(m.optimizer.state_dict()) if m.optimizer else None
    x = torch.randn(4, 3, 16, 16)
    first = m(x if name != "tpt" else x[:1])
    m(x if name != "tpt" else x[:1])
    m.reset()
    assert all(torch.equal(a, b) for a, b in zip(w0, m.params))
    if m.optimizer:
        assert m.optimizer.state_dict()["state"] == opt0["state"]
    assert torch.equal(m(x if name != "tpt" else x[:1]), first)
