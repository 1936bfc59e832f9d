"""Architecture diagrams, drawn with matplotlib when the book is built (offline, no files to keep in sync).

`draw(name)` returns a figure: what CLIP is (`clip`, for the introduction) and, for each method, where its trained
parts sit in the frozen model (`peclip`, `vlpet`, `contrastive_da`, `batclip`, `spt`). Orange is trained, grey is
frozen, white is data, green is computed without weights. Labels are bilingual ("English / 日本語" on two lines).
The book places them with the `{clipadapt-diagram}` directive of `clipadapt.sphinxext`, which numbers and captions
them; the slides embed the same drawings (`clipadapt.slides`).
"""
from __future__ import annotations

import io

import matplotlib_fontja
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch, Rectangle

FONT = "IPAexGothic"
matplotlib_fontja.japanize()   # registers IPAexGothic with matplotlib's font manager
STYLE = {  # face, edge, line style
    "frozen": ("#e3e8ee", "#5f6f80", "-"),
    "trained": ("#f9c27b", "#c46b00", "-"),
    "data": ("#ffffff", "#8a8a8a", "--"),
    "computed": ("#dcefdc", "#4f8a4f", "-"),
}
LEGEND = {"frozen": "frozen / 凍結", "trained": "trained / 学習する", "data": "data / データ",
          "computed": "computed, no weights / 重みなしの計算"}
SCALE = 1.12   # every font size, for legibility at the book's column width
LEGEND_STEP = {"frozen": 1.55, "trained": 1.75, "data": 1.5, "computed": 0}


class _Canvas:
    """One figure in inches: x and y of every box are inches from the bottom left."""

    def __init__(self, width: float, height: float, kinds=("frozen", "trained", "data", "computed")):
        self.fig = Figure(figsize=(width, height), dpi=120)
        self.ax = self.fig.add_axes((0, 0, 1, 1))
        self.ax.set_xlim(0, width)
        self.ax.set_ylim(0, height)
        self.ax.axis("off")
        x = 0.15
        for kind in kinds:   # the legend: one swatch per kind along the top
            face, edge, ls = STYLE[kind]
            self.ax.add_patch(Rectangle((x, height - 0.3), 0.22, 0.16, fc=face, ec=edge, ls=ls, lw=1))
            self.text(x + 0.3, height - 0.22, LEGEND[kind], size=7.5, ha="left")
            x += LEGEND_STEP[kind]

    def text(self, x, y, s, size=8.0, ha="center", **kw):
        self.ax.text(x, y, s, ha=ha, va="center", fontsize=size * SCALE, family=FONT, linespacing=1.2, **kw)

    def box(self, x, y, w, h, label="", kind="frozen", size=8.0, z=2):
        face, edge, ls = STYLE[kind]
        self.ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0,rounding_size=0.07", fc=face, ec=edge,
                                         ls=ls, lw=1.1, zorder=z))
        if label:
            self.text(x + w / 2, y + h / 2, label, size=size, zorder=z + 1)
        return (x, y, w, h)

    def frame(self, x, y, w, h, label):
        """A frozen model drawn as a frame around its parts, its name on the top edge."""
        self.box(x, y, w, h, kind="frozen", z=1)
        self.text(x + w / 2, y + h - 0.2, label, size=8, zorder=3)

    def arrow(self, start, end, dashed=False, text="", **kw):
        self.ax.annotate("", xy=end, xytext=start, zorder=4, arrowprops=dict(
            arrowstyle="-|>", color="#444444", lw=1.0, ls="--" if dashed else "-", shrinkA=1, shrinkB=1, **kw))
        if text:
            self.text((start[0] + end[0]) / 2 + 0.08, (start[1] + end[1]) / 2, text, size=7, ha="left",
                      color="#444444")


def _right(b):
    return (b[0] + b[2], b[1] + b[3] / 2)


def _left(b):
    return (b[0], b[1] + b[3] / 2)


