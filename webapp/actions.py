"""What each control of the web page does, as plain functions over shape_index: no gradio here, so that tests call
them without a browser and the page (webapp/page.py) only wires them to widgets.

    app = open_app("index/", captioner="weights/<run>/best.pt")       # the index, its model, a captioner or None
    hits = search_text(app, "a low red sofa", k=12)                    # [Hit]: searcher.search of the query
    hits = search_photo(app, "photo.jpg", k=12, bbox="10,20,200,220")  # bbox optional, as search.py --bbox
    hits = search_mesh(app, ["chair.obj", "chair.mtl"], k=12)          # rendered like the indexed shapes
    gallery(hits)                                                      # [(thumbnail path, "model_id  0.8123")]
    caption_of(app, hits[0].model_id)                                  # the captioner's caption, or NO_CAPTIONER
"""
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from multiview_dataset import image_files, load_image, read_samples
from shape_index.encoder import render_mesh
from shape_index.query import Searcher, open_searcher

TOP_K = 12  # results shown unless the page's slider says otherwise
NO_CAPTIONER = ("No captioner loaded: start the page with --captioner weights/<run>/best.pt "
                "(train one with train_captioner.py) to caption a chosen result.")


@dataclass
class App:
    """An index with the model it was built with (shape_index.Searcher), and a ShapeCaptioner or None."""
    searcher: Searcher
    captioner: object = None

    def summary(self):
        """One paragraph for the top of the page: what is searched, with which model, what captions."""
        index = self.searcher.index
        caption = f"captioner: {self.captioner.label}" if self.captioner else "no captioner"
        return (f"{len(index)} shapes in {index.root} ({index.manifest['views']} of {index.render['n_views']} "
                f"views). Model: {index.manifest['model']}; {caption}.")


def open_app(index_dir, device="cpu", checkpoint=None, clip_weights=None, captioner=None, backend="auto"):
    """The App of an index folder (checkpoint / clip_weights: where the index's weights are now, if they moved)
    and a train_captioner.py checkpoint. Errors (BadIndex, FileNotFoundError, ValueError) name the file."""
    searcher = open_searcher(index_dir, device, backend, checkpoint, clip_weights)
    if captioner:
        from models.shape_captioner import ShapeCaptioner

        captioner = ShapeCaptioner(captioner, device)
    return App(searcher, captioner)


def _search(app, k, kind, **fields):
    k = int(k)
    if k < 1:
        raise ValueError(f"number of results {k}: expected at least 1")
    return app.searcher.search(app.searcher.encode(kind, **fields).embedding, top_k=k)


def search_text(app, text, k=TOP_K):
    """[Hit] of a description. ValueError when it is empty."""
    return _search(app, k, "text", text=text or "")


def parse_bbox(text):
    """[x0, y0, x1, y1] of "x0,y0,x1,y1" (pixels), None of an empty field; ValueError otherwise."""
    if not text or not text.strip():
        return None
    try:
        values = [float(v) for v in text.replace(" ", "").split(",")]
    except ValueError:
        raise ValueError(f"box {text!r}: expected x0,y0,x1,y1 in pixels") from None
    if len(values) != 4:
        raise ValueError(f"box {text!r}: expected 4 numbers, got {len(values)}")
    return values


def search_photo(app, photo, k=TOP_K, bbox=None):
    """[Hit] of a photo (a file path or a PIL image), cropped to bbox ("x0,y0,x1,y1" or a list) grown by the
    checkpoint's photo margin, else padded square whole (shape_index.encoder.Encoder.photo)."""
    if photo is None:
        raise ValueError("no photo: upload an image first")
    bbox = parse_bbox(bbox) if isinstance(bbox, str) or bbox is None else list(bbox)
    return _search(app, k, "photo", photo=photo, bbox=bbox)


def search_mesh(app, mesh, k=TOP_K):
    """[Hit] of a mesh, rendered with the index's render settings and pooled as the index pools: an .obj path,
    or the files of one upload (one .obj with its .mtl and textures). An upload's files arrive in separate
    folders, so they are copied side by side first: without its .mtl an .obj renders grey and matches less."""
    files = [mesh] if isinstance(mesh, (str, Path)) else list(mesh or [])
    objs = [f for f in files if Path(f).suffix.lower() == ".obj"]
    if len(objs) != 1:
        raise ValueError(f"expected one .obj file (with its .mtl and textures), got {len(objs)}"
                         + (f" among {', '.join(Path(f).name for f in files)}" if files else ""))
    if len(files) == 1:
        return _search(app, k, "mesh", mesh=objs[0])
    with tempfile.TemporaryDirectory(prefix="mesh-query-") as folder:
        for f in files:
            shutil.copyfile(f, Path(folder) / Path(f).name)
        return _search(app, k, "mesh", mesh=Path(folder) / Path(objs[0]).name)


def gallery(hits):
    """[(thumbnail path, label)] of hits, best first: what the page's gallery shows."""
    return [(str(h.thumbnail), f"{h.model_id}  {h.score:.4f}") for h in hits]


def shape_views(index, model_id):
    """PIL views of an indexed shape: its renders where the index recorded them (<index>/renders, the source's
    renders_dir, the usable_samples.jsonl it was built from), else its mesh rendered with the index's settings.
    ValueError when none of these exists any more."""
    if model_id not in index.row_of:
        raise ValueError(f"{model_id!r} is not in the index {index.root}")
    source = index.manifest.get("source") or {}
    folders = [index.root / "renders" / model_id]
    if source.get("renders_dir"):
        folders.append(Path(source["renders_dir"]) / model_id)
    for folder in folders:
        if folder.is_dir() and image_files(folder):
            return [load_image(p) for p in image_files(folder)]
    if source.get("data_jsonl") and Path(source["data_jsonl"]).is_file():
        jsonl = Path(source["data_jsonl"])
        rows, _ = read_samples(jsonl)
        views = next((r["views"] for r in rows if r["model_id"] == model_id), None)
        if views and all((jsonl.parent / v).is_file() for v in views):
            return [load_image(jsonl.parent / v) for v in views]
    mesh = index.shapes[index.row_of[model_id]].get("mesh_path")
    if mesh and Path(mesh).is_file():
        return render_mesh(mesh, index.render)
    raise ValueError(f"{model_id}: its renders and its mesh are no longer where the index {index.root} recorded them")


def caption_of(app, model_id):
    """The captioner's caption of an indexed shape (its views through the captioner's own CLIP), or
    NO_CAPTIONER when the page has no captioner."""
    if app.captioner is None:
        return NO_CAPTIONER
    text = app.captioner.captions(shape_views(app.searcher.index, model_id))[0]
    return text or "(the captioner wrote an empty caption)"
