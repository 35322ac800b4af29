"""The model an index is built and searched with, and every way of turning something into a shape-space vector.

    identity = model_identity(checkpoint="weights/<run>/best.pt")       # what the manifest records
    encoder = load_encoder(identity, device="cpu")
    encoder.text("a low red sofa")                    # [D] unit float32
    encoder.photo(image, bbox=(10, 20, 200, 220))     # cropped as eval_shape_retrieval.py crops photos
    encoder.mesh("chair.obj", index.render)           # rendered like the indexed shapes, views pooled like them
    encoder.shapes([[view paths of shape 0], ...])    # [n, D] pooled shape embeddings (what the index holds)

Every shape embedding, indexed or queried, is metrics.retrieval.shape_gallery of its view embeddings: the pooling
evaluation ranks shapes with.
"""
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from features import encode_images, encode_texts
from metrics.retrieval import shape_gallery
from multiview_dataset import crop_photo, load_image
from shape_index.store import sha256_file

DEFAULT_PHOTO_MARGIN = 0.1  # eval_shape_retrieval.py's default without a checkpoint


def model_identity(checkpoint=None, clip_model=None, clip_weights=None):
    """The manifest's model keys: checkpoint (path as given) and checkpoint_sha256 (the whole file), or the
    zero-shot clip_model, clip_weights and clip_fingerprint. Reads no weights into memory, downloads nothing."""
    from models.clip_wrapper import TINY, clip_fingerprint, weights_path

    if bool(checkpoint) == bool(clip_model):
        raise ValueError("give a checkpoint (weights/<run>/best.pt), or a clip_model for zero-shot")
    if checkpoint:
        if not Path(checkpoint).is_file():
            raise FileNotFoundError(f"--checkpoint {checkpoint}: not found")
        return {"checkpoint": str(checkpoint), "checkpoint_sha256": sha256_file(checkpoint), "clip_model": None,
                "clip_weights": str(clip_weights) if clip_weights else None, "clip_fingerprint": None}
    if clip_model != TINY:
        try:
            path = weights_path(clip_model, clip_weights)
        except KeyError:
            raise ValueError(f"unknown CLIP model {clip_model!r}") from None
        if not path.is_file():  # this tool never downloads: the file must be on the machine
            raise FileNotFoundError(f"{clip_model}: weights file {path} not found; pass --clip_weights=PATH "
                                    f"(OpenAI's .pt or a state dict), or --clip_model tiny (random init)")
    return {"checkpoint": None, "checkpoint_sha256": None, "clip_model": clip_model,
            "clip_weights": str(clip_weights) if clip_weights else None,
            "clip_fingerprint": clip_fingerprint(clip_model, clip_weights)}


def load_encoder(identity, device="cpu", checkpoint=None, clip_weights=None):
    """The Encoder of a manifest's model keys (model_identity), with the weights checked against them.
    checkpoint / clip_weights: where the files are now, when they moved since the index was built."""
    from models.clip_wrapper import load_for_eval

    checkpoint = checkpoint or identity.get("checkpoint")
    clip_weights = clip_weights or identity.get("clip_weights")
    if identity.get("checkpoint"):
        if not Path(checkpoint).is_file():
            raise FileNotFoundError(f"{checkpoint}: the index's checkpoint is not found; pass --checkpoint PATH "
                                    f"to where it is now")
        got = sha256_file(checkpoint)
        if got != identity["checkpoint_sha256"]:
            raise ValueError(f"{checkpoint} is not the checkpoint the index was built with (sha256 {got[:12]}, "
                             f"the index's {identity['checkpoint_sha256'][:12]}); rebuild the index with it "
                             f"(scripts/index_shapes.py --rebuild) or pass the original with --checkpoint")
        wrapper, preprocess, label, run = load_for_eval(checkpoint, None, clip_weights, device)
        margin = run["config"].get("photo_margin", DEFAULT_PHOTO_MARGIN)
    else:
        current = model_identity(clip_model=identity["clip_model"], clip_weights=clip_weights)
        if current["clip_fingerprint"] != identity["clip_fingerprint"]:
            raise ValueError(f"{current['clip_weights'] or identity['clip_model']}: not the weights the index was "
                             f"built with ({identity['clip_fingerprint']})")
        wrapper, preprocess, label, _ = load_for_eval(None, identity["clip_model"], clip_weights, device)
        margin = DEFAULT_PHOTO_MARGIN
    return Encoder(wrapper, preprocess, label, device, photo_margin=margin)


class _Views(Dataset):
    """Every view of a list of shapes: item = (preprocessed view, shape index), or (zeros, -1 - shape index)
    for a view that cannot be read, so the caller can leave that shape out and say why."""

    def __init__(self, views_per_shape, preprocess, size):
        self.items = [(s, Path(p)) for s, views in enumerate(views_per_shape) for p in views]
        self.preprocess, self.size = preprocess, size

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        s, path = self.items[i]
        try:
            return self.preprocess(load_image(path)), s
        except OSError:
            return torch.zeros(3, self.size, self.size), -1 - s