def _top(b):
    return (b[0] + b[2] / 2, b[1] + b[3])


def _bottom(b):
    return (b[0] + b[2] / 2, b[1])


def clip() -> Figure:
    c = _Canvas(8, 3.6, kinds=("frozen", "data", "computed"))
    img = c.box(0.15, 2.1, 1.5, 0.75, "a photo\n写真", "data")
    ienc = c.box(2.05, 2.1, 1.9, 0.75, "image encoder (ViT)\n画像エンコーダ")
    iemb = c.box(4.3, 2.1, 1.75, 0.75, "image embedding\n画像の埋め込み", "data")
    txt = c.box(0.15, 0.45, 1.5, 1.0, "“a photo of a cat.”\n“a photo of a dog.” …\nクラス名を入れた文", "data",
                size=7.5)
    tenc = c.box(2.05, 0.55, 1.9, 0.75, "text encoder (transformer)\nテキストエンコーダ")
    temb = c.box(4.3, 0.55, 1.75, 0.75, "one embedding per class\nクラスごとの埋め込み", "data")
    sim = c.box(6.4, 1.3, 1.5, 0.8, "cosine similarity\nコサイン類似度", "computed")
    for a, b in [(img, ienc), (ienc, iemb), (txt, tenc), (tenc, temb)]:
        c.arrow(_right(a), _left(b))
    c.arrow(_right(iemb), _top(sim))
    c.arrow(_right(temb), _bottom(sim))
    c.text(7.15, 0.75, "highest class\n= the prediction\n最も近いクラスが予測", size=7.5)
    c.text(3.0, 1.7, "pretrained together so that an image and its caption point the same way\n"
                     "画像とその説明文が同じ向きを指すように、2つのエンコーダを一緒に事前学習", size=7, color="#444444")
    return c.fig


def _stack(c, x, top, w, parts, gap=0.12, h=0.42):
    """Boxes from `top` downwards, joined by arrows; returns them."""
    boxes, y = [], top
    for label, kind in parts:
        y -= h
        boxes.append(c.box(x, y, w, h, label, kind, size=7.5, z=3))
        y -= gap
    for a, b in zip(boxes, boxes[1:]):
        c.arrow(_bottom(a), _top(b))
    return boxes


def peclip() -> Figure:
    c = _Canvas(8, 5.0)
    frames = c.box(0.3, 3.95, 2.6, 0.55, "video: T face frames\n動画 (顔の T フレーム)", "data")
    texts = c.box(5.1, 3.95, 2.6, 0.55, "Action-Unit class texts\nAU で書いたクラスの説明文", "data")
    maple = c.box(3.1, 3.4, 1.8, 0.7, "MaPLe prompts\n(text → image)\nMaPLe プロンプト", "trained", size=7.5)
    c.frame(0.2, 0.95, 2.8, 2.8, "image encoder, each block\n画像エンコーダの各ブロック")
    c.frame(5.0, 0.95, 2.8, 2.8, "text encoder, each block\nテキストエンコーダの各ブロック")
    left = _stack(c, 0.35, 3.25, 2.5, [("self-attention / セルフアテンション", "frozen"),
                                        ("shared adapter / 共有アダプタ", "trained"), ("MLP", "frozen"),
                                        ("temporal adapter: GRU over frames\n時間方向アダプタ (フレーム方向の GRU)",
                                         "trained")])
    right = _stack(c, 5.15, 3.25, 2.5, [("self-attention / セルフアテンション", "frozen"),
                                         ("shared adapter / 共有アダプタ", "trained"), ("MLP", "frozen"),
                                         ("adapter / アダプタ", "trained")])
    c.arrow(_bottom(frames), _top(left[0]))
    c.arrow(_bottom(texts), _top(right[0]))
    c.arrow(_left(maple), (3.0, 3.0))
    c.arrow(_right(maple), (5.0, 3.0))
    vid = c.box(0.3, 0.2, 2.6, 0.55, "mean over frames → video embedding\nフレーム平均 → 動画の埋め込み", "computed",
                size=7.5)
    cls = c.box(5.1, 0.2, 2.6, 0.55, "class embeddings\nクラスの埋め込み", "data", size=7.5)
    sim = c.box(3.2, 0.2, 1.6, 0.55, "similarity → expression\n類似度 → 表情", "computed", size=7.5)
    c.arrow((1.6, 0.95), _top(vid))
    c.arrow((6.4, 0.95), _top(cls))
    c.arrow(_right(vid), _left(sim))
    c.arrow(_left(cls), _right(sim))
    return c.fig


