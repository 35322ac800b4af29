"""A trained captioner together with the CLIP it reads: the views of one shape in, captions out.

    captioner = ShapeCaptioner("weights/<run>/best.pt", device="cpu")   # a train_captioner.py checkpoint
    captioner.captions(views)                          # views: PIL images of one shape's renders -> [caption]
    captioner.captions(views, n=5, decode="nucleus")   # decoding overrides as make_captioner takes them

Each view goes through the captioner's CLIP (the train.py checkpoint it was trained on, or clip_checkpoint), the
unit view embeddings are averaged into the shape embedding (evaluation's pooling) and the decoder writes. caption.py
and the web page (webapp/) both caption this way.
"""
from pathlib import Path

import torch
import torch.nn.functional as F

from models.caption_decoder import load_captioner, make_captioner, resolve_clip_checkpoint


class ShapeCaptioner:
    """path: a train_captioner.py checkpoint; clip_checkpoint: its CLIP when that file moved. Loading errors are
    FileNotFoundError / ValueError naming the file."""

    def __init__(self, path, device="cpu", clip_checkpoint=None):
        from models.clip_wrapper import load_for_eval

        self.decoder, self.checkpoint = load_captioner(path, device)
        clip_path = resolve_clip_checkpoint(self.checkpoint, clip_checkpoint)
        self.wrapper, self.preprocess, clip_label, _ = load_for_eval(clip_path, device=device)
        self.device = device
        self.label = f"{Path(path).parent.name}/{Path(path).name} on {clip_label}"

    @torch.no_grad()
    def view_embeddings(self, images):
        """(V, D) unit CLIP embeddings of PIL images."""
        x = torch.stack([self.preprocess(im.convert("RGB")) for im in images]).to(self.device)
        return F.normalize(self.wrapper.encode_image(x).float(), dim=-1)

    def captions(self, images, n=1, **overrides):
        """n captions of the shape whose views are `images` (several differ only with a sampling decode)."""
        if not images:
            raise ValueError("no views to caption")
        views = self.view_embeddings(images)
        shape = F.normalize(views.mean(0), dim=-1)[None]
        captioner = make_captioner(self.decoder, self.checkpoint, self.device, views_of={0: views}, **overrides)
        return [captioner(shape, [0])[0] for _ in range(n)]
