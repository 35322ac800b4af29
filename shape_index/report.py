"""A search's report: results.html (the query beside its top-k thumbnails, ids and scores) and results.json.

    write_report("index/searches/<run>", query, hits, searcher)

The folder is self-contained and opens offline: the query's picture is query.png and each hit's thumbnail is
copied into thumbnails/, all linked by relative paths; every text is HTML-escaped and every link URL-quoted.
"""
import html
import shutil
from pathlib import Path
from urllib.parse import quote

from utils import atomic_save_image, atomic_write, write_json

STYLE = ("body{font-family:sans-serif;margin:1.5em}figure{display:inline-block;margin:0 .6em 1em 0;"
         "vertical-align:top;width:140px;font-size:12px;word-wrap:break-word}img{width:128px;height:128px;"
         "object-fit:contain;border:1px solid #ccc;background:#fff}.query img{width:192px;height:192px}"
         ".note{color:#555}")


def _src(rel):
    return html.escape(quote(Path(rel).as_posix()), quote=True)


def _figure(img_rel, lines):
    caption = "<br>".join(html.escape(str(line)) for line in lines)
    return f'<figure><img src="{_src(img_rel)}" alt=""><figcaption>{caption}</figcaption></figure>'


def write_report(out_dir, query, hits, searcher):
    """Write results.html, results.json, query.png (photo and mesh queries) and thumbnails/ into out_dir.
    Returns the path of results.html."""
    out_dir = Path(out_dir)
    (out_dir / "thumbnails").mkdir(parents=True, exist_ok=True)
    manifest = searcher.index.manifest
    query_img = None
    if query.image is not None:
        query_img = "query.png"
        atomic_save_image(query.image.convert("RGB"), out_dir / query_img)
    rows = []
    for hit in hits:
        rel = Path("thumbnails") / hit.thumbnail.name
        shutil.copyfile(hit.thumbnail, out_dir / rel)
        rows.append({"rank": hit.rank, "model_id": hit.model_id, "score": round(hit.score, 6),
                     "mesh_path": hit.mesh_path, "thumbnail": rel.as_posix()})
    write_json(out_dir / "results.json", {"query": {"kind": query.kind, "label": query.label, "image": query_img},
                                          "model": manifest["model"], "index": str(searcher.index.root),
                                          "backend": searcher.backend.name, "hits": rows})
    title = f"{query.kind} query: {query.label}"
    parts = [f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>",
             f"<style>{STYLE}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>",
             f"<p class=\"note\">model: {html.escape(manifest['model'])}<br>index: "
             f"{html.escape(str(searcher.index.root))} ({manifest['count']} shapes, {manifest['views']} of "
             f"{manifest['render']['n_views']} views, {html.escape(searcher.backend.name)} search)</p>",
             "<h2>query</h2><div class=\"query\">"]
    if query_img:
        parts.append(_figure(query_img, [query.label]))
    else:
        parts.append(f"<p><q>{html.escape(query.label)}</q></p>")
    parts.append(f"</div><h2>top {len(rows)}</h2><div class=\"hits\">")
    for row in rows:
        parts.append(_figure(row["thumbnail"], [f"#{row['rank']}  {row['score']:.4f}", row["model_id"]]
                             + ([row["mesh_path"]] if row["mesh_path"] else [])))
    parts.append("</div></body></html>\n")
    atomic_write(out_dir / "results.html", "\n".join(parts))
    return out_dir / "results.html"

