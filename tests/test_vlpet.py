"""VL-PET: gate shapes per granularity, what zero-initialised modules leave unchanged, trainable shares on BART-base
and T5-base against the paper's Table 2, gradients only where they belong, the multi-task loop and its scores, and
the micro-world vision-language tasks."""
import copy

import pytest
import torch

from clipadapt import vltrain
from clipadapt.bench import count_parameters
from clipadapt.chapters import vlpet as vlpet_chapter
from clipadapt.data import shapes, vltasks
from clipadapt.methods import vlpet
from clipadapt.models import seq2seq


@pytest.fixture(scope="module")
def small():
    return small_vl()


def small_vl():
    """A randomly initialised tiny VL-BART (the ci architecture) with the micro-world tokenizer, a split, features."""
    torch.manual_seed(0)
    tok = seq2seq.build_word_tokenizer(vltasks.language_corpus(60, 1))
    lm = seq2seq.tiny_lm(seq2seq.TinyLMConfig(d_model=32, heads=2, ffn=64), len(tok))
    with torch.no_grad():   # word vectors of a trained LM's scale (at init's 0.02, frozen logits barely move)
        lm.get_input_embeddings().weight.normal_(0, 1)
    split = vltasks.make_vl_split(30, 6, 5)
    feats = torch.randn(30, 4, 16)
    return seq2seq.VLModel(lm, tok, 16).eval(), split, feats


def _batch(small, n=6):
    model, split, feats = small
    return seq2seq.collate(split.examples[:n], feats, model.tokenizer)


@pytest.mark.parametrize("g, shape", [("large", (2, 5, 8)), ("middlex", (2, 5, 1)), ("middley", (8,)),
                                      ("small", (2, 1, 1))])
def test_gate_shape_is_its_granularity(g, shape):
    gate = vlpet.Gate(g, 8, 4)
    x, h = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    out = gate(x, h)
    assert out.shape == shape
    assert (out > 0).all()
    if g == "small":   # one value per sample: the mean over tokens of a per-token sigmoid
        assert torch.allclose(out[:, 0, 0], torch.sigmoid(gate.w(torch.cat([x, h], -1))).mean((1, 2)))
    with pytest.raises(ValueError, match="unknown granularity"):
        vlpet.Gate("x-small", 8, 4)


def _logits(model, batch):
    with torch.no_grad():
        e, m = model.encoder_inputs(batch)
        return model.lm(inputs_embeds=e, attention_mask=m, labels=batch["labels"]).logits


def test_zero_initialised_adapters_leave_the_frozen_model_unchanged_but_a_large_gate_halves_each_sublayer(small):
    batch = _batch(small)
    ref = _logits(small[0], batch)
    plain = copy.deepcopy(small[0])
    vlpet.add_vlpet(plain.lm, vlpet.VLPETConfig(granularity=None, zero_init_up=True, lightweight_decoder=False))
    assert torch.allclose(_logits(plain, batch), ref, atol=1e-5)
    vpa_only = copy.deepcopy(small[0])
    for layer in vpa_only.lm.model.decoder.layers:
        layer.encoder_attn.v_proj = vlpet.ValueParallelAdapter(layer.encoder_attn.v_proj, 4, zero_up=True)
    assert torch.allclose(_logits(vpa_only, batch), ref, atol=1e-5)
    # the large gate is sigma(W_up ...) = 0.5 at a zero up-projection: the sublayer output is halved, not kept
    gated = copy.deepcopy(small[0])
    vlpet.add_vlpet(gated.lm, vlpet.VLPETConfig(granularity="large", zero_init_up=True))
    attn = gated.lm.model.encoder.layers[0].self_attn
    x = torch.randn(2, 3, 32)
    with torch.no_grad():
        assert torch.allclose(attn(x, attention_mask=None)[0], 0.5 * attn.inner(x, attention_mask=None)[0], atol=1e-6)


@pytest.mark.parametrize("g, varies", [("large", (True, True)), ("middlex", (True, False)),
                                       ("middley", (False, True)), ("small", (False, False))])
