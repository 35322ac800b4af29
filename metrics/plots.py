"""Pictures of an evaluation: Recall@K curves, and a gallery of the shapes retrieved for a few queries.

    plot_recall_curves({"text2image": [R@1, R@2, ...], "image2text": [...]}, "recall_curve.png", "full, test split",
                       chance={"text2image": [chance R@1, ...], ...})    # chance: dashed, in the same colour
    plot_gallery(queries, shapes, shape_models, views_of_model, "retrieval_gallery.png")

A gallery row is one query: a title line, then on the left the query itself (a photo thumbnail, or a caption's
text), then its top-5 shapes, each shown by its middle render; the right shape is framed green.
"""
import textwrap

import torch
import torch.nn.functional as F

GREEN, GREY = (30, 170, 60), (200, 200, 200)


def plot_recall_curves(curves, path, title, chance=None):
    """One Recall@K line per direction; curves[name][k - 1] is R@k. chance: the same for a random ranking (the
    expected R@k, metrics.baselines.chance_recall), drawn dashed in its direction's colour."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display is needed, and none may exist
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    names = {"image2text": "shape -> text (image2text)", "text2image": "text -> shape (text2image)"}
    for name, ys in curves.items():
        line, = ax.plot(range(1, len(ys) + 1), ys, label=names.get(name, name))
        if chance and name in chance:
            ax.plot(range(1, len(chance[name]) + 1), chance[name], "--", color=line.get_color(), alpha=0.6,
                    label=f"chance, {name}")
    ax.set(xlabel="K", ylabel="Recall@K", ylim=(0, 1.02))
    ax.set_title(title, fontsize=9)
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def first_hit_rank(scores, shape_models, model):
    """1 + the number of non-matching shapes scoring strictly above the best-scoring shape of `model`."""
    is_match = torch.tensor([m == model for m in shape_models])
    return 1 + int((scores[~is_match] > scores[is_match].max()).sum())


def plot_gallery(queries, shapes, shape_models, views_of, path, top=5, thumb=112, exclude=None):
    """queries: [(title, query feature (D,), right model, left)] where left is a PIL image (a photo query) or the
    query's text. shapes / shape_models: the gallery (shape_gallery's output); views_of[model]: its render paths.
    exclude: per query, a model that is no candidate (a composed query's reference), or None."""
    from PIL import Image, ImageDraw

    from multiview_dataset import load_image

    pad, title_h = 6, 16
    row_h = title_h + thumb + pad
    sheet = Image.new("RGB", (2 * pad + (top + 1) * (thumb + pad), pad + len(queries) * row_h), "white")
    draw = ImageDraw.Draw(sheet)
    gallery = F.normalize(shapes.float(), dim=-1)
    for row, (title, feature, model, left) in enumerate(queries):
        scores = gallery @ F.normalize(feature.float(), dim=-1)
        if exclude and exclude[row] is not None:
            scores[shape_models.index(exclude[row])] = -float("inf")
        y = pad + row * row_h
        draw.text((pad, y), f"{title}  (right shape at rank {first_hit_rank(scores, shape_models, model)})",
                  fill="black")
        if isinstance(left, str):  # a caption: its words wrapped into the query's cell
            draw.rectangle([pad, y + title_h, pad + thumb - 1, y + title_h + thumb - 1], outline=GREY)
            draw.multiline_text((pad + 4, y + title_h + 4), "\n".join(textwrap.wrap(left, 17)[:9]), fill="blue")
        else:
            sheet.paste(left.convert("RGB").resize((thumb, thumb)), (pad, y + title_h))
        for col, idx in enumerate(scores.topk(min(top, int(torch.isfinite(scores).sum()))).indices.tolist()):
            views = views_of[shape_models[idx]]
            x = 2 * pad + (col + 1) * (thumb + pad)
            color = GREEN if shape_models[idx] == model else GREY
            draw.rectangle([x, y + title_h, x + thumb - 1, y + title_h + thumb - 1], outline=color, width=3)
            image = load_image(views[len(views) // 2]).resize((thumb - 6, thumb - 6))
            sheet.paste(image, (x + 3, y + title_h + 3))
    sheet.save(path)