class Encoder:
    """A CLIP (checkpoint or zero-shot) in eval mode, with its preprocessing, label and photo margin."""

    def __init__(self, wrapper, preprocess, label, device="cpu", photo_margin=DEFAULT_PHOTO_MARGIN):
        self.wrapper, self.preprocess, self.label, self.device = wrapper.eval(), preprocess, label, device
        self.photo_margin = photo_margin
        self.image_size = wrapper.model.visual.input_resolution

    def _images(self, images):
        """[n, D] unit embeddings of PIL images."""
        x = torch.stack([self.preprocess(im.convert("RGB")) for im in images]).to(self.device)
        with torch.no_grad():
            return torch.nn.functional.normalize(self.wrapper.encode_image(x).float().cpu(), dim=-1)

    def pool(self, view_embeddings, shape_of_view, views="mean"):
        """(shape embeddings [n, D] float32 numpy, shape numbers in row order): the views pooled per shape."""
        shapes, order = shape_gallery(view_embeddings, shape_of_view, views)
        return shapes.numpy(), order

    def shapes(self, views_per_shape, views="mean", batch_size=64, num_workers=0):
        """(embeddings [n, D] of the shapes whose views all read, {shape number: problem} for the others)."""
        data = _Views(views_per_shape, self.preprocess, self.image_size)
        feats, codes = encode_images(self.wrapper, data, self.device, batch_size, num_workers)
        bad = sorted({-1 - int(c) for c in codes[codes < 0]})
        ok = codes >= 0
        problems = {s: "a view cannot be read" for s in bad}
        problems.update({s: "no views" for s, v in enumerate(views_per_shape) if not v})
        if not ok.any():
            return np.zeros((0, self.dim), np.float32), problems
        pooled, order = self.pool(feats[ok], codes[ok].tolist(), views)
        keep = [s for s in range(len(views_per_shape)) if s not in problems]
        rows = {s: r for r, s in enumerate(order)}
        return pooled[[rows[s] for s in keep]], problems

    @property
    def dim(self):
        return int(self.wrapper.model.text_projection.shape[1])

    def text(self, text):
        if not text.strip():
            raise ValueError("empty text query")
        feats = encode_texts(self.wrapper, [text], self.device)
        return torch.nn.functional.normalize(feats, dim=-1)[0].numpy()

    def photo(self, image, bbox=None):
        """(embedding [D], the crop the model sees): the bbox [x0, y0, x1, y1] grown by photo_margin (the
        checkpoint's, as eval_shape_retrieval.py) and padded square with white; without a bbox the whole photo,
        padded square so that CLIP's centre crop cuts nothing off."""
        if not hasattr(image, "size"):
            image = load_image(image)
        w, h = image.size
        if bbox is None:
            crop = crop_photo(image, (0, 0, w, h), margin=0.0)
        else:
            x0, y0, x1, y1 = bbox
            if not (x0 < x1 and y0 < y1) or x1 <= 0 or y1 <= 0 or x0 >= w or y0 >= h:
                raise ValueError(f"bbox {tuple(bbox)}: expected x0 < x1, y0 < y1 overlapping the {w}x{h} photo")
            crop = crop_photo(image, bbox, margin=self.photo_margin)
        return self._images([crop])[0].numpy(), crop

    def mesh(self, obj_path, render, views="mean"):
        """(embedding [D], the rendered views): the mesh rendered with an index's render settings and its views
        pooled as the index pools them. ValueError naming the file when it cannot be loaded or renders blank."""
        images = render_mesh(obj_path, render)
        feats = self._images(images)
        pooled, _ = self.pool(feats, [0] * len(images), views)
        return pooled[0], images


def render_settings(n_views=12, size=224, elevations=(15.0, 40.0), distance=3.0, yfov=40.0, bg=(255, 255, 255),
                    up="y"):
    """The manifest's "render" dict: the arguments of meshes.geometry.view_cameras, image size, background, up."""
    return {"n_views": int(n_views), "size": int(size), "elevations": [float(e) for e in elevations],
            "distance": float(distance), "yfov": float(yfov), "bg": [int(c) for c in bg], "up": up}


def cameras_of(render):
    from meshes.geometry import view_cameras

    return view_cameras(render["n_views"], render["elevations"], render["distance"], render["yfov"])


def render_mesh(obj_path, render):
    """PIL views of one mesh file under a render settings dict, in this process (one GL context)."""
    from meshes.geometry import MeshError, load_model, normalize_scene
    from meshes.render import OffscreenRenderer, render_scene

    try:
        scene = normalize_scene(load_model(obj_path), render["up"])
        with OffscreenRenderer(render["size"], render["size"], tuple(render["bg"])) as renderer:
            return render_scene(renderer, scene, cameras_of(render))
    except MeshError as e:
        raise ValueError(f"{obj_path}: {e}") from None

