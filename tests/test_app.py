"""The web page (app.py, webapp/): its functions against shape_index's own search on a tiny index of toy meshes
(the tiny random-init CLIP, 4 views of 64 px), the caption of a chosen result with a tiny captioner, and the page
end to end in headless Chromium.

    .venv/bin/python -m pytest -q tests/test_app.py
    .venv/bin/python -m pytest -q -m browser tests      # the browser test alone

The browser test needs Debian's chromium and chromium-driver and requirements-app.txt (.ci/run installs them);
without them it is skipped with a message naming what is missing.
"""
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import train_captioner
from models.caption_decoder import CaptionDecoder, decode_kwargs, load_captioner
from shape_index import open_searcher
from test_shape_index import MODELS, index, reference_shape, tiny_model, write_toy_mesh
from webapp.actions import (NO_CAPTIONER, caption_of, gallery, open_app, parse_bbox, search_mesh, search_photo,
                            search_text, shape_views)

ROOT = Path(__file__).resolve().parents[1]
SHAPES = [*MODELS, ("bed", 3)]  # four shapes, so that a top 3 leaves one out
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"  # Debian's: nothing is downloaded
QUERY = "a red chair"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("app")
    for category, seed in SHAPES:
        write_toy_mesh(root / "meshes", category, seed)
    assert index(root / "meshes", root / "index") == 0
    return root


@pytest.fixture(scope="module")
def app(built):
    return open_app(built / "index")


@pytest.fixture(scope="module")
def captioner_path(tmp_path_factory, synthetic_jsonl):
    """A tiny captioner (width 32, one layer) trained for 2 epochs on the synthetic shapes over the tiny CLIP as
    initialised: a real train_captioner.py checkpoint whose captions mean nothing."""
    root = tmp_path_factory.mktemp("captioner")
    clip = root / "clip.pt"  # a train.py-style checkpoint of the untrained tiny CLIP (as tests/test_captioner.py)
    torch.save({"config": {"clip_model": "tiny", "clip_weights": "", "seed": 0, "train_mode": "zero_shot",
                           "data_jsonl": str(synthetic_jsonl)}, "model": {}}, clip)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a decoder this small runs ~20x slower on two shared threads
    try:
        out = train_captioner.main([f"--clip_checkpoint={clip}", "--width=32", "--layers=1", "--heads=2",
                                    "--prefix_len=2", "--batch_size=8", "--epochs=2", "--lr=3e-3",
                                    "--warmup_steps=2", "--num_workers=0", "--decode=greedy",
                                    f"--logs_dir={root}/logs", f"--weights_dir={root}/weights",
                                    f"--cache_dir={root}/cache", "--run_name=tiny-captioner"])
    finally:
        torch.set_num_threads(threads)
    return Path(out["weights_dir"]) / "best.pt"


def library_hits(searcher, k, kind, **fields):
    return [(h.rank, h.model_id, h.score, h.mesh_path, h.thumbnail)
            for h in searcher.search(searcher.encode(kind, **fields).embedding, top_k=k)]


def as_rows(hits):
    return [(h.rank, h.model_id, h.score, h.mesh_path, h.thumbnail) for h in hits]


