"""The encoder-decoder vision-language model of the VL-PET chapter (VL-T5 / VL-BART style) and its tiny ci version.

`VLModel` = a visual projector (Linear + LayerNorm on each visual feature, plus an image-order embedding, as VL-T5's
`VisualEmbedding` without boxes) + a transformers encoder-decoder (BART or T5). The task prompt and question are
embedded by the language model's own word embeddings and put before the visual tokens; every task is text generation.

- `paper`: `facebook/bart-base` or `t5-base` from the hub with their tokenizers, on pre-extracted CLIP features.
- `ci`: a tiny BART (the transformers class, a small config) with a word-level tokenizer over the micro-world
  vocabulary (the `tokenizers` library), pretrained here in a few minutes on three objectives at once: BART's own
  text denoising on `vltasks.language_corpus` (how it learns the words), captioning of pretraining scenes from the
  tiny CLIP's patch tokens (how it learns to look) and VL-T5's image-text matching (does this caption belong to this
  image: true / false; how it learns to check a sentence against an image). Cached under the cache folder, keyed by
  config and recipe, with a sha256 over its files (`files.sha256`, written last) checked on every load; fetched from
  this version's release (`models.release`) before it is built.
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data import shapes, vltasks
from ..data.microworld import DATA_VERSION, HELDOUT_SEED
from ..data.vltasks import PROMPTS, VL_DATA_VERSION
from ..engine import TrainSpec, train
from ..transforms import preprocess_batch
from ..utils import atomic_write, cache_dir, seed_everything
from .loader import load_clip
from .pretrain import check_digest, digest_path, ensure_tiny_clip, folder_digest, tiny_checkpoint_path
from .release import Asset, fetch
from .tiny import TINY_NAME, TINY_TAG

# the real architectures the chapter counts parameters on (hub config values, built without weights)
PAPER_LMS = {"bart-base": "facebook/bart-base", "t5-base": "google-t5/t5-base"}
SPECIALS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")  # BART's ids 0-4
LM_DIGEST = "files.sha256"    # in the tiny VL-BART's folder: the sha256 over its other files
LM_REBUILD = "python data_scripts/build_ci_assets.py --force tiny-vl-bart   # about 13 minutes on 2 cores"


@dataclass(frozen=True)
class TinyLMConfig:
    """The ci encoder-decoder: transformers' BART with a small config."""
    d_model: int = 96
    layers: int = 2              # encoder layers; the decoder has as many
    heads: int = 4
    ffn: int = 384
    max_positions: int = 64
    dropout: float = 0.1


@dataclass(frozen=True)
class LMPretrainConfig:
    seed: int = 0
    n_scenes: int = 12_000       # captioned pretraining scenes (seeds below the held-out range)
    n_text_scenes: int = 3_000   # scenes whose sentences make the denoising corpus
    steps: int = 1_500
    batch_size: int = 64
    lr: float = 1e-3
    mask_prob: float = 0.3       # share of words replaced by <mask> in the denoising objective
    warmup: int = 100


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+|[^\sa-z0-9]", text.lower())


