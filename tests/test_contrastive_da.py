"""Contrastive adaptation of frozen embeddings: the pair loss, the head, the representations, the embedding cache,
the returns-desk task and the MM-IMDb reader."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clipadapt.methods import contrastive_da as da


def test_pair_loss_matches_a_hand_computation_and_ignores_batch_order():
    z = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.0, -1.0]])
    y = torch.tensor([0, 0, 1])
    # pairs (0,1) same, (0,2) different, (1,2) different; logits = dot / T
    logits = torch.tensor([0.5, 0.0, -0.5]) / 0.1
    targets = torch.tensor([1.0, 0.0, 0.0])
    by_hand = sum(-(t * torch.log(torch.sigmoid(l)) + (1 - t) * torch.log(1 - torch.sigmoid(l)))
                  for l, t in zip(logits, targets)) / 3
    assert da.pair_loss(z, y, 0.1).item() == pytest.approx(by_hand.item(), rel=1e-5)
    g = torch.Generator().manual_seed(0)
    zb, yb = torch.randn(9, 4, generator=g), torch.randint(0, 3, (9,), generator=g)
    perm = torch.randperm(9, generator=g)
    assert da.pair_loss(zb[perm], yb[perm]).item() == pytest.approx(da.pair_loss(zb, yb).item(), rel=1e-6)


def test_positives_are_the_same_label_pairs_i_below_j():
    i, j = da.pairs(5)
    assert len(i) == 10 and bool((i < j).all())
    y = torch.tensor([1, 1, 0, 1, 0])
    same = {(int(a), int(b)) for a, b in zip(i, j) if y[a] == y[b]}
    assert same == {(0, 1), (0, 3), (1, 3), (2, 4)}


@pytest.mark.parametrize("d", [384, 20])
def test_head_has_the_authors_shape_and_count(d):
    h = da.ProjectionHead(d)
    hidden = min(d // 2, 16)
    assert (h.fc1.out_features, h.fc2.out_features) == (hidden, 128)
    assert sum(p.numel() for p in h.parameters()) == d * hidden + hidden + hidden * 128 + 128
    assert h(torch.zeros(3, d)).shape == (3, 128)


def _blobs(n=240, d=24, k=3, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    centers = rng.normal(0, 1, (k, d))
    return (centers[y] * 0.6 + rng.normal(0, 1, (n, d))).astype(np.float32), y


def test_head_training_lowers_the_loss_is_seeded_and_checks_its_input():
    x, y = _blobs()
    cfg = da.HeadConfig(epochs=30, batch_size=64)
    head, hist = da.train_head(x, y, cfg)
    assert hist[-1]["train_loss"] < 0.7 * hist[0]["train_loss"]
    assert hist[-1]["monitor_pair_auc"] > 0.7
    head2, hist2 = da.train_head(x, y, cfg)
    # same seed, same numbers (to float rounding: CPU reductions may split work differently between runs)
    assert [h["train_loss"] for h in hist] == pytest.approx([h["train_loss"] for h in hist2], rel=1e-5)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(head.state_dict().values(), head2.state_dict().values()))
    with pytest.raises(ValueError, match="two classes"):
        da.train_head(x, np.zeros(len(x), int), cfg)
    with pytest.raises(ValueError, match="240 embeddings but 3 labels"):
        da.train_head(x, y[:3], cfg)


def test_representations_have_the_expected_widths_and_only_the_head_trains():
    x, y = _blobs(d=40)
    tr = {"text": x[:160, :30], "image": x[:160, 30:]}
    te = {"text": x[160:, :30], "image": x[160:, 30:]}
    cfg = da.HeadConfig(epochs=2)
    assert da.represent("raw", "joint", tr, y[:160], te, cfg).train.shape == (160, 40)
    pca = da.represent("pca", "per-modality", tr, y[:160], te, cfg)
    assert pca.train.shape == (160, 10 + 30) and pca.test.shape == (80, 40)   # capped by each modality's width
    joint = da.represent("head", "joint", tr, y[:160], te, cfg)
    per = da.represent("head", "per-modality", tr, y[:160], te, cfg)
    assert joint.train.shape == (160, 128) and per.train.shape == (160, 256)
    assert joint.trainable == 40 * 16 + 16 + 16 * 128 + 128
    assert per.trainable == sum(d * 15 + 15 + 15 * 128 + 128 if d == 30 else d * 5 + 5 + 5 * 128 + 128 for d in (30, 10))
    with pytest.raises(ValueError, match="unknown representation 'umap'"):
        da.represent("umap", "joint", tr, y[:160], te, cfg)
    with pytest.raises(ValueError, match="unknown fusion 'late'"):
        da.represent("raw", "late", tr, y[:160], te, cfg)


def test_benchmark_rows_and_a_stratified_labelled_sample():
    x, y = _blobs(n=300)
    lab = {s: da.labelled_sample(y[:200], 60, s) for s in (0, 1)}
    assert len(lab[0]) == 60 and not np.array_equal(lab[0], lab[1])
    assert abs(np.bincount(y[lab[0]], minlength=3) - 60 * np.bincount(y[:200]) / 200).max() <= 1
    df = da.benchmark({"a": x}, y, lab, np.arange(200, 300), {"raw": ("raw", "joint"), "head": ("head", "joint")},
                      cfg=da.HeadConfig(epochs=2), classifier_names=("LR", "CART"), show_progress=False)
    assert len(df) == 2 * 2 * 2 and df.macro_f1.between(0, 100).all()
    with pytest.raises(ValueError, match="pool of 200"):
        da.labelled_sample(y[:200], 200, 0)


def test_embedding_cache_is_reused_and_invalidated_and_checks_shapes(tmp_path, monkeypatch):
    from clipadapt import embeddings as emb
    monkeypatch.setenv("CLIPADAPT_CACHE", str(tmp_path))
    calls = []

    def enc(items):
        calls.append(len(items))
        return np.stack([[len(t), t.count("a"), 1.0] for t in items]).astype(np.float32)
    e = emb.Encoder("toy", "text", "v1", 3, enc)
    texts = ["a cat", "banana", "b"]
    a = emb.cached(e, texts, show_progress=False)
    b = emb.cached(e, texts, show_progress=False)
    assert calls == [3] and np.array_equal(a, b)                       # the second call read the file
    emb.cached(e, texts + ["more"], show_progress=False)                # new data: recomputed
    emb.cached(emb.Encoder("toy", "text", "v2", 3, enc), texts, show_progress=False)   # new weights: recomputed
    assert calls == [3, 4, 3]
    np.save(emb.cache_path(e, texts), np.zeros((2, 3), np.float32))    # a file that does not fit the data
    with pytest.raises(emb.EmbeddingFileError, match=r"shape \(2, 3\), but the data needs \(3, 3\).*Delete the file"):
        emb.cached(e, texts, show_progress=False)
    with pytest.raises(ValueError, match="unknown encoder 'gpt'"):
        emb.load_encoder("gpt")


def test_minilm_text_encoder_loads_offline():
    from clipadapt import embeddings as emb
    e = emb.load_encoder("all-MiniLM-L6-v2")
    x = e.encode(["TEE SS BLK", "a t-shirt"], show_progress=False)
    assert x.shape == (2, 384) and np.allclose(np.linalg.norm(x, axis=1), 1, atol=1e-4)


def test_returns_desk_task_is_seeded_and_shifted_in_both_modalities():
    from clipadapt.data import listings
    a, b = listings.load_listings(0), listings.load_listings(0)
    s, t = a["source"], a["target"]
    assert len(s.labels) == listings.N_SOURCE and len(t.labels) == listings.N_POOL + listings.N_TEST
    assert np.array_equal(t.images, b["target"].images) and t.texts == b["target"].texts
    assert all(t_.endswith(".") for t_ in s.texts) and not any(t_.endswith(".") and " in " in t_ for t_ in t.texts)
    blank = sum(any(t_.endswith(x) for x in listings.DESK_BLANK) for t_ in t.texts) / len(t.texts)
    assert abs(blank - listings.P_BLANK) < 0.05
    assert abs(float(s.images.mean()) - float(t.images.mean())) > 20   # desk photos sit on coloured tables


def test_training_memory_separates_a_frozen_from_a_trained_model():
    from clipadapt.bench import training_memory
    m = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 4))
    x = torch.randn(32, 64)
    full = training_memory(m, lambda: F.cross_entropy(m(x), torch.zeros(32, dtype=torch.long)))
    m[0].requires_grad_(False)
    part = training_memory(m, lambda: F.cross_entropy(m(x), torch.zeros(32, dtype=torch.long)))
    n_all, n_last = sum(p.numel() for p in m.parameters()), 256 * 4 + 4
    assert full["grads_and_adam_mb"] == pytest.approx(3 * 4 * n_all / 2**20)
    assert part["grads_and_adam_mb"] == pytest.approx(3 * 4 * n_last / 2**20)
    assert full["activations_mb"] > 0 and full["total_mb"] > part["total_mb"]


def test_finetuned_reference_trains_the_whole_encoder():
    from timm.data import create_transform
    from timm.models.vision_transformer import VisionTransformer

    from clipadapt.engine import TrainSpec
    from clipadapt.models.vit import LoadedViT
    rng = np.random.default_rng(0)
    images, y = rng.integers(0, 255, (20, 16, 16, 3), dtype=np.uint8), np.arange(20) % 2
    load = lambda k: LoadedViT(VisionTransformer(img_size=16, patch_size=8, embed_dim=32, depth=1, num_heads=2,
                                                 num_classes=k), create_transform(input_size=(3, 16, 16), crop_pct=1.0), "t")
    feats, info = da.finetuned_image_features(load, images, y, np.arange(12), TrainSpec(epochs=1, warmup=0.0))
    assert feats.shape == (20, 32) and info["trainable"] == sum(p.numel() for p in load(2).model.parameters())
    assert info["activations_mb"] > 0 and info["train_s"] > 0


def test_mmimdb_reader_keeps_drama_xor_comedy_from_the_official_layout(tmp_path):
    import json

    from PIL import Image

    from clipadapt.data import mmimdb
    from clipadapt.data.real import DatasetMissingError
    d = tmp_path / "mmimdb" / "dataset"
    d.mkdir(parents=True)
    movies = {"0001": ["Drama"], "0002": ["Comedy", "Romance"], "0003": ["Drama", "Comedy"], "0004": ["Horror"],
              "0005": ["Comedy"]}
    for mid, genres in movies.items():
        (d / f"{mid}.json").write_text(json.dumps({"genres": genres, "plot": [f"plot of {mid}", "second"]}))
        Image.fromarray(np.zeros((30, 20, 3), np.uint8)).save(d / f"{mid}.jpeg")
    m = mmimdb.load_mmimdb(tmp_path)
    assert m.texts == ["plot of 0001", "plot of 0002", "plot of 0005"] and m.labels.tolist() == [0, 1, 1]
    assert m.images[0].shape == (30, 20, 3)
    assert set(mmimdb.folds(1000)) == set(range(5))
    with pytest.raises(DatasetMissingError, match="prepare_mmimdb.py --root"):
        mmimdb.load_mmimdb(tmp_path / "none")
