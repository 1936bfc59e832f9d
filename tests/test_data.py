import numpy as np
import pytest

from clipadapt.data import corruptions, faces, microworld, real, shapes


def test_shapes_are_deterministic_and_shaped():
    a, sa = shapes.make_shapes(20, seed=3)
    b, sb = shapes.make_shapes(20, seed=3)
    c, _ = shapes.make_shapes(20, seed=4)
    assert a.shape == (20, 32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and sa == sb
    assert not np.array_equal(a, c)


def test_shape_captions_agree_with_attributes():
    _, scenes = shapes.make_shapes(300, seed=0)
    for s in scenes:
        cap = s.caption
        assert s.shape in cap  # every caption names the shape (singular or plural)
        if s.count > 1:
            assert shapes.COUNT_WORDS[s.count] in cap and shapes.plural(s.shape) in cap
        for word in shapes.COLORS:
            if word in cap.split():
                assert word == s.color
        if s.position and "on the" in cap:
            assert cap.rstrip(".").endswith(s.position)
    assert {s.shape for s in scenes} == set(shapes.SHAPES)


def test_rendered_count_matches_caption():
    # a shape drawn k times covers about k times the pixels of one small shape
    rng = np.random.default_rng(0)
    areas = {k: [] for k in (1, 2, 3)}
    for _ in range(60):
        for k in (1, 2, 3):
            im, s = shapes.render_scene(rng, shape="square", count=k)
            if s.size == "small":
                bg = im[0, 0].astype(int)
                areas[k].append((np.abs(im.astype(int) - bg).sum(-1) > 60).sum())
    m = {k: np.mean(v) for k, v in areas.items()}
    assert m[1] < m[2] < m[3]


def test_faces_deterministic_and_captioned_by_active_aus():
    x, aus, caps = faces.make_faces(40, seed=1)
    x2, aus2, caps2 = faces.make_faces(40, seed=1)
    assert x.shape == (40, faces.IMAGE_SIZE, faces.IMAGE_SIZE, 3) and aus.shape == (40, len(faces.AUS))
    assert np.array_equal(x, x2) and caps == caps2
    for v, cap in zip(aus, caps):
        for au, inten in zip(faces.AUS, v):
            name = faces.AU_NAMES[au].lower()
            assert (name in cap) == (inten >= faces.ACTIVE), (cap, au, inten)
        if (v < faces.ACTIVE).all():
            assert "relaxed muscles" in cap


def _region_change(au, rows):
    idt = faces.Identity()
    d = np.abs(faces.render_face({au: 1.0}, idt).astype(int) - faces.render_face({}, idt).astype(int)).sum(-1)
    return d[rows].sum(), d.sum()


def test_action_units_move_the_right_part_of_the_face():
    n = faces.IMAGE_SIZE
    upper, lower = slice(0, int(0.5 * n)), slice(int(0.62 * n), n)
    for au in (1, 2, 4):      # brows: the change is in the upper face
        up, total = _region_change(au, upper)
        assert total > 0 and up / total > 0.8, au
    for au in (12, 15, 26):   # mouth and jaw: the change is in the lower face
        low, total = _region_change(au, lower)
        assert total > 0 and low / total > 0.8, au


def test_unknown_au_is_rejected():
    with pytest.raises(ValueError, match="AU3 is not modelled"):
        faces.render_face({3: 1.0})


def test_fashion_mnist_loads():
    x, y = real.load_fashion_mnist("test")
    assert x.shape == (10000, 28, 28, 3) and x.dtype == np.uint8
    assert set(np.unique(y)) == set(range(10))


def test_missing_fashion_mnist_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(real, "FASHION_DIRS", (str(tmp_path / "nowhere"),))
    monkeypatch.delenv("CLIPADAPT_FASHION_MNIST", raising=False)
    with pytest.raises(real.DatasetMissingError, match="apt-get install -y dataset-fashion-mnist"):
        real.load_fashion_mnist("train")


def test_digits():
    x, y = real.load_digits_rgb()
    assert x.shape == (1797, 8, 8, 3) and x.max() == 255 and len(y) == 1797


def test_corruption_names_follow_cifar10c():
    assert corruptions.CORRUPTIONS == (
        "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
        "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression")
    with pytest.raises(ValueError, match="unknown corruption"):
        corruptions.corrupt(np.zeros((32, 32, 3), np.uint8), "rain", 3)
    with pytest.raises(ValueError, match="severity"):
        corruptions.corrupt(np.zeros((32, 32, 3), np.uint8), "fog", 6)


@pytest.mark.parametrize("name", corruptions.CORRUPTIONS)
def test_every_corruption_changes_images_deterministically(name):
    x, _ = shapes.make_shapes(4, seed=2)
    y5 = corruptions.corrupt_batch(x, name, 5, seed=1)
    assert y5.shape == x.shape and y5.dtype == np.uint8
    assert np.array_equal(y5, corruptions.corrupt_batch(x, name, 5, seed=1))
    assert np.abs(y5.astype(int) - x).mean() > 0.5


def test_cifar_severity_constants_take_effect():
    # CIFAR-10-C Gaussian noise: std 0.04 (severity 1) .. 0.10 (severity 5), in [0,1] units; ImageNet-C's is 0.08-0.38
    grey = np.full((64, 32, 32, 3), 128, np.uint8)
    for sev, std in ((1, 0.04), (5, 0.10)):
        y = corruptions.corrupt_batch(grey, "gaussian_noise", sev, seed=0) / 255.0
        assert abs(y.std() - std) < 0.1 * std
    # contrast severity 5 keeps 15% of the deviation from the mean
    x, _ = shapes.make_shapes(8, seed=0)
    y = corruptions.corrupt_batch(x, "contrast", 5)
    ratio = (y / 255.0).std(axis=(1, 2)).mean() / (x / 255.0).std(axis=(1, 2)).mean()
    assert abs(ratio - 0.15) < 0.03


def test_heldout_sets_do_not_overlap_pretraining():
    with pytest.raises(ValueError, match="pretraining seeds"):
        microworld.pretraining_corpus(microworld.HELDOUT_SEED, 1, 1, 0, progress=False)
    c = microworld.pretraining_corpus(0, 10, 10, 10, progress=False)
    assert len(c) == 30 and c.source.count("fashion") == 10
    held = microworld.heldout_shapes(10)
    pre, _ = shapes.make_shapes(10, 0)
    assert not np.array_equal(held.images, pre)


def test_cifar_c_loader_reads_the_release_layout(tmp_path):
    from clipadapt.data import registry
    folder = tmp_path / "CIFAR-10-C"
    folder.mkdir()
    per = 4  # 5 severity blocks of 4 fake images, as the release has 5 blocks of 10,000
    x = np.stack([np.full((32, 32, 3), 10 * s + i, np.uint8) for s in range(5) for i in range(per)])
    np.save(folder / "fog.npy", x)
    np.save(folder / "labels.npy", np.tile(np.arange(per), 5).astype(np.uint8))
    imgs, labels = registry.load_cifar_c("cifar10-c", "fog", 3, root=tmp_path)
    assert imgs.shape == (per, 32, 32, 3) and (imgs[:, 0, 0, 0] == [20, 21, 22, 23]).all()
    assert labels.tolist() == [0, 1, 2, 3]
    assert registry.load_cifar_c("cifar10-c", "fog", 5, root=tmp_path, n=2)[0].shape[0] == 2
    # a seeded stream is a shuffle of the same severity block, images and labels kept together
    a, la = registry.load_cifar_c("cifar10-c", "fog", 3, root=tmp_path, seed=1)
    b, _ = registry.load_cifar_c("cifar10-c", "fog", 3, root=tmp_path, seed=1)
    assert np.array_equal(a, b) and sorted(a[:, 0, 0, 0]) == [20, 21, 22, 23]
    assert (a[:, 0, 0, 0] - 20 == la).all()
    with pytest.raises(real.DatasetMissingError,
                       match="python data_scripts/prepare_corruptions.py --dataset cifar10-c --root"):
        registry.load_cifar_c("cifar10-c", "snow", 5, root=tmp_path)
    with pytest.raises(ValueError, match="unknown corruption"):
        registry.load_cifar_c("cifar10-c", "rain", 5, root=tmp_path)
    with pytest.raises(ValueError, match="unknown dataset"):
        registry.load_cifar_c("cifar10.1", "fog", 5, root=tmp_path)
    assert len(registry.CIFAR100_CLASSES) == 100


def _fake_imagenet_c(root, corruption="fog", severity=5, per_class=2, n_classes=1000):
    from PIL import Image
    folder = root / "ImageNet-C" / corruption / str(severity)
    for k in range(n_classes):
        d = folder / f"n{k:08d}"
        d.mkdir(parents=True)
        for j in range(per_class if k < 3 else 0):  # only the first 3 classes get images: keeps the test small
            Image.fromarray(np.full((224, 224, 3), 40 * k + j, np.uint8)).save(d / f"ILSVRC2012_val_{k}{j}.JPEG")
    return folder


def test_imagenet_c_loader_reads_the_release_layout(tmp_path):
    from clipadapt.data import registry
    _fake_imagenet_c(tmp_path)
    imgs, labels = registry.load_imagenet_c("fog", 5, root=tmp_path)
    assert len(imgs) == 6 and labels.tolist() == [0, 0, 1, 1, 2, 2]       # release order: sorted wnids
    x = imgs[0:4]
    assert len(x) == 4 and x[0].shape == (224, 224, 3) and x[0].dtype == np.uint8
    assert abs(int(x[2].mean()) - 40) <= 2                                # JPEG of the first image of class 1
    sub, sub_labels = registry.load_imagenet_c("fog", 5, root=tmp_path, n=3, seed=0)
    assert len(sub) == 3 and set(sub_labels) <= {0, 1, 2}
    with pytest.raises(real.DatasetMissingError, match="prepare_corruptions.py --dataset imagenet-c"):
        registry.load_imagenet_c("snow", 5, root=tmp_path)
    assert registry.DATASETS["imagenet-c"].classes[0] == "tench"         # index order of open_clip's class names


def test_imagenet_c_with_missing_classes_is_refused(tmp_path):
    from clipadapt.data import registry
    _fake_imagenet_c(tmp_path, n_classes=10)
    with pytest.raises(ValueError, match="has 10 class folders; ImageNet-C has 1000"):
        registry.load_imagenet_c("fog", 5, root=tmp_path)


def test_generated_streams_are_seeded_shuffles():
    from clipadapt.data.streams import GeneratedC
    src = GeneratedC(microworld.heldout_shapes(40))
    x0, y0 = src.stream("gaussian_noise", 5, seed=0)
    x1, y1 = src.stream("gaussian_noise", 5, seed=0)
    x2, y2 = src.stream("gaussian_noise", 5, seed=1)
    assert np.array_equal(x0, x1) and np.array_equal(y0, y1)
    assert not np.array_equal(y0, y2) and sorted(y0) == sorted(y2)
    with pytest.raises(ValueError, match="unknown corruption"):
        src.stream("rain", 5)


def test_fgvc_converters_read_each_official_release_and_the_loader_reads_the_maps(tmp_path):
    # a few fake images in the on-disk formats of the five releases (text tables or MATLAB files)
    from PIL import Image
    from scipy.io import savemat

    from clipadapt.data import fgvc
    from clipadapt.data.real import DatasetMissingError

    def img(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((12, 10, 3), 90, np.uint8)).save(path)

    def cub_like(src, cls_ids):
        rows = [(i + 1, f"{c:03d}.bird/{i}.jpg", c, int(i % 4 != 0)) for i, c in enumerate(cls_ids)]
        for _, p, _, _ in rows:
            img(src / "images" / p)
        (src / "images.txt").write_text("".join(f"{i} {p}\n" for i, p, _, _ in rows))
        (src / "image_class_labels.txt").write_text("".join(f"{i} {c}\n" for i, _, c, _ in rows))
        (src / "train_test_split.txt").write_text("".join(f"{i} {t}\n" for i, _, _, t in rows))

    cub_like(tmp_path / "fgvc/cub/source/CUB_200_2011", [1, 2, 1, 2, 1, 2, 1, 2] * 3)
    cub_like(tmp_path / "fgvc/nabirds/source/nabirds", [295, 313, 999] * 8)    # non-contiguous class ids
    fl = tmp_path / "fgvc/oxford_flowers/source"
    for i in range(1, 7):
        img(fl / "jpg" / f"image_{i:05d}.jpg")
    fl.mkdir(parents=True, exist_ok=True)
    savemat(fl / "imagelabels.mat", {"labels": np.array([[1, 2, 3, 1, 2, 102]])})
    savemat(fl / "setid.mat", {"trnid": np.array([[1, 2]]), "valid": np.array([[3, 4]]), "tstid": np.array([[5, 6]])})
    dg = tmp_path / "fgvc/stanford_dogs/source"
    files = [f"n0{k}-breed/{i}.jpg" for i, k in enumerate([1, 2] * 10)]
    for f in files:
        img(dg / "Images" / f)
    lst = lambda fs, ys: {"file_list": np.array(fs, dtype=object).reshape(-1, 1), "labels": np.array(ys).reshape(-1, 1)}
    savemat(dg / "train_list.mat", lst(files[:15], [1, 2] * 7 + [1]))
    savemat(dg / "test_list.mat", lst(files[15:], [2, 1, 2, 1, 120]))
    cr = tmp_path / "fgvc/stanford_cars/source"
    ann = lambda names, cls: {"annotations": np.array([(n, c) for n, c in zip(names, cls)],
                                                      dtype=[("fname", object), ("class", object)]).reshape(1, -1)}
    for i in range(12):
        img(cr / ("cars_train" if i < 10 else "cars_test") / f"{i:05d}.jpg")
    (cr / "devkit").mkdir()
    savemat(cr / "devkit/cars_train_annos.mat", ann([f"{i:05d}.jpg" for i in range(10)], [1, 196] * 5))
    savemat(cr / "cars_test_annos_withlabels.mat", ann(["00010.jpg", "00011.jpg"], [196, 1]))

    expect = {"cub": (16, 2, 6), "nabirds": (16, 2, 6), "oxford_flowers": (2, 2, 2), "stanford_dogs": (13, 2, 5),
              "stanford_cars": (9, 1, 2)}
    for name, (n_tr, n_va, n_te) in expect.items():
        fgvc.write_splits(name, tmp_path)
        t = fgvc.load_fgvc(name, tmp_path)
        assert (len(t.x_train), len(t.x_val), len(t.x_test)) == (n_tr, n_va, n_te), name
        assert t.group == "fgvc" and len(t.classes) == fgvc.FGVC[name][0]
        ys = np.concatenate([t.y_trainval, t.y_test])
        assert ys.min() == 0 and ys.max() < len(t.classes), name
        assert t.x_test[0].shape == (12, 10, 3) and len(t.x_trainval) == n_tr + n_va
        assert not set(t.x_train.paths) & set(t.x_val.paths)
    assert sorted(set(fgvc.load_fgvc("nabirds", tmp_path).y_test)) == [0, 1, 2]
    assert fgvc.load_fgvc("oxford_flowers", tmp_path).y_test.tolist() == [1, 101]
    with pytest.raises(DatasetMissingError, match="prepare_fgvc.py --dataset cub --root"):
        fgvc.load_fgvc("cub", tmp_path / "elsewhere")
    (tmp_path / "fgvc/stanford_dogs/source/test_list.mat").unlink()   # an incomplete release says what is missing
    with pytest.raises(DatasetMissingError, match="(?s)missing test_list.mat.*prepare_fgvc.py --dataset stanford_dogs"):
        fgvc.write_splits("stanford_dogs", tmp_path)
    with pytest.raises(ValueError, match="unknown FGVC dataset 'cars'"):
        fgvc.load_fgvc("cars", tmp_path)
