"""Learnable text-prompt context for open_clip models (CoOp style, as TPT and MaPLe use it).

The context vectors replace the token embeddings of a template's words before the class name, e.g. the four tokens
of "a photo of a" in "a photo of a {}.". They are spliced in by a forward hook on open_clip's own token embedding,
so the rest of `model.encode_text` (positions, transformer, pooling at the end token, projection) is open_clip's.
Initialised from the template's own word embeddings, the prompted text features equal the plain ones exactly.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn


def token_embedding(model: nn.Module) -> nn.Embedding:
    """open_clip's token embedding: `model.token_embedding` (CLIP) or `model.text.token_embedding` (CustomTextCLIP)."""
    emb = getattr(model, "token_embedding", None) or getattr(getattr(model, "text", None), "token_embedding", None)
    if not isinstance(emb, nn.Embedding):
        raise TypeError(f"{type(model).__name__} has no open_clip token embedding (model.token_embedding or "
                        "model.text.token_embedding); prompt context needs an open_clip transformer text tower")
    return emb


class PromptContext(nn.Module):
    """`n_ctx` learnable vectors in place of the words of `template` before "{}"."""

    def __init__(self, model: nn.Module, tokenizer, template: str = "a photo of a {}."):
        super().__init__()
        if "{}" not in template:
            raise ValueError(f"template {template!r} has no '{{}}' for the class name")
        prefix = template.split("{}")[0].strip()
        if not prefix:
            raise ValueError(f"template {template!r} has no words before the class name to learn as context")
        tokens = tokenizer([prefix])
        self.n_ctx = int((tokens[0] != 0).sum()) - 2  # minus start and end tokens
        with torch.no_grad():
            init = token_embedding(model)(tokens.to(token_embedding(model).weight.device))[0, 1:1 + self.n_ctx]
        self.ctx = nn.Parameter(init.detach().clone().float())
        self.template = template

    @contextmanager
    def applied(self, model: nn.Module):
        """Within the block, `model.encode_text` of tokens of `self.template` uses the learnable context."""
        n = self.n_ctx

        def hook(_module, _inputs, out):
            ctx = self.ctx.to(out.dtype).unsqueeze(0).expand(out.shape[0], -1, -1)
            return torch.cat([out[:, :1], ctx, out[:, 1 + n:]], dim=1)

        handle = token_embedding(model).register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()


class MultiModalPrompts(nn.Module):
    """MaPLe's multimodal prompts (Khattak et al., CVPR 2023), as PE-CLIP uses them: `n_ctx` learnable text context
    vectors (N(0, 0.02)) in place of the placeholder words after the start token ("X X <class text>"), projected by a
    Linear(text width -> image width) into as many image prompt tokens appended to the image sequence; and, for the
    blocks 1 .. depth-1 of both towers, fresh text prompts with their own projections that replace those tokens
    before the block ("deep" prompts). All spliced in by hooks, so the towers stay open_clip's.
    """

    def __init__(self, model: nn.Module, n_ctx: int = 2, depth: int = 9):
        super().__init__()
        text_w = token_embedding(model).embedding_dim
        vis_w = model.visual.transformer.width
        n_blocks = min(len(model.transformer.resblocks), len(model.visual.transformer.resblocks))
        if not 1 <= depth <= n_blocks:
            raise ValueError(f"prompt depth {depth} must be between 1 and the number of blocks ({n_blocks})")
        self.n_ctx, self.depth = n_ctx, depth
        self.ctx = nn.Parameter(torch.randn(n_ctx, text_w) * 0.02)
        self.proj = nn.Linear(text_w, vis_w)
        self.deep_text = nn.ParameterList([nn.Parameter(torch.randn(n_ctx, text_w) * 0.02) for _ in range(depth - 1)])
        self.deep_proj = nn.ModuleList([nn.Linear(text_w, vis_w) for _ in range(depth - 1)])

    @property
    def placeholder(self) -> str:
        """The words the text must start with, whose token embeddings the context replaces."""
        return " ".join(["X"] * self.n_ctx)

    @contextmanager
    def applied(self, model: nn.Module):
        """Within the block, `encode_text` of "<placeholder> <text>" and `encode_image` use the prompts."""
        n, handles = self.n_ctx, []

        def put_text(x, p):   # positions 1 .. n: right after the start token
            return torch.cat([x[:, :1], p.to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1), x[:, 1 + n:]], dim=1)

        def put_image(x, p, append):
            p = p.to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)
            return torch.cat([x, p] if append else [x[:, :-n], p], dim=1)

        handles.append(token_embedding(model).register_forward_hook(lambda _m, _i, out: put_text(out, self.ctx)))
        handles.append(model.visual.transformer.register_forward_pre_hook(
            lambda _m, args, kwargs: ((put_image(args[0], self.proj(self.ctx), True),) + args[1:], kwargs),
            with_kwargs=True))
        for i in range(1, self.depth):
            t, proj = self.deep_text[i - 1], self.deep_proj[i - 1]
            handles.append(model.transformer.resblocks[i].register_forward_pre_hook(
                lambda _m, args, kwargs, t=t: ((put_text(args[0], t),) + args[1:], kwargs), with_kwargs=True))
            handles.append(model.visual.transformer.resblocks[i].register_forward_pre_hook(
                lambda _m, args, kwargs, t=t, proj=proj: ((put_image(args[0], proj(t), False),) + args[1:], kwargs),
                with_kwargs=True))
        try:
            yield
        finally:
            for h in handles:
                h.remove()