def vlpet() -> Figure:
    c = _Canvas(8, 5.0, kinds=("frozen", "trained", "data"))
    img = c.box(0.15, 3.75, 1.9, 0.55, "image / 画像", "data")
    venc = c.box(0.15, 2.85, 1.9, 0.6, "CLIP image encoder\nCLIP 画像エンコーダ")
    proj = c.box(0.15, 1.95, 1.9, 0.6, "visual projector\n視覚特徴の射影", "trained")
    task = c.box(0.15, 0.8, 1.9, 0.75, "task prompt + question\nタスクの指示と質問", "data")
    c.arrow(_bottom(img), _top(venc))
    c.arrow(_bottom(venc), _top(proj))
    c.frame(2.35, 0.6, 2.75, 3.75, "encoder (BART / T5), each layer\nエンコーダの各層")
    enc = _stack(c, 2.5, 3.8, 2.45, [("self-attention / セルフアテンション", "frozen"),
                                      ("VL-PET module: adapter × gate G\nVL-PET モジュール: アダプタ × ゲート G",
                                       "trained"),
                                      ("FFN", "frozen"),
                                      ("VL-PET module / VL-PET モジュール", "trained"),
                                      ("LayerNorms / LayerNorm", "trained")], gap=0.14, h=0.48)
    c.arrow(_right(proj), _left(enc[0]))
    c.arrow(_right(task), _left(enc[0]))
    c.frame(5.35, 1.3, 2.5, 3.05, "decoder, each layer\nデコーダの各層")
    dec = _stack(c, 5.5, 3.8, 2.2, [("self-attention / セルフアテンション", "frozen"),
                                     ("cross-attention / クロスアテンション", "frozen"),
                                     ("parallel adapter on its values\nV への並列アダプタ", "trained"),
                                     ("FFN", "frozen")], gap=0.14, h=0.48)
    c.arrow(_right(enc[-1]), _left(dec[1]), connectionstyle="arc3,rad=0.25")
    out = c.box(5.5, 0.45, 2.2, 0.55, "answer or caption, word by word\n答えやキャプションを1語ずつ", "data", size=7.5)
    c.arrow((6.6, 1.3), _top(out))
    c.text(3.72, 0.3, "G per token × dimension (large), per token or dimension (middle), per sample (small)\n"
                      "G の粒度: トークン × 次元 (large)、トークンごとか次元ごと (middle)、サンプルごと (small)",
           size=7, color="#444444")
    return c.fig