def build_word_tokenizer(sentences: list[str]):
    """A word-level fast tokenizer (`tokenizers` WordLevel in transformers' `PreTrainedTokenizerFast`) whose
    vocabulary is every word of `sentences` and of the task prompts; encodes 'words </s>' like BART's targets."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast
    vocab = {t: i for i, t in enumerate(SPECIALS)}
    for s in list(PROMPTS.values()) + list(sentences):
        for w in _words(s):
            vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # joins words with spaces, "red ." -> "red."
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>", mask_token="<mask>")


def tiny_lm(cfg: TinyLMConfig, vocab_size: int):
    from transformers import BartConfig, BartForConditionalGeneration
    conf = BartConfig(vocab_size=vocab_size, d_model=cfg.d_model, encoder_layers=cfg.layers, decoder_layers=cfg.layers,
                      encoder_attention_heads=cfg.heads, decoder_attention_heads=cfg.heads,
                      encoder_ffn_dim=cfg.ffn, decoder_ffn_dim=cfg.ffn, max_position_embeddings=cfg.max_positions,
                      dropout=cfg.dropout, attention_dropout=0.0, activation_dropout=0.0, pad_token_id=1,
                      bos_token_id=0, eos_token_id=2, decoder_start_token_id=2, forced_eos_token_id=None,
                      scale_embedding=False)
    return BartForConditionalGeneration(conf)


def paper_lm_config(name: str):
    """The transformers config of BART-base or T5-base (hub values written out, so counting needs no download)."""
    from transformers import BartConfig, T5Config
    if name == "bart-base":
        return BartConfig(vocab_size=50265, d_model=768, encoder_layers=6, decoder_layers=6,
                          encoder_attention_heads=12, decoder_attention_heads=12, encoder_ffn_dim=3072,
                          decoder_ffn_dim=3072, max_position_embeddings=1024, scale_embedding=False)
    if name == "t5-base":
        return T5Config(vocab_size=32128, d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_decoder_layers=12,
                        num_heads=12, feed_forward_proj="relu", tie_word_embeddings=True)
    raise ValueError(f"unknown language model {name!r}; known: {', '.join(PAPER_LMS)}")


def load_pretrained_vl(lm: str, feat_dim: int = 2048) -> "VLModel":
    """The `paper` model: BART-base or T5-base with its tokenizer from the hub (`lm` = "bart-base" / "t5-base", or a
    local folder written by `save_pretrained`, e.g. a copy made on a machine with internet) and a new visual
    projector for `feat_dim`-dimensional features (2048: CLIP RN101 grid features)."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer
    if lm not in PAPER_LMS and not Path(lm).expanduser().is_dir():
        raise ValueError(f"unknown language model {lm!r}: use {', '.join(PAPER_LMS)} or a local folder "
                         "written by save_pretrained (model and tokenizer)")
    source = PAPER_LMS.get(lm, str(Path(lm).expanduser()))
    model = AutoModelForSeq2SeqLM.from_pretrained(source)
    tokenizer = AutoTokenizer.from_pretrained(source)
    return VLModel(model, tokenizer, feat_dim)