def test_gate_values_vary_over_tokens_and_dimensions_as_the_granularity_says(small, g, varies):
    torch.manual_seed(0)
    model = vlpet.apply_method(copy.deepcopy(small[0]), f"vl-pet-{g}")
    gv = vltrain.gate_values(model, _batch(small))
    assert gv.ndim == 2 and gv.shape[1] == 32
    assert ((gv.std(0) > 1e-6).any().item(), (gv.std(1) > 1e-6).any().item()) == varies
    with pytest.raises(ValueError, match="no VL-PET gate"):
        vltrain.gate_values(vlpet.apply_method(copy.deepcopy(small[0]), "lora"), _batch(small))


def test_the_ffn_gate_reads_the_ffn_input(small):
    model = copy.deepcopy(small[0])
    vlpet.add_vlpet(model.lm, vlpet.VLPETConfig(granularity="large"))
    layer = model.lm.model.encoder.layers[0]
    seen = {}
    layer.fc2.pet.gate.register_forward_hook(lambda m, args, out: seen.setdefault("x", args[0]))
    x = torch.randn(2, 3, 32)
    with torch.no_grad():
        layer.fc2(layer.activation_fn(layer.fc1(x)))
    assert torch.equal(seen["x"], x) and layer.fc1.x is None


@pytest.mark.parametrize("name", ["bart-base", "t5-base"])
def test_trainable_shares_on_the_real_architectures_match_table_2(name):
    from transformers import BartForConditionalGeneration, T5ForConditionalGeneration
    cls = BartForConditionalGeneration if name == "bart-base" else T5ForConditionalGeneration
    with torch.device("meta"):   # counting needs shapes only
        base = seq2seq.VLModel(cls(seq2seq.paper_lm_config(name)), None, 2048)
    # Table 2's BART-base rows, Table 9's VL-Adapter + G, and the T5-base rows run in the paper's own set-up (its other
    # T5 baselines are copied from LST, whose adapter and LoRA sizes differ)
    rows = {m: v[0] for (lm, m), v in vlpet_chapter.PUBLISHED.items() if lm == name and (lm == "bart-base" or
                                                                                  (lm, m) in vlpet_chapter.SAME_SETUP)}
    assert len(rows) == (10 if name == "bart-base" else 5)
    for method, pct in rows.items():
        model = vlpet.apply_method(copy.deepcopy(base), method)
        assert 100 * count_parameters(model).fraction == pytest.approx(pct, abs=0.015), method


