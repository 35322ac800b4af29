"""The web page itself (gradio): a text box, a photo upload and a mesh upload against one index, the results as a
grid of thumbnails with id and score, and the caption of the result you click. Every action is a function of
webapp/actions.py; this module only lays out widgets and turns errors into a status line.

    page = build_page(open_app("index/"))
    launch(page, app, host="127.0.0.1", port=7860)

Nothing leaves the machine: analytics and the version check are off, no share link is made, the fonts are
gradio's own files, and the page binds to 127.0.0.1 unless told otherwise.
"""
import os

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # gradio reads it at import; it also gates the version check

import gradio as gr  # noqa: E402

from webapp.actions import TOP_K, caption_of, gallery, search_mesh, search_photo, search_text  # noqa: E402

MAX_K = 50  # the slider's end: a grid of more thumbnails than this is not read by anyone
# ids are long: their labels wrap instead of being cut off
CSS = "#results .caption-label{white-space:normal;overflow-wrap:anywhere;max-width:100%}"


def _results(search, app, *args):
    """(gallery items, model ids, status line, caption) of one search: a bad query gives an empty grid and its
    reason; either way the previous result's caption goes."""
    try:
        hits = search(app, *args)
    except (ValueError, OSError) as e:
        return [], [], f"Error: {e}", ""
    best = f"; best: {hits[0].model_id} ({hits[0].score:.4f})" if hits else ""
    return gallery(hits), [h.model_id for h in hits], f"{len(hits)} results{best}. Click one for its caption.", ""


def build_page(app, top_k=TOP_K):
    """The gradio Blocks of an App (webapp.actions.open_app)."""
    with gr.Blocks(title="Shape search", analytics_enabled=False) as page:
        gr.Markdown("## Search your shapes")
        gr.Markdown(app.summary(), elem_id="summary")
        with gr.Row():
            with gr.Column(scale=2):
                with gr.Tab("Text"):
                    text = gr.Textbox(label="Describe a shape", placeholder="a low red sofa", elem_id="query-text")
                    text_button = gr.Button("Search", variant="primary", elem_id="search-text")
                with gr.Tab("Photo"):
                    photo = gr.Image(type="filepath", label="Photo", sources=["upload"], elem_id="query-photo")
                    bbox = gr.Textbox(label="Box x0,y0,x1,y1 in pixels (optional)", elem_id="query-bbox")
                    photo_button = gr.Button("Search with the photo", variant="primary", elem_id="search-photo")
                with gr.Tab("Mesh"):
                    mesh = gr.File(label="Mesh: one .obj, with its .mtl and textures", file_count="multiple",
                                   file_types=[".obj", ".mtl", "image"], type="filepath", elem_id="query-mesh")
                    mesh_button = gr.Button("Search with the mesh", variant="primary", elem_id="search-mesh")
            with gr.Column(scale=1):
                k = gr.Slider(1, MAX_K, value=min(top_k, MAX_K), step=1, label="Results", elem_id="top-k")
                status = gr.Textbox(label="Status", interactive=False, elem_id="status")
                caption = gr.Textbox(label="Caption of the chosen result", interactive=False, elem_id="caption")
        results = gr.Gallery(label="Results", columns=6, height="auto", object_fit="contain", allow_preview=False,
                             elem_id="results")
        ids = gr.State([])

        searched = [results, ids, status, caption]
        text.submit(lambda t, n: _results(search_text, app, t, n), [text, k], searched)
        text_button.click(lambda t, n: _results(search_text, app, t, n), [text, k], searched)
        photo_button.click(lambda p, n, b: _results(search_photo, app, p, n, b), [photo, k, bbox], searched)
        mesh_button.click(lambda m, n: _results(search_mesh, app, m, n), [mesh, k], searched)

        def chosen(shown, evt: gr.SelectData):  # gradio passes the click by this annotation
            return _caption(app, shown[evt.index])
        results.select(chosen, [ids], caption)
    return page


def _caption(app, model_id):
    try:
        return f"{model_id}: {caption_of(app, model_id)}"
    except (ValueError, OSError) as e:
        return f"{model_id}: cannot caption ({e})"


def launch(page, app, host="127.0.0.1", port=7860, block=True):
    """Serve the page; the index's thumbnails are the only files it may send besides its own."""
    return page.launch(server_name=host, server_port=port, share=False, inbrowser=False, ssr_mode=False, css=CSS,
                       allowed_paths=[str(app.searcher.index.root.resolve())], show_error=True, quiet=False,
                       prevent_thread_lock=not block)