def test_text_photo_and_mesh_results_equal_the_library_search(built, app, tmp_path):
    library = open_searcher(built / "index")  # opened apart from the app: nothing shared but the index folder
    hits = search_text(app, QUERY, 3)
    assert as_rows(hits) == library_hits(library, 3, "text", text=QUERY)
    assert len(search_text(app, QUERY, 10)) == len(SHAPES)  # k above the index size: every shape once
    assert gallery(hits) == [(str(h.thumbnail), f"{h.model_id}  {h.score:.4f}") for h in hits]
    assert all(Path(path).is_file() for path, _ in gallery(hits))

    view = Image.open(built / "index/renders/chair/chair_0/view_01.png").convert("RGB")
    photo = Image.new("RGB", (160, 120), (90, 120, 60))
    photo.paste(view, (70, 30))
    photo.save(tmp_path / "photo.png")
    assert as_rows(search_photo(app, str(tmp_path / "photo.png"), 2, "70, 30,134,94")) == \
        library_hits(library, 2, "photo", photo=str(tmp_path / "photo.png"), bbox=[70, 30, 134, 94])
    assert as_rows(search_photo(app, str(tmp_path / "photo.png"), 4)) == \
        library_hits(library, 4, "photo", photo=str(tmp_path / "photo.png"), bbox=None)

    # an upload's .obj and .mtl arrive in separate folders: the .obj must still find its materials
    mesh = built / "meshes/sofa/sofa_1/model.obj"
    uploads = []
    for name in ("model.obj", "model.mtl"):
        (tmp_path / name).mkdir()
        uploads.append(shutil.copy(mesh.parent / name, tmp_path / name / name))
    hits = search_mesh(app, uploads, 3)
    assert hits[0].model_id == "sofa/sofa_1" and hits[0].score > 0.999
    assert as_rows(hits) == [row[:2] + (pytest.approx(row[2], abs=1e-5),) + row[3:]
                             for row in library_hits(library, 3, "mesh", mesh=mesh)]


def test_bad_queries_are_errors_that_say_why(app):
    with pytest.raises(ValueError, match="empty text"):
        search_text(app, "  ", 3)
    with pytest.raises(ValueError, match="at least 1"):
        search_text(app, QUERY, 0)
    with pytest.raises(ValueError, match="4 numbers"):
        parse_bbox("1,2,3")
    with pytest.raises(ValueError, match="x0,y0,x1,y1"):
        parse_bbox("a,b,c,d")
    assert parse_bbox("") is None and parse_bbox("1,2,3.5,4") == [1, 2, 3.5, 4]
    with pytest.raises(ValueError, match="upload an image"):
        search_photo(app, None, 3)
    with pytest.raises(ValueError, match="one .obj file.*got 0 among model.mtl"):
        search_mesh(app, ["x/model.mtl"], 3)
    with pytest.raises(ValueError, match="got 2"):
        search_mesh(app, ["a.obj", "b.obj"], 3)


def test_caption_of_a_chosen_result_reads_that_shapes_views(built, app, captioner_path, monkeypatch):
    assert caption_of(app, "sofa/sofa_1") == NO_CAPTIONER
    with_captioner = open_app(built / "index", captioner=str(captioner_path))
    seen = []
    real = CaptionDecoder.generate
    monkeypatch.setattr(CaptionDecoder, "generate", lambda self, x, **kw: seen.append(x.clone()) or real(self, x, **kw))
    text = caption_of(with_captioner, "sofa/sofa_1")
    # brute force: the captioner's CLIP (the tiny one as initialised) on each of the sofa's views, pooled
    wrapper, preprocess = tiny_model()
    views = sorted((built / "index/renders/sofa/sofa_1").glob("view_*.png"))
    expected = reference_shape(wrapper, preprocess, views)
    np.testing.assert_allclose(seen[0][0].numpy(), expected, atol=1e-5)
    dec, ckpt = load_captioner(captioner_path)
    assert text == real(dec, torch.from_numpy(expected)[None], **decode_kwargs(ckpt["config"]))[0] and text
    caption_of(with_captioner, "chair/chair_0")  # another result, another input
    assert not np.allclose(seen[1][0].numpy(), expected, atol=1e-3)
    with pytest.raises(ValueError, match="not in the index"):
        caption_of(with_captioner, "sofa/nope")


def test_a_shape_whose_renders_are_gone_is_rendered_from_its_mesh(built, tmp_path):
    shutil.copytree(built / "index", tmp_path / "index", ignore=shutil.ignore_patterns("renders"))
    app = open_app(tmp_path / "index")
    app.searcher.index.manifest["source"] = {}  # the recorded renders folder is gone too
    rendered = shape_views(app.searcher.index, "table/table_2")
    stored = [Image.open(p).convert("RGB") for p in sorted((built / "index/renders/table/table_2").glob("view_*.png"))]
    assert len(rendered) == len(stored) == 4
    for a, b in zip(rendered, stored):  # the index's own render settings: the same pixels, up to GL rounding
        assert np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max() <= 2
    app.searcher.index.shapes[app.searcher.index.row_of["table/table_2"]]["mesh_path"] = str(tmp_path / "gone.obj")
    with pytest.raises(ValueError, match="no longer where"):
        shape_views(app.searcher.index, "table/table_2")


