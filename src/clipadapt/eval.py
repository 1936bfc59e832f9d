"""Shared evaluation: image/text encoding in batches, zero-shot classifiers, accuracy and confusion matrices."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .transforms import preprocess_batch
from .utils import progress


def check_classnames(classnames) -> list[str]:
    """The class names as a list; none, or a name given twice, is an error that says why."""
    names = list(classnames)
    if not names:
        raise ValueError("no class names: give one name per class, in the order of the label ids")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"class names must differ: {', '.join(map(repr, twice))} appear more than once (their "
                         "classes could not be told apart); give one distinct name per class")
    return names


def check_labels(labels, classnames) -> np.ndarray:
    """Labels as an array of class ids that index `classnames`; an id outside them is an error that says so."""
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() >= len(classnames)):
        raise ValueError(f"the labels run from {labels.min()} to {labels.max()} but there are {len(classnames)} class "
                         "names: give one name per class id, in the order of the ids")
    return labels


@torch.no_grad()
def encode_images(model, preprocess: Callable, images: np.ndarray | Sequence[np.ndarray], batch_size: int = 256,
                  normalize: bool = True, show_progress: bool = False, device: str | torch.device = "cpu") -> torch.Tensor:
    """Image embeddings of uint8 images, through the model's own preprocessing; L2-normalised by default."""
    if len(images) == 0:
        raise ValueError("no images to encode: the set is empty (check the folder, split or filter that made it)")
    out = []
    for i in progress(range(0, len(images), batch_size), desc="encode images", disable=not show_progress):
        x = preprocess_batch(preprocess, images[i:i + batch_size]).to(device)
        out.append(model.encode_image(x, normalize=normalize).float().cpu())
    return torch.cat(out)


@torch.no_grad()
def encode_texts(model, tokenizer: Callable, texts: Sequence[str], normalize: bool = True,
                 device: str | torch.device = "cpu") -> torch.Tensor:
    return model.encode_text(tokenizer(list(texts)).to(device), normalize=normalize).float().cpu()


@torch.no_grad()
def zero_shot_weights(model, tokenizer: Callable, classnames: Sequence[str], templates: Sequence[str] = ("a photo of a {}.",),
                      device: str | torch.device = "cpu") -> torch.Tensor:
    """Class weights (classes x dim): the normalised mean of each class's normalised template embeddings."""
    classnames = check_classnames(classnames)
    w = []
    for c in classnames:
        e = encode_texts(model, tokenizer, [t.format(c) for t in templates], device=device).mean(0)
        w.append(F.normalize(e, dim=-1))
    return torch.stack(w)


def zero_shot_predict(image_features: torch.Tensor, class_weights: torch.Tensor) -> torch.Tensor:
    return (image_features @ class_weights.T).argmax(-1)


def accuracy(pred, labels) -> float:
    """Top-1 accuracy in percent."""
    pred, labels = np.asarray(pred), np.asarray(labels)
    return float((pred == labels).mean() * 100.0) if len(labels) else float("nan")


def uar_war(pred, labels, n_classes: int) -> tuple[float, float]:
    """Dynamic facial expression recognition's two numbers, in percent: UAR, the mean over classes of each class's
    recall (classes absent from `labels` are skipped), and WAR, the overall accuracy."""
    cm = confusion_matrix(pred, labels, n_classes, normalize=False)
    seen = cm.sum(1) > 0
    return float((np.diag(cm)[seen] / cm.sum(1)[seen]).mean() * 100.0), accuracy(pred, labels)


def confusion_matrix(pred, labels, n_classes: int, normalize: bool = True) -> np.ndarray:
    """Rows: true class, columns: predicted class; row-normalised (recall per class) by default."""
    cm = np.zeros((n_classes, n_classes), np.float64)
    np.add.at(cm, (np.asarray(labels), np.asarray(pred)), 1)
    if normalize:
        cm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    return cm


def zero_shot_accuracy(model, preprocess, tokenizer, dataset, template: str = "a photo of a {}.",
                       device="cpu") -> tuple[float, np.ndarray]:
    """(top-1 % , predictions) of zero-shot classification of a LabelledSet with one prompt template."""
    check_labels(dataset.labels, dataset.classes)
    w = zero_shot_weights(model, tokenizer, dataset.classes, (template,), device=device)
    pred = zero_shot_predict(encode_images(model, preprocess, dataset.images, device=device), w).numpy()
    return accuracy(pred, dataset.labels), pred


def attribute_auc(image_features: torch.Tensor, text_features: torch.Tensor, targets: np.ndarray) -> np.ndarray:
    """ROC AUC per attribute of the image-text similarity as a detector of that attribute.

    `text_features` (k x dim) holds one text per attribute, `targets` (n x k) says which images have it. 0.5 is
    chance, 1.0 a perfect ranking; NaN where a column has only one class.
    """
    from sklearn.metrics import roc_auc_score
    sims = (image_features @ text_features.T).numpy()
    out = []
    for j in range(targets.shape[1]):
        t = np.asarray(targets[:, j]).astype(bool)
        out.append(roc_auc_score(t, sims[:, j]) if 0 < t.sum() < len(t) else float("nan"))
    return np.array(out)


@torch.no_grad()
def class_alignment(model, tokenizer, preprocess, images, labels, classnames, template: str = "a photo of a {}.",
                    device="cpu") -> np.ndarray:
    """Per class: cosine between the mean image embedding of its images (true labels) and its text embedding."""
    img = encode_images(model, preprocess, images, normalize=False, device=device)
    txt = encode_texts(model, tokenizer, [template.format(c) for c in classnames], device=device)
    labels = np.asarray(labels)
    out = []
    for k in range(len(classnames)):
        sel = torch.from_numpy(labels == k)
        out.append(float(F.cosine_similarity(img[sel].mean(0), txt[k], dim=0)) if sel.any() else float("nan"))
    return np.array(out)


def normalize_answer(text: str) -> str:
    """Lower case, punctuation dropped, spaces collapsed: how generated answers and captions are compared."""
    import re
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def cider(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus CIDEr-D x 100 (the captioning number of VL-T5 / VL-PET) with pycocoevalcap's maintained scorer, on
    normalised text. IDF comes from the references of the set scored, as in the COCO evaluation."""
    from pycocoevalcap.cider.cider import Cider
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} reference lists")
    gts = {i: [normalize_answer(r) for r in refs] for i, refs in enumerate(references)}
    res = {i: [normalize_answer(p)] for i, p in enumerate(predictions)}
    return float(Cider().compute_score(gts, res)[0] * 100.0)