class VisualProjector(nn.Module):
    """Visual features -> d_model tokens: Linear + LayerNorm, plus which image of a pair (NLVR) a token is from."""

    def __init__(self, feat_dim: int, d_model: int, n_images: int = 2):
        super().__init__()
        self.feat = nn.Sequential(nn.Linear(feat_dim, d_model), nn.LayerNorm(d_model))
        self.order = nn.Embedding(n_images, d_model)

    def forward(self, feats: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
        return self.feat(feats) + self.order(order)


class VLModel(nn.Module):
    """Task text and visual tokens in, text out. `prompt_mlp` (prompt tuning) makes a trainable prefix; None
    otherwise."""

    def __init__(self, lm, tokenizer, feat_dim: int, n_images: int = 2):
        super().__init__()
        self.lm = lm
        self.tokenizer = tokenizer
        self.visual = VisualProjector(feat_dim, lm.config.d_model, n_images)
        self.prompt_mlp: nn.Module | None = None

    def encoder_inputs(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        text = self.lm.get_encoder().embed_tokens(batch["input_ids"])
        vis = self.visual(batch["feats"], batch["order"])
        parts, masks = [text, vis], [batch["attention_mask"], batch["vis_mask"]]
        if self.prompt_mlp is not None:
            b, prompt = text.shape[0], self.prompt_mlp()
            parts.insert(0, prompt.unsqueeze(0).expand(b, -1, -1))
            masks.insert(0, torch.ones(b, prompt.shape[0], dtype=masks[0].dtype, device=text.device))
        embeds = torch.cat(parts, 1)
        limit = getattr(self.lm.config, "max_position_embeddings", None)  # BART's learned positions; T5 has none
        if limit is not None and embeds.shape[1] > limit:
            raise ValueError(f"the encoder input has {embeds.shape[1]} tokens (prompt vectors + text + visual tokens) "
                             f"but the model has {limit} positions: use fewer prompt vectors (BaselineConfig."
                             "prompt_len), shorter texts or fewer visual tokens")
        return embeds, torch.cat(masks, 1)

    def forward(self, batch: dict) -> torch.Tensor:
        """The token cross-entropy of the targets."""
        embeds, mask = self.encoder_inputs(batch)
        return self.lm(inputs_embeds=embeds, attention_mask=mask, labels=batch["labels"]).loss

    @torch.no_grad()
    def choose(self, batch: dict, options: list[str]) -> list[int]:
        """For each example, the option the model finds most likely as the whole target (NLVR: true / false)."""
        embeds, mask = self.encoder_inputs(batch)
        enc = self.lm.get_encoder()(inputs_embeds=embeds, attention_mask=mask)
        scores = []
        for opt in options:
            lab = self.tokenizer([opt] * embeds.shape[0], return_tensors="pt")["input_ids"].to(embeds.device)
            logits = self.lm(encoder_outputs=enc, attention_mask=mask, labels=lab).logits
            scores.append(-torch.nn.functional.cross_entropy(logits.transpose(1, 2), lab, reduction="none").sum(1))
        return torch.stack(scores, 1).argmax(1).tolist()

    @torch.no_grad()
    def generate(self, batch: dict, num_beams: int = 5, max_new_tokens: int = 20) -> list[str]:
        embeds, mask = self.encoder_inputs(batch)
        out = self.lm.generate(inputs_embeds=embeds, attention_mask=mask, num_beams=num_beams,
                               max_new_tokens=max_new_tokens, early_stopping=True)
        return [t.strip() for t in self.tokenizer.batch_decode(out, skip_special_tokens=True)]


def collate(examples, feats, tokenizer, with_targets: bool = True) -> dict:
    """A batch from `vltasks.VLExample`s: '<task prompt> <text>' tokens, the images' features (`feats[i]` is
    tokens x dim: a tensor, or the lazy `vladapter.H5Features`) with their image-order ids and a mask, and the target
    token ids (-100 on padding)."""
    texts = [f"{PROMPTS[e.task]} {e.text}".strip() for e in examples]
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    n_tok = feats.shape[1]
    n_vis = max(len(e.images) for e in examples) * n_tok
    f = torch.zeros(len(examples), n_vis, feats.shape[2])
    order = torch.zeros(len(examples), n_vis, dtype=torch.long)
    vmask = torch.zeros(len(examples), n_vis, dtype=enc["attention_mask"].dtype)
    for b, e in enumerate(examples):
        for k, i in enumerate(e.images):
            f[b, k * n_tok:(k + 1) * n_tok] = feats[i]
            order[b, k * n_tok:(k + 1) * n_tok] = k
            vmask[b, k * n_tok:(k + 1) * n_tok] = 1
    batch = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "feats": f, "order": order,
             "vis_mask": vmask}
    if with_targets:
        lab = tokenizer([e.target for e in examples], padding=True, return_tensors="pt")["input_ids"]
        lab[lab == tokenizer.pad_token_id] = -100
        batch["labels"] = lab
    return batch


def to_device(batch: dict, device) -> dict:
    """A collated batch with its tensors on `device`."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


@torch.no_grad()
def clip_grid_features(clip_model, preprocess, images: np.ndarray, batch_size: int = 256) -> torch.Tensor:
    """The frozen CLIP image tower's patch tokens (n x grid x width): the ci analogue of the paper's CLIP grid
    features, extracted once and never trained."""
    visual = clip_model.visual
    old = visual.output_tokens
    visual.output_tokens = True
    try:
        out = []
        for i in range(0, len(images), batch_size):
            _, tokens = visual(preprocess_batch(preprocess, images[i:i + batch_size]))
            out.append(tokens)
    finally:
        visual.output_tokens = old
    return torch.cat(out)


def _mask_words(ids: torch.Tensor, mask_id: int, p: float, gen: torch.Generator) -> torch.Tensor:
    """BART's token masking: each word (not </s> or padding) is replaced by <mask> with probability p."""
    out = ids.clone()
    hit = (torch.rand(ids.shape, generator=gen) < p) & (ids > 4)
    out[hit] = mask_id
    return out


def tiny_lm_dir(cfg: TinyLMConfig = TinyLMConfig(), pcfg: LMPretrainConfig = LMPretrainConfig()) -> Path:
    key = json.dumps([asdict(cfg), asdict(pcfg), DATA_VERSION, VL_DATA_VERSION, tiny_checkpoint_path().name],
                     sort_keys=True)
    return cache_dir() / "tiny-vl-bart" / hashlib.sha256(key.encode()).hexdigest()[:12]


def pretrain_tiny_lm(cfg: TinyLMConfig = TinyLMConfig(), pcfg: LMPretrainConfig = LMPretrainConfig(),
                     out_dir: str | Path | None = None, show_progress: bool = True) -> dict:
    """Pretrain the tiny BART (denoising + captioning from tiny-CLIP patch tokens); save it when `out_dir` given."""
    seed_everything(pcfg.seed)
    corpus = vltasks.language_corpus(pcfg.n_text_scenes, pcfg.seed + 101)
    images, scenes = shapes.make_shapes(pcfg.n_scenes, pcfg.seed + 202)
    if pcfg.seed + 202 >= HELDOUT_SEED:
        raise ValueError(f"LMPretrainConfig.seed must be below {HELDOUT_SEED - 202}: the pretraining scenes must not "
                         f"share seeds with the held-out sets, got {pcfg.seed}")
    caps = [s.caption for s in scenes] + [c for s in scenes for c in vltasks.captions_of(s)[:1]]
    tokenizer = build_word_tokenizer(corpus + caps)
    lm = tiny_lm(cfg, len(tokenizer))
    clip = load_clip(TINY_NAME, TINY_TAG)
    feats = clip_grid_features(clip.model, clip.preprocess, images)
    model = VLModel(lm, tokenizer, feats.shape[-1])
    spec = TrainSpec(steps=pcfg.steps, lr=pcfg.lr, weight_decay=0.01, no_decay="none", eps=1e-6, clip_grad=5.0,
                     seed=pcfg.seed)
    text_ids = tokenizer(corpus, padding=True, return_tensors="pt")["input_ids"]
    hist = {"step": [], "denoise": [], "caption": [], "match": []}

    def draw(gen):   # one step's examples: a masked sentence, captioned images, matched and mismatched pairs
        rows = torch.randint(len(corpus), (pcfg.batch_size,), generator=gen)
        tgt = text_ids[rows]
        tgt = tgt[:, : int((tgt != tokenizer.pad_token_id).sum(1).max())]
        inp = _mask_words(tgt, tokenizer.mask_token_id, pcfg.mask_prob, gen)
        idx = torch.randint(len(scenes), (pcfg.batch_size,), generator=gen).tolist()
        cap = [vltasks.VLExample("caption", (i,), "", caps[i if k % 2 else len(scenes) + i], ())
               for k, i in enumerate(idx)]
        idx = torch.randint(len(scenes), (pcfg.batch_size,), generator=gen).tolist()
        other = torch.randint(len(scenes), (pcfg.batch_size,), generator=gen).tolist()
        match = [vltasks.VLExample("match", (i,), caps[i if k % 2 else o], "true" if k % 2 or caps[o] == caps[i]
                                   else "false", ()) for k, (i, o) in enumerate(zip(idx, other))]
        return inp, tgt, cap, match

    class Steps:   # drawn one step at a time, so the draws interleave with dropout as in a plain loop
        def __init__(self, gen):
            self.gen = gen

        def __len__(self):
            return pcfg.steps

        def __iter__(self):
            return (draw(self.gen) for _ in range(pcfg.steps))

    def loss(m, batch):
        inp, tgt, cap, match = batch
        lab = tgt.clone()
        lab[lab == tokenizer.pad_token_id] = -100
        parts = {"denoise": lm(input_ids=inp, attention_mask=(inp != tokenizer.pad_token_id).long(), labels=lab).loss,
                 "caption": m(collate(cap, feats, tokenizer)), "match": m(collate(match, feats, tokenizer))}
        return parts["denoise"] + parts["caption"] + parts["match"], parts

    def record(step) -> None:
        if (step.step - 1) % 25 == 0 or step.step == pcfg.steps:
            hist["step"].append(step.step - 1)
            for k, v in step.parts.items():
                hist[k].append(float(v.detach()))

    t0 = time.time()
    # the recipe seeded before drawing the initial weights; dropout goes on from there (reseed=False)
    train(model, spec, lambda gen, shard: Steps(gen), loss, reseed=False, on_step=record, show_progress=show_progress,
          lr_at=lambda s: pcfg.lr * (min(1.0, (s + 1) / pcfg.warmup) * max(0.0, 1 - s / pcfg.steps)),
          desc="pretrain tiny VL-BART")
    hist["train_seconds"] = round(time.time() - t0, 1)
    model.eval()
    if out_dir is not None:
        def write(tmp: Path) -> None:
            lm.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            torch.save(model.visual.state_dict(), tmp / "visual.pt")
            (tmp / "history.json").write_text(json.dumps(hist))
        save_tiny_lm(out_dir, write)
    hist["model"] = model
    return hist


def save_tiny_lm(out_dir: str | Path, write) -> Path:
    """`write(folder)` fills a scratch folder beside `out_dir`; its sha256 is recorded last and it is renamed onto
    `out_dir`, so a reader sees a whole, checkable build or none."""
    out = Path(out_dir)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)   # what an interrupted build left
    tmp.mkdir(parents=True)
    write(tmp)
    digest = folder_digest(tmp, exclude=(LM_DIGEST,))
    atomic_write(tmp / LM_DIGEST, lambda p: p.write_text(digest))
    tmp.rename(out)
    return out