def test_trainable_count_of_vl_pet_large_is_the_formula(small):
    model = vlpet.apply_method(copy.deepcopy(small[0]), "vl-pet-large")
    d, r, layers = 32, 4, 2
    adapter = 4 * (d * r // 4 + r // 4) + r * d + d     # four heads d -> r/4, one up r -> d
    gate = d * r + r + r * d + d
    vpa = d * r + r + r * d + d
    enc_ln = layers * 2 * 2 * d + 2 * d                  # two LayerNorms a layer, plus layernorm_embedding
    visual = 16 * d + d + 2 * d + 2 * d                  # Linear + LN + image-order embedding
    assert count_parameters(model).trainable == layers * 2 * (adapter + gate) + layers * vpa + enc_ln + visual


@pytest.mark.parametrize("method", vlpet.METHODS)
def test_each_row_trains_the_official_scripts_set(small, method):
    """Which parameters train (that gradients reach exactly those is the registry's contract, tests/test_methods.py)."""
    model = vlpet.apply_method(copy.deepcopy(small[0]), method)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(n.startswith("visual.") for n in names)
    if method != "full":
        assert not any("embed_tokens" in n or "shared" in n for n in names)
    if method.startswith("vl-pet"):
        assert not any(".decoder." in n and "layer_norm" in n for n in names)   # encoder LayerNorms only
        assert any("v_proj.down" in n for n in names) and not any("decoder" in n and "fc2.pet" in n for n in names)


def test_unknown_method_names_the_known_ones_and_too_long_inputs_say_what_to_shorten(small):
    with pytest.raises(ValueError, match="known: full, vl-adapter"):
        vlpet.apply_method(copy.deepcopy(small[0]), "vl-pet-xsmall")
    model = vlpet.apply_method(copy.deepcopy(small[0]), "prompt", base=vlpet.BaselineConfig(prompt_len=60))
    with pytest.raises(ValueError, match="prompt_len"):
        model(_batch(small))


def test_training_is_seeded_and_the_loss_falls(small):
    model0, split, feats = small
    cfg = vltrain.recipe(epochs=8, batch_size=8, lr=3e-2)
    runs = []
    for _ in range(2):
        torch.manual_seed(3)   # the new modules' initialisation is part of a run
        m = vlpet.apply_method(copy.deepcopy(model0), "vl-pet-large")
        runs.append(vltrain.train_vl(m, split, feats, cfg, seed=3))
    assert runs[0] == runs[1]
    k = len(runs[0]) // 3
    assert sum(runs[0][-k:]) / k < 0.8 * sum(runs[0][:k]) / k
    scores = vltrain.evaluate_vl(m, split, feats, vltrain.Decoding(num_beams=2, max_new_tokens=8))
    assert set(scores) >= {"vqa", "gqa", "nlvr", "caption", "average", "pred"}
    assert all(len(scores["pred"][t]) == len(split.of_task(t)) for t in vltasks.TASKS)
    assert set(scores["pred"]["nlvr"]) <= {"true", "false"}


def test_cider_rewards_the_right_caption():
    from clipadapt.eval import cider
    refs = [("a small red circle on the left.", "a photo of a small red circle on the left."),
            ("two blue squares.", "there are two blue squares."), ("three green stars.", "three green stars.")]
    right = cider(["a small red circle on the left.", "two blue squares.", "three green stars."], refs)
    wrong = cider(["a large blue star on the top.", "three red hearts.", "one cyan ring."], refs)
    assert right > 100 > wrong >= 0
    with pytest.raises(ValueError, match="reference lists"):
        cider(["x"], refs)


def test_vl_tasks_say_what_the_scenes_show():
    a, b = vltasks.make_vl_split(80, 40, 7), vltasks.make_vl_split(80, 40, 7)
    assert [e.target for e in a.examples] == [e.target for e in b.examples]
    for e in a.of_task("vqa"):
        s = a.scenes[e.images[0]]
        if e.text.startswith("how many"):
            assert e.target == shapes.COUNT_WORDS[s.count]
        elif e.text.startswith("what shape"):
            assert e.target == s.shape
    nlvr = a.of_task("nlvr")
    assert sum(e.target == "true" for e in nlvr) == len(nlvr) // 2 and all(len(e.images) == 2 for e in nlvr)
    for e in nlvr:
        if "more shapes" in e.text:
            x, y = (a.scenes[i] for i in (e.images if "left" in e.text else e.images[::-1]))
            assert (e.target == "true") == (x.count > y.count)
    for e in a.of_task("caption"):
        assert e.target in e.references and a.scenes[e.images[0]].color in e.target
    for e in a.of_task("gqa"):
        s = a.scenes[e.images[0]]
        assert s.color in e.text or s.color == e.target
        assert e.target in (s.color, s.shape, s.size, s.position, shapes.COUNT_WORDS[s.count])


def test_word_tokenizer_round_trips_and_collate_masks_padding(small):
    model, split, feats = small
    tok = model.tokenizer
    assert tok.decode(tok("two blue squares.")["input_ids"], skip_special_tokens=True) == "two blue squares."
    nlvr = split.of_task("nlvr")[:1] + split.of_task("vqa")[:1]
    batch = seq2seq.collate(nlvr, feats, tok)
    assert batch["feats"].shape == (2, 8, 16)
    assert batch["vis_mask"].tolist() == [[1] * 8, [1] * 4 + [0] * 4]
    assert batch["order"][0].tolist() == [0] * 4 + [1] * 4
    pair = [split.of_task("caption")[0], split.of_task("vqa")[0]]   # a long target and a one-word one
    lab = seq2seq.collate(pair, feats, tok)["labels"]
    assert not (lab[0] == -100).any() and (lab[1] == -100).sum() == lab.shape[1] - 2   # answer + </s>, then padding
    assert [tok.decode(row[row != -100], skip_special_tokens=True) for row in lab] == [e.target for e in pair]


def test_pretrained_tiny_vl_bart_captions_new_scenes_and_loads_fresh_copies(tiny):
    """The ci asset: captions of scenes it never saw score far above the same captions given to the wrong scenes."""
    from clipadapt.eval import cider
    seq2seq.ensure_tiny_lm(show_progress=False)
    model = seq2seq.load_tiny_vl()
    assert model is not seq2seq.load_tiny_vl() and not model.training
    split = vltasks.make_vl_split(40, 40, 123_456)
    feats = seq2seq.clip_grid_features(tiny.model, tiny.preprocess, split.images)
    ex = split.of_task("caption")
    pred = model.generate(seq2seq.collate(ex, feats, model.tokenizer, with_targets=False), num_beams=1)
    refs = [e.references for e in ex]
    assert cider(pred, refs) > 2 * cider(pred[1:] + pred[:1], refs)
    with pytest.raises(FileNotFoundError, match="build_ci_assets.py"):
        seq2seq.load_tiny_vl("/nonexistent/tiny-vl-bart")


# ---------------------------------------------------------------------------------------------------------------------
# the paper profile on local stand-ins: a few fake samples in VL-Adapter's restored layout, a checkpoint saved to disk

def _h5(folder, img_id, rng):
    import h5py
    folder.mkdir(parents=True, exist_ok=True)
    a = rng.standard_normal((49, 2048)).astype("float16")
    with h5py.File(folder / f"{img_id}.h5", "w") as f:
        f.create_group(img_id).create_dataset("features", data=a)
    return a


@pytest.fixture(scope="module")
def fake_vladapter(tmp_path_factory):
    """<root>/vl-adapter/datasets with two or three items per task and split, in the files' real formats."""
    import json

    import numpy as np

    from clipadapt.data.vladapter import FEATURES
    root = tmp_path_factory.mktemp("data")
    ds = root / "vl-adapter" / "datasets"
    rng = np.random.default_rng(0)
    coco = ["COCO_train2014_000000000009", "COCO_train2014_000000000025", "COCO_val2014_000000000042",
            "COCO_val2014_000000000073"]
    arrays = {i: _h5(ds / "COCO" / FEATURES, i, rng) for i in coco}
    for i in ("2354786", "2368326"):
        _h5(ds / "VG" / FEATURES, i, rng)
    _h5(ds / "GQA" / FEATURES, "n161313", rng)
    for i in ("train-10171-0-img0", "train-10171-0-img1", "test1-0-1-img0", "test1-0-1-img1"):
        _h5(ds / "nlvr" / FEATURES, i, rng)

    def write(rel, obj):
        (ds / rel).parent.mkdir(parents=True, exist_ok=True)
        (ds / rel).write_text(json.dumps(obj))
    sents = lambda k: [{"raw": f"a caption number {j} of image {k} "} for j in range(5)]
    write("COCO/dataset_coco.json", {"images": [
        {"filename": coco[0] + ".jpg", "split": "train", "sentences": sents(0)},
        {"filename": coco[1] + ".jpg", "split": "restval", "sentences": sents(1)},
        {"filename": coco[2] + ".jpg", "split": "val", "sentences": sents(2)},
        {"filename": coco[3] + ".jpg", "split": "test", "sentences": sents(3)}]})
    write("vqa/karpathy_train.json", [
        {"img_id": coco[0], "sent": "What is on the table?", "label": {"cake": 1.0, "pie": 0.3}, "question_id": 1},
        {"img_id": coco[1], "sent": "Is it raining?", "label": {}, "question_id": 2}])
    write("vqa/karpathy_test.json", [
        {"img_id": coco[3], "sent": "What colour is the bus?", "label": {"red": 1.0, "orange": 0.6},
         "question_id": 3}])
    write("GQA/train.json", [{"img_id": "2354786", "sent": "Is the sky blue?", "label": {"yes": 1.0},
                              "question_id": "02930152"}])
    write("GQA/valid.json", [{"img_id": "2368326", "sent": "Who wears the hat?", "label": {"man": 1.0},
                              "question_id": "03130152"}])
    write("GQA/testdev.json", [{"img_id": "n161313", "sent": "Which side is the cup on?", "label": {"left": 1.0},
                                "question_id": "201307251"}])
    write("nlvr/train.json", [{"img0": "train-10171-0-img0", "img1": "train-10171-0-img1",
                               "sent": "There are two dogs.", "label": 0, "uid": "train-10171-0"}])
    write("nlvr/test.json", [{"img0": "test1-0-1-img0", "img1": "test1-0-1-img1", "sent": "One cup is red.",
                              "label": 1, "uid": "test1-0-1"}])
    return root, arrays


def test_vladapter_reader_builds_the_official_splits_from_the_restored_layout(fake_vladapter):
    import numpy as np

    from clipadapt.data import vladapter
    root, arrays = fake_vladapter
    train, feats = vladapter.load_vladapter("train", root)
    n = {t: len(train.of_task(t)) for t in vltasks.TASKS}
    # captions: one example per caption of Karpathy train + restval; VQA: the question without answers is dropped;
    # GQA: train + valid
    assert n == {"vqa": 1, "gqa": 2, "nlvr": 1, "caption": 10}
    q = train.of_task("vqa")[0]
    assert (q.target, q.references, q.weights) == ("cake", ("cake", "pie"), (1.0, 0.3))
    nl = train.of_task("nlvr")[0]
    assert nl.target == "false" and [train.images[i] for i in nl.images] == ["train-10171-0-img0",
                                                                             "train-10171-0-img1"]
    assert len(train.images) == len(feats) == 6 and feats.shape == (6, 36, 2048)
    cap = train.of_task("caption")[0]
    assert train.images[cap.images[0]] == "COCO_train2014_000000000009" and len(cap.references) == 5
    # the 7 x 7 grid (tokens row-major) is max-pooled to 6 x 6 with windows [i, i + 2)
    grid = arrays["COCO_train2014_000000000009"].astype("float32").reshape(7, 7, 2048)
    want = np.stack([grid[r:r + 2, c:c + 2].max((0, 1)) for r in range(6) for c in range(6)])
    assert np.allclose(feats[cap.images[0]].numpy(), want)

    test, tfeats = vladapter.load_vladapter("test", root)
    assert {t: len(test.of_task(t)) for t in vltasks.TASKS} == {"vqa": 1, "gqa": 1, "nlvr": 1, "caption": 1}
    assert test.of_task("caption")[0].references[4] == "a caption number 4 of image 3"
    assert tfeats.files[test.of_task("gqa")[0].images[0]].parts[-4] == "GQA"   # testdev images live under GQA/
    assert tfeats.shape == (4, 36, 2048)


def test_vladapter_subsets_are_seeded_and_missing_data_names_the_prepare_command(fake_vladapter, tmp_path):
    from clipadapt.data import vladapter
    from clipadapt.data.real import DatasetMissingError
    root, _ = fake_vladapter
    a, _ = vladapter.load_vladapter("train", root, n_per_task=1, seed=3)
    b, _ = vladapter.load_vladapter("train", root, n_per_task=1, seed=3)
    assert [e.target for e in a.examples] == [e.target for e in b.examples] and len(a.examples) == 4
    with pytest.raises(DatasetMissingError, match=f"prepare_vladapter.py --root {tmp_path}"):
        vladapter.load_vladapter("train", tmp_path)
    with pytest.raises(ValueError, match="split must be one of train, test"):
        vladapter.load_vladapter("val", root)
    gone = vladapter.H5Features([tmp_path / "COCO" / vladapter.FEATURES / "x.h5"], ["x"], root=tmp_path)
    with pytest.raises(DatasetMissingError, match="--datasets COCO"):
        gone[0]


def test_vqa_answers_score_the_soft_label_of_the_answer():
    e = vltasks.VLExample("vqa", (0,), "q", "red", ("red", "orange"), (1.0, 0.6))
    assert [vltrain.answer_score(p, e) for p in ("Red", "orange", "blue")] == [1.0, 0.6, 0.0]
    plain = vltasks.VLExample("gqa", (0,), "q", "left", ("left",))
    assert (vltrain.answer_score("left", plain), vltrain.answer_score("right", plain)) == (1.0, 0.0)


def test_paper_code_path_trains_and_scores_a_saved_checkpoint_on_the_restored_layout(small, fake_vladapter, tmp_path):
    """What the paper profile runs, with a checkpoint saved to a local folder standing in for the hub's BART-base."""
    from clipadapt.data import vladapter
    tok = small[0].tokenizer
    lm = seq2seq.tiny_lm(seq2seq.TinyLMConfig(d_model=32, heads=2, ffn=64, max_positions=128), len(tok))
    lm.save_pretrained(tmp_path / "lm")   # 128 positions: an NLVR pair is 72 visual tokens
    tok.save_pretrained(tmp_path / "lm")
    root, _ = fake_vladapter
    data = {}
    for k in ("train", "test"):
        data[k], data[f"{k}_feats"] = vladapter.load_vladapter(k, root)
    vl = seq2seq.load_pretrained_vl(str(tmp_path / "lm"), feat_dim=2048)
    assert vl.visual.feat[0].in_features == 2048
    cfg = vltrain.recipe(epochs=2, batch_size=4)
    runs = vltrain.compare(lambda: copy.deepcopy(vl), data, ["vl-pet-large", "bitfit"], (0,), cfg,
                           decode=vltrain.Decoding(num_beams=2, max_new_tokens=4),
                         show_progress=False)
    assert list(runs.method) == ["vl-pet-large", "bitfit"]
    for _, r in runs.iterrows():
        assert len(r.loss) == 2 * 6 and all(torch.isfinite(torch.tensor(r.loss)))   # batches of 4: 1 + 1 + 1 + 3
        assert set(r.pred) == set(vltasks.TASKS) and all(len(r.pred[t]) == 1 for t in vltasks.TASKS)
        assert 0 <= r.vqa <= 100 and r.nlvr in (0.0, 100.0)
    with pytest.raises(ValueError, match="bart-base, t5-base or a local folder"):
        seq2seq.load_pretrained_vl("bart-large")


def test_prepare_vladapter_runs_the_restore_tool_into_the_layout_the_reader_reads(tmp_path):
    import importlib.util
    import json
    from pathlib import Path

    from clipadapt.data import vladapter
    spec = importlib.util.spec_from_file_location("prep", Path(__file__).parents[1] / "data_scripts" /
                                                  "prepare_vladapter.py")
    prep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prep)
    tool = tmp_path / "restore.py"   # a stand-in for the official tool: records its arguments
    tool.write_text("import json, sys; open(sys.argv[sys.argv.index('--out') + 1] + '/args.json', 'w')"
                    ".write(json.dumps(sys.argv[1:]))\n")
    assert prep.main(["--root", str(tmp_path), "--tool", str(tool), "--datasets", "COCO", "--limit-shards", "1"]) == 0
    out = vladapter.vladapter_root(tmp_path)
    assert json.loads((out / "args.json").read_text()) == ["--out", str(out), "--datasets", "COCO",
                                                           "--limit-shards", "1"]
    with pytest.raises(SystemExit, match="does not exist"):
        prep.main(["--root", str(tmp_path), "--tool", str(tmp_path / "nope.py")])