def contrastive_da() -> Figure:
    c = _Canvas(8, 3.5)
    row1 = [c.box(0.15, 2.1, 1.5, 0.7, "image + text\n画像とテキスト", "data"),
            c.box(2.0, 2.1, 1.7, 0.7, "CLIP encoders\nCLIP エンコーダ"),
            c.box(4.05, 2.1, 2.0, 0.7, "embeddings, computed once\n埋め込み (1回だけ計算)", "data"),
            c.box(6.4, 2.1, 1.45, 0.7, "standardise\n標準化", "computed")]
    row2 = [c.box(0.15, 0.65, 2.3, 0.8, "head: Linear → ReLU → Linear\nヘッド (16 → 128 次元)", "trained"),
            c.box(2.8, 0.65, 1.6, 0.8, "projection\n射影", "data"),
            c.box(4.75, 0.65, 2.05, 0.8, "classifier (scikit-learn)\n分類器", "trained"),
            c.box(7.05, 0.65, 0.8, 0.8, "label\nラベル", "data")]
    for a, b in zip(row1, row1[1:]):
        c.arrow(_right(a), _left(b))
    for a, b in zip(row2, row2[1:]):
        c.arrow(_right(a), _left(b))
    c.arrow(_bottom(row1[-1]), _top(row2[0]), connectionstyle="arc3,rad=-0.05")
    c.text(1.3, 0.3, "trained with a pair loss: two samples with the same label are a positive pair\n"
                     "ペア損失で学習: 同じラベルの2サンプルを正例とする", size=7, color="#444444", ha="left")
    return c.fig


def _tower(c, x, y, w, h, label, n_norms=3):
    """A frozen encoder whose LayerNorms (orange bars) train."""
    c.frame(x, y, w, h, label)
    for k in range(n_norms):
        c.box(x + 0.15, y + 0.55 + k * 0.2, w - 0.3, 0.11, kind="trained", z=3)
    c.text(x + w / 2, y + 0.27, "trained: LayerNorm scale, shift\n学習: LayerNorm の倍率とシフト", size=7, zorder=5)


def batclip() -> Figure:
    c = _Canvas(8, 4.4)
    batch = c.box(0.15, 2.55, 1.55, 0.9, "unlabelled\ntest batch\nラベルなしの\nテストバッチ", "data", size=7.5)
    prompts = c.box(0.15, 0.35, 1.55, 0.9, "“a photo of\na {class}.”\nクラスの文", "data", size=7.5)
    _tower(c, 2.05, 2.25, 2.0, 1.55, "image encoder / 画像エンコーダ")
    _tower(c, 2.05, 0.2, 2.0, 1.55, "text encoder / テキストエンコーダ")
    c.arrow(_right(batch), (2.05, 3.0))
    c.arrow(_right(prompts), (2.05, 0.8))
    loss = c.box(4.6, 1.35, 1.75, 1.0, "entropy − L_pm − L_sp\nエントロピー − L_pm − L_sp", "computed", size=7.5)
    pred = c.box(6.6, 2.55, 1.25, 0.9, "prediction,\nbefore the step\n更新前の予測", "computed", size=7.5)
    c.arrow((4.05, 3.0), _left(pred))
    c.arrow((4.05, 2.9), _top(loss))
    c.arrow((4.05, 0.95), _bottom(loss))
    c.text(5.48, 0.85, "one step per batch on the LayerNorms\nバッチごとに LayerNorm を1回更新", size=7,
           color="#444444")
    return c.fig


def _matrix(c, x, y, size, kind, rng, label):
    """A weight matrix as an 8 x 8 grid: frozen cells, a few sparse trained ones, or a LoRA pair beside it."""
    n, s = 8, size / 8
    hot = rng.random((n, n)) < 0.08 if kind == "sparse" else np.zeros((n, n), bool)
    for i in range(n):
        for j in range(n):
            face, edge, _ = STYLE["trained" if hot[i, j] else "frozen"]
            c.ax.add_patch(Rectangle((x + j * s, y + i * s), s, s, fc=face, ec="white", lw=0.5))
    if kind == "lora":   # W + B A: a tall B (out x r) and a wide A (r x in)
        c.text(x + size + 0.12, y + size / 2, "+", size=10)
        c.box(x + size + 0.25, y, 0.12, size, kind="trained")
        c.box(x + size + 0.45, y + size / 2 - 0.06, size * 0.8, 0.12, kind="trained")
    c.text(x + size / 2, y - 0.18, label, size=7)


