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