# ----------------------------------------------------------------------------- the page in a real browser
def browser_missing():
    """The packages the browser test lacks (Debian's, then pip's)."""
    debian = (("chromium", CHROMIUM), ("chromium-driver", CHROMEDRIVER))
    missing = [pkg for pkg, path in debian if not Path(path).is_file()]
    return missing + [pkg for pkg in ("gradio", "selenium") if importlib.util.find_spec(pkg) is None]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(argv, log, timeout=180):
    """app.py in its own process, once its page answers; (process, url)."""
    port = free_port()
    env = {**os.environ, "GRADIO_TEMP_DIR": str(log.parent / "gradio"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), *argv, "--port", str(port), "--device", "cpu"],
                            cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    url, start = f"http://127.0.0.1:{port}/", time.monotonic()
    while time.monotonic() - start < timeout:
        if proc.poll() is not None:
            pytest.fail(f"app.py exited with {proc.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.5)
    proc.kill()
    pytest.fail(f"app.py did not answer on {url} in {timeout} s:\n{log.read_text()}")


def chromium():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        options.add_argument(arg)  # no sandbox: CI runs as root, where Chromium refuses to start with one
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)  # no Selenium Manager


@pytest.mark.browser
def test_page_in_a_headless_browser(built, captioner_path, tmp_path):
    missing = browser_missing()
    if missing:
        pytest.skip(f"the browser test needs {', '.join(missing)}: apt-get install -y chromium chromium-driver; "
                    f".venv/bin/pip install -r requirements-app.txt (.ci/run installs both)")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    k = 3
    proc, url = start_app(["--index", str(built / "index"), "--captioner", str(captioner_path), "--top_k", str(k)],
                          tmp_path / "app.log")
    driver = None
    try:
        driver = chromium()
        driver.get(url)
        box = WebDriverWait(driver, 60).until(lambda d: d.find_element(By.CSS_SELECTOR, "#query-text textarea"))
        box.send_keys(QUERY, Keys.ENTER)
        loaded = ("const imgs = [...document.querySelectorAll('#results img')];"
                  "return imgs.length && imgs.every(i => i.complete) ? imgs.map(i => i.naturalWidth) : null;")
        widths = WebDriverWait(driver, 60).until(lambda d: d.execute_script(loaded))
        assert len(widths) == k and all(w > 0 for w in widths), widths
        shown = [e.text.split()[0] for e in driver.find_elements(By.CSS_SELECTOR, "#results .caption-label")]
        expected = [row[1] for row in library_hits(open_searcher(built / "index"), k, "text", text=QUERY)]
        assert shown == expected  # the top result first, as the library ranks them
        driver.find_elements(By.CSS_SELECTOR, "#results button.thumbnail-item")[0].click()
        caption = WebDriverWait(driver, 60).until(
            lambda d: d.find_element(By.CSS_SELECTOR, "#caption textarea").get_attribute("value"))
        same = open_app(built / "index", captioner=str(captioner_path))
        assert caption == f"{expected[0]}: {caption_of(same, expected[0])}"
        outside = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)"
                                        f".filter(n => !n.startsWith('{url}'))")
        assert outside == [], f"the page fetched from outside this machine: {outside}"
        driver.save_screenshot(str(tmp_path / "app.png"))
        assert Image.open(tmp_path / "app.png").size[0] > 0
        (ROOT / "logs").mkdir(exist_ok=True)
        shutil.copyfile(tmp_path / "app.png", ROOT / "logs/app_screenshot.png")  # the README's picture
    finally:
        if driver is not None:
            driver.quit()
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