def spt() -> Figure:
    c = _Canvas(8, 4.2, kinds=("frozen", "trained", "computed"))
    rng = np.random.default_rng(0)
    steps = [c.box(0.15, 2.55, 2.4, 0.85, "1. sensitivity: squared\ngradients on a few batches\n"
                                          "1. 感度: 数バッチでの勾配の2乗", "computed", size=7.5),
             c.box(0.15, 1.3, 2.4, 0.85, "2. one ranking, top entries\nup to the budget\n"
                                         "2. 全体で順位付けし予算まで選ぶ", "computed", size=7.5),
             c.box(0.15, 0.15, 2.4, 0.8, "3. train those entries\nand the head\n3. 選んだ要素とヘッドを学習",
                   "trained", size=7.5)]
    for a, b in zip(steps, steps[1:]):
        c.arrow(_bottom(a), _top(b))
    c.frame(2.9, 0.15, 4.95, 3.35, "ViT block: the weight matrices\nViT ブロックの重み行列")
    for k, (kind, label) in enumerate([("lora", "qkv"), ("sparse", "proj"), ("sparse", "fc1"), ("lora", "fc2")]):
        _matrix(c, 3.15 + (k % 2) * 2.4, 2.05 - (k // 2) * 1.2, 0.8, kind, rng, label)
    c.text(5.4, 0.3, "many sensitive entries → LoRA or adapter; few → only those entries (sparse)\n"
                     "感度の高い要素が多い行列 → LoRA かアダプタ、少ない行列 → その要素だけ (疎な更新)",
           size=7, color="#444444")
    c.arrow(_right(steps[1]), (2.9, 1.72))
    return c.fig


DIAGRAMS = {  # name: (drawing, caption English, caption Japanese)
    "clip": (clip, "What CLIP is: two encoders map an image and class sentences into one space; the nearest "
                   "sentence names the class (zero-shot).",
             "CLIP の仕組み。2つのエンコーダが画像とクラス名の文を同じ空間に写し、"
             "最も近い文のクラスを答えます(ゼロショット)。"),
    "peclip": (peclip, "PE-CLIP: adapters in every block of both encoders, a GRU along the frames, MaPLe prompts; "
                       "CLIP's own weights stay frozen.",
               "PE-CLIP。両エンコーダの各ブロックにアダプタ、フレーム方向の GRU、MaPLe プロンプトを加え、"
               "CLIP 自体の重みは凍結します。"),
    "vlpet": (vlpet, "VL-PET: gated modules in the encoder, a parallel adapter in the decoder's cross-attention; "
                     "the gate's shape sets the granularity.",
              "VL-PET。エンコーダにゲート付きモジュール、デコーダのクロスアテンションに並列アダプタを加えます。ゲートの形が粒度を決めます。"),
    "contrastive_da": (contrastive_da, "Contrastive domain adaptation: a small head on frozen embeddings, then an "
                                       "ordinary classifier.",
                       "対照学習によるドメイン適応。凍結した埋め込みに小さなヘッドを学習させ、通常の分類器につなぎます。"),
    "batclip": (batclip, "BATCLIP: on each unlabelled batch, one step on the LayerNorms of both encoders; the "
                         "prediction is made before the step.",
                "BATCLIP。ラベルのない各バッチで両エンコーダの LayerNorm を1回更新します。予測は更新の前に行います。"),
    "spt": (spt, "SPT: rank every weight by sensitivity, then train the top entries sparsely, or with LoRA where a "
                 "matrix holds many.",
            "SPT。すべての重みを感度で順位付けし、上位の要素を疎に学習させます。上位が多い行列には LoRA を使います。"),
}


def draw(name: str) -> Figure:
    if name not in DIAGRAMS:
        raise KeyError(f"no diagram {name!r}; the diagrams are {', '.join(DIAGRAMS)}")
    return DIAGRAMS[name][0]()


def png(name: str) -> bytes:
    """The diagram as PNG bytes (no time stamp, so the same drawing gives the same bytes)."""
    buf = io.BytesIO()
    draw(name).savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()
