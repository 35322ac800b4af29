"""Search your own meshes: scripts/index_shapes.py, shape_index/ and search.py end to end on a few toy meshes with
the tiny (random init) CLIP, headless EGL, 4 views of 64 px.

    .venv/bin/python -m pytest -q tests/test_shape_index.py
"""
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import clip
import torch
import torch.nn.functional as F
from PIL import Image

import search
from meshes.captions import COLOR_WORDS
from meshes.objfile import write_obj
from meshes.toy_design import build_model
from models.clip_wrapper import CLIPWrapper, load_clip
from multiview_dataset import crop_photo
from scripts import index_shapes
from shape_index import load_index, open_searcher, store
from shape_index.backends import ExactBackend, FaissBackend, make_backend

SMALL = ["--n_views", "4", "--elevations", "20", "--size", "64", "--num_workers", "0", "--clip_model", "tiny"]
MODELS = [("chair", 0), ("sofa", 1), ("table", 2)]


def write_toy_mesh(root, category, seed):
    parts, _ = build_model(category, np.random.default_rng(seed))
    return write_obj(Path(root) / category / f"{category}_{seed}" / "model.obj",
                     [(mesh, COLOR_WORDS[color]) for mesh, color in parts])


def index(mesh_dir, index_dir, *extra):
    return index_shapes.main(["--mesh_dir", str(mesh_dir), "--index", str(index_dir), *SMALL, *extra])


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Three toy meshes and a broken one, indexed once; tests that change things work on copies."""
    root = tmp_path_factory.mktemp("shape_index")
    for category, seed in MODELS:
        write_toy_mesh(root / "meshes", category, seed)
    (root / "meshes" / "broken.obj").write_text("this is not a mesh\n")
    assert index(root / "meshes", root / "index") == 0
    return root


def copy_of(built, tmp_path):
    for name in ("meshes", "index"):
        shutil.copytree(built / name, tmp_path / name)
    return tmp_path / "meshes", tmp_path / "index"


def tiny_model():
    model, preprocess = load_clip("tiny", "cpu")
    return CLIPWrapper(model, "zero_shot").eval(), preprocess


def reference_shape(wrapper, preprocess, view_paths):
    """Brute force: each view encoded alone, normalised, averaged, normalised (evaluation's mean pooling)."""
    with torch.no_grad():
        views = [wrapper.encode_image(preprocess(Image.open(p).convert("RGB"))[None])[0] for p in view_paths]
    views = torch.nn.functional.normalize(torch.stack(views).float(), dim=-1)
    return torch.nn.functional.normalize(views.mean(0), dim=-1).numpy()


def test_index_holds_pooled_embeddings_thumbnails_and_manifest(built):
    idx = load_index(built / "index")
    m = idx.manifest
    assert sorted(idx.ids) == sorted(f"{c}/{c}_{s}" for c, s in MODELS)  # broken.obj reported and left out
    failures = [json.loads(line) for line in (built / "index/renders/failures.jsonl").read_text().splitlines()]
    assert [f["model"] for f in failures] == ["broken.obj"]
    assert m["model"].startswith("tiny (random init") and m["clip_model"] == "tiny" and m["checkpoint"] is None
    assert m["render"] == {"n_views": 4, "size": 64, "elevations": [20.0], "distance": 3.0, "yfov": 40.0,
                           "bg": [255, 255, 255], "up": "y"}
    assert (m["count"], m["embedding_dim"], m["dtype"], m["views"]) == (3, 128, "float32", "mean")
    wrapper, preprocess = tiny_model()
    for i, model_id in enumerate(idx.ids):
        views = sorted((built / "index/renders" / model_id).glob("view_*.png"))
        assert len(views) == 4
        np.testing.assert_allclose(idx.embeddings[i], reference_shape(wrapper, preprocess, views), atol=1e-5)
        assert Path(idx.shapes[i]["mesh_path"]) == built / "meshes" / model_id / "model.obj"
        with Image.open(idx.thumbnail(i)) as thumb:
            assert max(thumb.size) <= store.THUMB_SIZE
    assert len(list((built / "index/thumbnails").glob("*.png"))) == 3


def test_update_embeds_only_new_meshes_and_drops_removed(built, tmp_path, monkeypatch):
    meshes, index_dir = copy_of(built, tmp_path)
    before = load_index(index_dir)
    shutil.rmtree(meshes / "table")
    write_toy_mesh(meshes, "bed", 3)
    encoded = []
    real = CLIPWrapper.encode_image
    monkeypatch.setattr(CLIPWrapper, "encode_image", lambda self, x: encoded.append(len(x)) or real(self, x))
    assert index(meshes, index_dir) == 0
    assert sum(encoded) == 4  # the new bed's 4 views, nothing else
    after = load_index(index_dir)
    assert sorted(after.ids) == ["bed/bed_3", "chair/chair_0", "sofa/sofa_1"]
    for model_id in ("chair/chair_0", "sofa/sofa_1"):
        np.testing.assert_array_equal(after.embedding(model_id), before.embedding(model_id))
    assert len(list((index_dir / "thumbnails").glob("*.png"))) == 3
    assert sorted(p.name for p in index_dir.glob("*-*.*")) == ["embeddings-0002.npy", "shapes-0002.jsonl"]
    encoded.clear()
    assert index(meshes, index_dir) == 0 and sum(encoded) == 0  # nothing new: nothing encoded


def test_interrupted_update_leaves_the_previous_index(built, tmp_path, monkeypatch):
    meshes, index_dir = copy_of(built, tmp_path)
    write_toy_mesh(meshes, "bed", 3)

    def killed(path, obj):
        raise KeyboardInterrupt

    monkeypatch.setattr(store, "write_json", killed)  # dies after the new data files, before the manifest
    with pytest.raises(KeyboardInterrupt):
        index(meshes, index_dir)
    assert len(list(index_dir.glob("embeddings-*.npy"))) == 2
    assert sorted(load_index(index_dir).ids) == sorted(load_index(built / "index").ids)
    monkeypatch.undo()
    assert index(meshes, index_dir) == 0
    assert len(load_index(index_dir)) == 4 and len(list(index_dir.glob("embeddings-*.npy"))) == 1


def test_other_settings_need_rebuild(built, tmp_path, capsys):
    meshes, index_dir = copy_of(built, tmp_path)
    manifest = (index_dir / "manifest.json").read_bytes()
    assert index(meshes, index_dir, "--dtype", "float16") == 2
    err = capsys.readouterr().err
    assert "dtype" in err and "--rebuild" in err and str(index_dir / "manifest.json") in err
    assert index_shapes.main(["--mesh_dir", str(meshes), "--index", str(index_dir), *SMALL[:4], "--size", "48",
                              "--num_workers", "0", "--clip_model", "tiny"]) == 2
    assert "render" in capsys.readouterr().err
    assert (index_dir / "manifest.json").read_bytes() == manifest  # nothing was written
    assert index(meshes, index_dir, "--dtype", "float16", "--rebuild") == 0
    old, new = load_index(built / "index"), load_index(index_dir)
    assert new.embeddings.dtype == np.float16
    np.testing.assert_allclose(np.asarray(new.embeddings, np.float32), old.embeddings, atol=2e-3)


def test_renders_and_jsonl_sources_give_the_same_index(built, tmp_path):
    renders = built / "index/renders"
    assert index_shapes.main(["--renders_dir", str(renders), "--index", str(tmp_path / "from_renders"),
                              "--num_workers", "0", "--clip_model", "tiny"]) == 0
    rows = [{"model_id": i, "category": i.split("/")[0], "split": "test", "captions": ["a thing"],
             "views": [f"{i}/view_{v:02d}.png" for v in range(4)]} for i in ("chair/chair_0", "sofa/sofa_1")]
    jsonl = renders / "usable_samples.jsonl"  # views are relative to the jsonl's folder
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    try:
        assert index_shapes.main(["--data_jsonl", str(jsonl), "--index", str(tmp_path / "from_jsonl"),
                                  "--num_workers", "0", "--clip_model", "tiny"]) == 0
    finally:
        jsonl.unlink()
    meshes = load_index(built / "index")
    for name, ids in (("from_renders", meshes.ids), ("from_jsonl", [r["model_id"] for r in rows])):
        other = load_index(tmp_path / name)
        assert sorted(other.ids) == sorted(ids) and other.render == meshes.render  # settings read from views.json
        for model_id in ids:
            np.testing.assert_allclose(other.embedding(model_id), meshes.embedding(model_id), atol=1e-6)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_exact_search_matches_brute_force_across_blocks(dtype, monkeypatch):
    from shape_index import backends

    rng = np.random.default_rng(0)
    emb = rng.standard_normal((5000, 64)).astype(dtype)
    emb /= np.linalg.norm(emb.astype(np.float32), axis=1, keepdims=True).astype(dtype)
    queries = rng.standard_normal((7, 64)).astype(np.float32)
    monkeypatch.setattr(backends, "BLOCK_ROWS", 1024)  # five blocks, the last one short: the merge is exercised
    scores, rows = ExactBackend(emb).search(queries, 10)
    brute = queries.astype(np.float64) @ emb.astype(np.float64).T
    np.testing.assert_array_equal(rows, np.argsort(-brute, axis=1)[:, :10])
    np.testing.assert_allclose(scores, np.take_along_axis(brute, rows, 1), atol=1e-5)
    assert ExactBackend(emb).search(queries[0], 10_000)[1].shape == (1, 5000)  # k above N: every shape


def test_exact_and_faiss_return_the_same_top_k():
    pytest.importorskip("faiss")
    rng = np.random.default_rng(1)
    emb = rng.standard_normal((20000, 128)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    queries = rng.standard_normal((50, 128)).astype(np.float32)
    exact, faiss = ExactBackend(emb).search(queries, 20), FaissBackend(emb).search(queries, 20)
    np.testing.assert_array_equal(exact[1], faiss[1])
    np.testing.assert_allclose(exact[0], faiss[0], atol=1e-5)
    assert make_backend(emb, "auto").name == "exact" and make_backend(emb, "faiss").name == "faiss"


class Figures(HTMLParser):
    """(img src, caption text) of each <figure> of a results.html."""

    def __init__(self):
        super().__init__()
        self.figures, self.text, self.title = [], None, ""
        self._in_title = False

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.figures.append([dict(attrs)["src"], ""])
        elif tag == "br" and self.figures:
            self.figures[-1][1] += "\n"
        self._in_title = tag == "title"

    def handle_data(self, data):
        if self._in_title:
            self.title += data
        elif self.figures:
            self.figures[-1][1] += data


def run_search(capsys, *argv):
    assert search.main(list(argv)) == 0
    out = capsys.readouterr().out
    html_path = Path(out.strip().splitlines()[-1].removeprefix("wrote "))
    parser = Figures()
    parser.feed(html_path.read_text())
    return html_path, parser, json.loads((html_path.parent / "results.json").read_text())


def test_mesh_query_of_an_indexed_mesh_finds_it_first(built, tmp_path, capsys):
    mesh = built / "meshes/sofa/sofa_1/model.obj"
    html_path, page, results = run_search(capsys, "--index", str(built / "index"), "--mesh", str(mesh),
                                          "--top_k", "3", "--out_dir", str(tmp_path / "out"))
    hits = results["hits"]
    assert hits[0]["model_id"] == "sofa/sofa_1" and hits[0]["score"] > 0.999
    assert hits[0]["mesh_path"] == str(mesh) and [h["rank"] for h in hits] == [1, 2, 3]
    srcs = [src for src, _ in page.figures]
    assert srcs == ["query.png"] + [h["thumbnail"] for h in hits]
    for src in srcs:  # relative to the page, inside its folder: it opens offline
        assert not Path(src).is_absolute() and (html_path.parent / src).is_file()
    captions = [caption.split() for _, caption in page.figures[1:]]
    assert captions == [[f"#{h['rank']}", f"{h['score']:.4f}", h["model_id"], h["mesh_path"]] for h in hits]
    assert "tiny (random init" in html_path.read_text() and results["model"].startswith("tiny (random init")


def test_text_query_ranks_by_cosine_and_is_escaped(built, capsys):
    text = 'a <b>red</b> "chair" & co'
    html_path, page, results = run_search(capsys, "--index", str(built / "index"), "--text", text, "--top_k", "3")
    assert html_path.parent.parent == built / "index/searches"  # the default --out_dir
    raw = html_path.read_text()
    assert "<b>red</b>" not in raw and text in page.title
    assert len(page.figures) == 3 and all((html_path.parent / src).is_file() for src, _ in page.figures)
    searcher = open_searcher(built / "index")
    wrapper, _ = tiny_model()
    from models.clip_wrapper import tokenize

    with torch.no_grad():
        q = torch.nn.functional.normalize(wrapper.encode_text(tokenize([text])).float(), dim=-1)[0].numpy()
    cos = np.asarray(searcher.index.embeddings) @ q
    assert [h["model_id"] for h in results["hits"]] == [searcher.index.ids[i] for i in np.argsort(-cos)]
    np.testing.assert_allclose([h["score"] for h in results["hits"]], np.sort(cos)[::-1], atol=1e-5)


def test_photo_query_is_cropped_like_evaluation(built, tmp_path, capsys):
    view = Image.open(built / "index/renders/chair/chair_0/view_01.png").convert("RGB")
    photo = Image.new("RGB", (160, 120), (90, 120, 60))
    photo.paste(view, (70, 30))
    photo.save(tmp_path / "photo.png")
    bbox = (70, 30, 134, 94)
    html_path, page, results = run_search(capsys, "--index", str(built / "index"), "--photo",
                                          str(tmp_path / "photo.png"), "--bbox", ",".join(map(str, bbox)),
                                          "--top_k", "2", "--out_dir", str(tmp_path / "out"))
    crop = crop_photo(photo, bbox, margin=0.1)  # eval_shape_retrieval.py's crop, zero-shot margin
    assert np.array_equal(np.asarray(Image.open(html_path.parent / "query.png")), np.asarray(crop))
    searcher = open_searcher(built / "index")
    wrapper, preprocess = tiny_model()
    with torch.no_grad():
        q = torch.nn.functional.normalize(wrapper.encode_image(preprocess(crop)[None]).float(), dim=-1)[0].numpy()
    cos = np.asarray(searcher.index.embeddings) @ q
    assert [h["model_id"] for h in results["hits"]] == [searcher.index.ids[i] for i in np.argsort(-cos)[:2]]
    assert search.main(["--index", str(built / "index"), "--photo", str(tmp_path / "photo.png"),
                        "--bbox", "500,500,600,600"]) == 2
    assert "bbox" in capsys.readouterr().err


def test_not_an_index_is_a_clear_error(tmp_path, capsys):
    assert search.main(["--index", str(tmp_path), "--text", "a chair"]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path) in err and "manifest.json" in err and "index_shapes.py" in err


def test_explain_writes_a_relevance_figure_per_hit(built, tmp_path, capsys):
    from PIL import Image

    from models.relevance import relevance_maps
    from shape_index.encoder import render_mesh

    html_path, _, results = run_search(capsys, "--index", str(built / "index"), "--text", "a chair",
                                       "--top_k", "2", "--explain", "1", "--out_dir", str(tmp_path / "s"))
    figure = tmp_path / "s/explain_1.png"
    assert figure.is_file() and not (tmp_path / "s/explain_2.png").exists()
    # the figure is the top hit's views (rendered with the index's settings) with their relevance maps
    idx = load_index(built / "index")
    top = next(s for s in idx.shapes if s["model_id"] == results["hits"][0]["model_id"])
    views = render_mesh(top["mesh_path"], idx.render)
    wrapper, preprocess = tiny_model()
    maps = relevance_maps(wrapper, preprocess, "a chair", views)
    assert maps.shape == (len(views), *views[0].size[::-1]) and Image.open(figure).size[0] > 0
    with pytest.raises(SystemExit):
        search.main(["--index", str(built / "index"), "--mesh", str(top["mesh_path"]), "--explain", "1"])


def test_composed_query_is_the_stage1_sum_and_never_returns_its_reference(built, tmp_path, capsys):
    idx = load_index(built / "index")
    reference = idx.ids[0]
    html_path, _, results = run_search(capsys, "--index", str(built / "index"), "--reference", reference,
                                       "--text", "with arms", "--top_k", "5", "--out_dir", str(tmp_path / "c"))
    wrapper, preprocess = tiny_model()
    with torch.no_grad():
        text = F.normalize(wrapper.encode_text(clip.tokenize(["with arms"])).float(), dim=-1)[0]
    ref = torch.from_numpy(np.asarray(idx.embeddings[0], dtype=np.float32))
    query = F.normalize(F.normalize(ref, dim=0) + text, dim=0)
    scores = torch.from_numpy(np.asarray(idx.embeddings, dtype=np.float32)) @ query
    want = [idx.ids[i] for i in scores.argsort(descending=True).tolist() if idx.ids[i] != reference]
    assert [h["model_id"] for h in results["hits"]] == want[:5] and len(want) == len(idx.ids) - 1
    with pytest.raises(SystemExit):
        search.main(["--index", str(built / "index"), "--reference", reference, "--mesh", "x.obj"])