def check_tiny_lm(path: str | Path) -> str:
    """The sha256 over the tiny VL-BART's files, checked against the one recorded when it was built (a damaged or
    replaced file is an error naming the folder and the rebuild command); a folder built before digests were
    recorded gets its digest now."""
    path = Path(path)
    if not (path / "visual.pt").exists():
        raise FileNotFoundError(f"the tiny VL-BART is not built yet at {path}. Build it with:\n"
                                "    python data_scripts/build_ci_assets.py\n(or call "
                                "clipadapt.models.seq2seq.ensure_tiny_lm() in a notebook).")
    return check_digest(folder_digest(path, exclude=(LM_DIGEST,)), path / LM_DIGEST, f"the tiny VL-BART in {path}",
                        LM_REBUILD)


def lm_asset() -> Asset:
    """The tiny VL-BART as a release asset: its folder, and the sha256 of the tiny CLIP it was trained on (fetched
    only onto that same tiny CLIP)."""
    root = cache_dir()
    rel = tiny_lm_dir().relative_to(root).as_posix()
    clip = digest_path(tiny_checkpoint_path()).relative_to(root).as_posix()
    return Asset("tiny-vl-bart.tar", "the tiny VL-BART", (rel,), lambda r: check_tiny_lm(r / rel), requires=(clip,))


def ensure_tiny_lm(show_progress: bool = True) -> Path:
    """The cached tiny VL-BART folder, checked; when missing, fetched from this version's release or, where that
    fails (one line says why), pretrained here (after the tiny CLIP, which it needs)."""
    ensure_tiny_clip(show_progress)
    path = tiny_lm_dir()
    if not (path / "visual.pt").exists() and not fetch(lm_asset()):
        pretrain_tiny_lm(out_dir=path, show_progress=show_progress)
    check_tiny_lm(path)
    return path


def load_tiny_vl(path: str | Path | None = None) -> VLModel:
    """The pretrained tiny VL-BART (a fresh copy each call)."""
    path = Path(path) if path is not None else tiny_lm_dir()
    check_tiny_lm(path)
    state = torch.load(path / "visual.pt", map_location="cpu")
    model = load_pretrained_vl(str(path), state["feat.0.weight"].shape[1])
    model.visual.load_state_dict(state)
    return model.eval()


def load_history(path: str | Path | None = None) -> dict:
    path = Path(path) if path is not None else tiny_lm_dir()
    return json.loads((path / "history.json").read_text())
