"""Photo -> shape retrieval: photo crops, the P x K sampler, Rank-k / mAP against brute force, staged training.

    .venv/bin/python -m pytest -q tests/test_shape_retrieval.py
"""
import json
import math

import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

import eval_shape_retrieval as esr
import train
from metrics.retrieval import aggregate_views, photo2shape_metrics, retrieval_metrics
from metrics.evaluate import evaluate_photo2shape
from models.clip_wrapper import load_checkpoint, load_clip, load_for_eval
from multiview_dataset import PKSampler, ShapeImageDataset, crop_photo
from tests.conftest import COLORS, make_synthetic_dataset
from utils import read_jsonl, write_jsonl


# ----------------------------------------------------------------------------- a synthetic set with photos
@pytest.fixture(scope="module")
def photo_jsonl(tmp_path_factory):
    """conftest's 18 coloured-shape models (12 train, 3 val, 3 test), each with two 64 px "photos": its shape on a
    grey background, with a mask and a bbox. Photo 1 of every third model is occluded (left out by default)."""
    root = tmp_path_factory.mktemp("photos")
    path = make_synthetic_dataset(root)
    rows = read_jsonl(path)
    for i, row in enumerate(rows):
        color = COLORS[row["captions"][0].split()[1]]  # "a red square"
        row["photos"] = []
        for j in range(2):
            box = (8 + 6 * j, 12, 40 + 6 * j, 44)
            im, mask = Image.new("RGB", (64, 64), (110 + 30 * j, 120, 130)), Image.new("L", (64, 64), 0)
            ImageDraw.Draw(im).ellipse(box, fill=color) if row["category"] == "circle" else ImageDraw.Draw(im).rectangle(box, fill=color)
            ImageDraw.Draw(mask).rectangle(box, fill=255)
            name = f"{row['model_id'].replace('/', '_')}_{j}.png"
            for folder, image in (("img", im), ("mask", mask)):
                (root / folder).mkdir(exist_ok=True)
                image.save(root / folder / name)
            row["photos"].append({"img": f"img/{name}", "mask": f"mask/{name}", "bbox": list(box),
                                  "truncated": False, "occluded": j == 1 and i % 3 == 0, "slightly_occluded": False})
    write_jsonl(path, rows)
    return path


def run(tmp_path, jsonl, *extra, preset=None):
    argv = [f"--data_jsonl={jsonl}", "--clip_model=tiny", "--num_workers=0", "--batch_size=16", "--warmup_steps=1",
            "--lr=5e-4", "--pk_models=4", "--pk_images=3", f"--logs_dir={tmp_path}/logs",
            f"--weights_dir={tmp_path}/weights", *extra]
    return train.main(argv, preset=preset)


# ----------------------------------------------------------------------------- data
def test_crop_photo_squares_the_bbox_with_margin_and_white_padding():
    im = Image.new("RGB", (100, 60), (0, 0, 255))
    im.paste((255, 0, 0), (10, 20, 50, 40))  # the object: 40 x 20 at (10, 20)
    crop = crop_photo(im, [10, 20, 50, 40], margin=0.25)  # side 40 * 1.5 = 60, centred on (30, 30)
    assert crop.size == (60, 60)
    assert crop.getpixel((30, 30)) == (255, 0, 0) and crop.getpixel((2, 30)) == (0, 0, 255)  # the photo around it
    assert crop.getpixel((30, 59)) == (0, 0, 255)  # y 59 of the crop is y 59 of the photo: inside
    mask = Image.new("L", (100, 60), 0)
    mask.paste(255, (10, 20, 50, 40))
    masked = crop_photo(im, [10, 20, 50, 40], margin=0.25, mask=mask)
    assert masked.getpixel((30, 30)) == (255, 0, 0) and masked.getpixel((2, 30)) == (255, 255, 255)
    edge = crop_photo(im, [0, 0, 20, 20], margin=0.5)  # box -10..30: the part beyond the photo is white
    assert edge.size == (40, 40) and edge.getpixel((2, 2)) == (255, 255, 255) and edge.getpixel((12, 12)) == (0, 0, 255)


def test_dataset_leaves_out_hard_photos_unless_asked(photo_jsonl):
    ds = ShapeImageDataset(photo_jsonl, "train", lambda im: torch.zeros(1), views=False)
    rows = [r for r in read_jsonl(photo_jsonl) if r["split"] == "train"]
    hard = sum(p["occluded"] or p["truncated"] for r in rows for p in r["photos"])
    assert hard > 0 and len(ds) == 2 * len(rows) - hard and ds.n_hard_skipped == hard
    assert len(ShapeImageDataset(photo_jsonl, "train", lambda im: 0, views=False, keep_hard=True)) == 2 * len(rows)
    both = ShapeImageDataset(photo_jsonl, "train", lambda im: 0)
    assert sum(both.is_photo) == len(ds) and len(both) - len(ds) == 4 * len(rows)  # 4 renders per model
    x, caption, m = ShapeImageDataset(photo_jsonl, "train", lambda im: im.size)[0]
    assert x == (38, 38) and caption in both.captions[m]  # 32 px box + 10% margin each side


def test_pk_sampler_batches_hold_p_models_of_k_images():
    # models 0..5 with (photos, renders): 6 has a single image and 7 none but one photo: both skipped
    counts = {0: (2, 4), 1: (1, 4), 2: (0, 4), 3: (3, 1), 4: (2, 4), 5: (1, 1), 6: (0, 1), 7: (1, 0)}
    labels, is_photo = [], []
    for m, (p, v) in counts.items():
        labels += [m] * (p + v)
        is_photo += [True] * p + [False] * v
    sampler = PKSampler(labels, is_photo, P=3, K=4, n_photos=2, seed=1)
    assert sampler.n_skipped == 2 and len(sampler) == 2  # 6 usable models / P
    seen = set()
    for batch in sampler:
        assert len(batch) == 3 * 4
        models = [labels[i] for i in batch]
        assert len(set(models)) == 3 and all(models.count(m) == 4 for m in set(models))
        for m in set(models):
            picked = [i for i in batch if labels[i] == m]
            assert all(labels[i] == m for i in picked)
            n_photos = sum(is_photo[i] for i in picked)
            # up to 2 photos when the model has them; a model with too few images repeats some
            assert n_photos >= min(2, counts[m][0]) and (n_photos <= 2 or counts[m][1] + 2 < 4)
        seen |= set(models)
    assert seen == {0, 1, 2, 3, 4, 5}  # one epoch visits every usable model once
    sampler.set_epoch(0)
    first = list(sampler)
    assert first == list(sampler)  # the order is a function of (seed, epoch): a resumed run sees the same batches
    sampler.set_epoch(1)
    assert list(sampler) != first
    shards = [list(PKSampler(labels, is_photo, P=2, K=2, seed=1, rank=r, world_size=2)) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 1
    assert not {labels[i] for i in shards[0][0]} & {labels[i] for i in shards[1][0]}
    with pytest.raises(ValueError, match="fewer than P=7"):
        PKSampler(labels, is_photo, P=7, K=2)


# ----------------------------------------------------------------------------- metrics vs brute force
def _brute_force(q, g, q_ids, g_ids, ks):
    """Sort the whole gallery per query; the first-hit rank and AP straight from the definitions."""
    q, g = F.normalize(q, dim=-1), F.normalize(g, dim=-1)
    ranks, aps = [], []
    for i in range(len(q)):
        order = sorted(range(len(g)), key=lambda j: -float(q[i] @ g[j]))
        hits = [pos + 1 for pos, j in enumerate(order) if g_ids[j] == q_ids[i]]
        ranks.append(hits[0])
        aps.append(sum((k + 1) / pos for k, pos in enumerate(hits)) / len(hits))
    out = {f"R@{k}": sum(r <= k for r in ranks) / len(ranks) for k in ks}
    out["mAP"] = sum(aps) / len(aps)
    return out


@pytest.mark.parametrize("views", ["mean", "per_view"])
def test_rank_k_and_map_match_brute_force(views):
    g = torch.Generator().manual_seed(0)
    n_models, n_views, dim = 12, 3, 8
    proto = torch.randn(n_models, dim, generator=g)
    view_models = torch.arange(n_models).repeat_interleave(n_views)
    view_feats = proto[view_models] + 0.8 * torch.randn(len(view_models), dim, generator=g)
    photo_models = torch.tensor([0, 0, 0, 1, 2, 2, 5, 7, 7, 11])  # model 0: three photos; 3, 4, ...: none
    photo_feats = proto[photo_models] + 1.2 * torch.randn(len(photo_models), dim, generator=g)
    categories = ["chair", "table", "bed", "chair"] * 3  # category of model m: m % 4
    got = photo2shape_metrics(photo_feats, photo_models, view_feats, view_models, categories, views=views)
    if views == "mean":
        gallery = torch.stack([F.normalize(view_feats[view_models == m], dim=-1).mean(0) for m in range(n_models)])
        gallery_models = list(range(n_models))
    else:
        gallery, gallery_models = view_feats, view_models.tolist()
    ref = _brute_force(photo_feats, gallery, photo_models.tolist(), gallery_models, (1, 5, 10))
    cat_ref = _brute_force(photo_feats, gallery, [categories[m] for m in photo_models.tolist()],
                           [categories[m] for m in gallery_models], (1, 5, 10))
    for k in ("R@1", "R@5", "R@10", "mAP"):
        assert math.isclose(got[f"photo2shape_{k}"], ref[k], abs_tol=1e-9), k
        assert math.isclose(got[f"category/photo2shape_{k}"], cat_ref[k], abs_tol=1e-9), k
    assert 0 < got["photo2shape_R@1"] < 1 and 0 < got["category/photo2shape_R@1"] < 1  # neither trivial nor hopeless
    if views == "mean":  # one shape per model: AP = 1 / rank
        shapes, ids = aggregate_views(view_feats, view_models)
        ranks = retrieval_metrics(photo_feats, shapes, photo_models, ids)["ranks"].double()
        assert math.isclose(got["photo2shape_mAP"], (1 / ranks).mean().item(), abs_tol=1e-9)


# ----------------------------------------------------------------------------- training stages
def test_stages_train_and_warm_start_from_the_previous_best(photo_jsonl, tmp_path):
    s2 = run(tmp_path, photo_jsonl, "--task=photo2shape", "--train_mode=image", "--shape_loss=triplet+center+ce",
             "--epochs=2", "--run_name=stage2")
    best2 = torch.load(tmp_path / "weights/stage2/best.pt", weights_only=True)
    base = load_clip("tiny", seed=0)[0].state_dict()
    assert set(best2["model"]) == set(base)  # every tensor: the checkpoint loads without its base weights
    changed = {k.split(".")[0] for k in base if not torch.equal(base[k], best2["model"][k])}
    assert changed == {"visual"}  # image tower only; text tower and temperature frozen
    assert set(best2["shape_loss"]) >= {"losses.center.centers", "losses.ce.weight"}
    assert "photo2shape_R@1" in s2["val"] and "category/photo2shape_mAP" in s2["val"]
    best2_path = tmp_path / "weights/stage2/best.pt"

    # zero-shot with init_from evaluates stage 2's weights. The val split of 3 circles scores 1 on everything, so
    # the check runs on a copy of the data where all 18 models are val: stage 2's numbers, not the base model's
    all_val = photo_jsonl.with_name("all_val.jsonl")  # beside the original: the image paths are relative to it
    write_jsonl(all_val, [dict(r, split="val") for r in read_jsonl(photo_jsonl)])
    zs = run(tmp_path, all_val, "--task=photo2shape", "--train_mode=zero_shot", f"--init_from={best2_path}",
             "--run_name=check")
    want = evaluate_photo2shape(*load_checkpoint(best2_path)[:2], all_val, "val", "cpu")
    untrained = evaluate_photo2shape(*load_for_eval(clip_model="tiny")[:2], all_val, "val", "cpu")
    assert want["photo2shape_mAP"] < 1 and abs(want["photo2shape_mAP"] - untrained["photo2shape_mAP"]) > 1e-3
    for k, v in want.items():
        assert math.isclose(zs["val"][k], v, rel_tol=1e-5, abs_tol=1e-7), k

    # stage 3 with lr 0 changes nothing: its checkpoint holds stage 2's image tower and the base text tower
    run(tmp_path, photo_jsonl, "--task=photo2shape", "--train_mode=full", "--shape_loss=supcon", "--epochs=1",
        "--lr=0.0", f"--init_from={best2_path}", "--run_name=stage3")
    last3 = torch.load(tmp_path / "weights/stage3/last.pt", weights_only=True)
    assert last3["epoch"] == 1 and last3["step"] == 3  # a new run (12 train models / P=4), not a resumed one
    for k, v in best2["model"].items():
        assert torch.equal(last3["model"][k], v), k
    assert not torch.equal(base["visual.proj"], best2["model"]["visual.proj"])  # stage 2 did change it
    assert torch.equal(last3["model"]["text_projection"], base["text_projection"])
    wrapper, _, _ = load_checkpoint(tmp_path / "weights/stage3/last.pt")  # stands on its own
    assert torch.equal(wrapper.model.visual.proj, best2["model"]["visual.proj"])

    torch.save(dict(best2, config=dict(best2["config"], clip_model="RN50")), tmp_path / "other.pt")
    with pytest.raises(ValueError, match="trained with clip_model='RN50'"):
        run(tmp_path, photo_jsonl, "--task=photo2shape", "--train_mode=zero_shot", f"--init_from={tmp_path}/other.pt")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        run(tmp_path, photo_jsonl, "--task=photo2shape", "--train_mode=zero_shot", f"--init_from={tmp_path}/missing.pt")
    with pytest.raises(ValueError, match="triplet, center, ce, supcon"):
        run(tmp_path, photo_jsonl, "--task=photo2shape", "--shape_loss=triplet+arcface")
    with pytest.raises(ValueError, match="train_mode=image or full"):
        run(tmp_path, photo_jsonl, "--task=photo2shape", "--train_mode=linear")
    # the text tower would get no gradient (a DDP error at step 2): refused up front
    with pytest.raises(ValueError, match="never reaches"):
        run(tmp_path, photo_jsonl, "--task=photo2shape", "--train_mode=full", "--shape_loss=triplet+ce")


def test_photo2shape_resume_continues_exactly(photo_jsonl, tmp_path):
    args = ("--task=photo2shape", "--train_mode=full", "--shape_loss=triplet+center+supcon", "--epochs=2",
            "--augment=True", "--run_name=run")
    run(tmp_path / "a", photo_jsonl, *args)
    run(tmp_path / "b", photo_jsonl, *args, "--stop_after_epochs=1")
    run(tmp_path / "b", photo_jsonl, f"--resume={tmp_path}/b/weights/run/last.pt")
    a = torch.load(tmp_path / "a/weights/run/last.pt", weights_only=True)
    b = torch.load(tmp_path / "b/weights/run/last.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 2
    for part in ("model", "shape_loss"):
        for k in a[part]:
            assert torch.allclose(a[part][k], b[part][k], atol=1e-6), (part, k)


def _mean_gallery(view_feats, view_models, n_models):
    return torch.stack([F.normalize(view_feats[view_models == m], dim=-1).mean(0) for m in range(n_models)])


def test_eval_cli_writes_results_and_gallery(photo_jsonl, tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from features import encode_photo_split

    assert esr.main(["--clip_model", "tiny", "--data_jsonl", str(photo_jsonl), "--split", "all", "--out_dir",
                     str(tmp_path), "--num_workers", "0", "--photo_mask", "--photo_margin", "0.2"]) == 0
    result = json.loads((tmp_path / "results.json").read_text())
    rows = read_jsonl(photo_jsonl)
    hard = sum(p["occluded"] for r in rows for p in r["photos"])
    assert result["n_models"] == 18 and result["n_photos"] == 36 - hard and result["n_photos_left_out"] == hard
    assert result["photo_mask"] is True and result["photo_margin"] == 0.2 and result["keep_hard_photos"] is False

    # the numbers are a brute-force ranking of the same model's features of masked photos with that margin
    wrapper, preprocess, _, _ = load_for_eval(clip_model="tiny")
    feats, photos = encode_photo_split(wrapper, preprocess, photo_jsonl, "all", "cpu", photo_margin=0.2,
                                       photo_mask=True)
    plain, _ = encode_photo_split(wrapper, preprocess, photo_jsonl, "all", "cpu", photo_margin=0.2)
    assert not torch.allclose(feats["photo"], plain["photo"])  # --photo_mask changes what is scored
    gallery = _mean_gallery(feats["view"], feats["view_model"], 18)
    ref = _brute_force(feats["photo"], gallery, feats["photo_model"].tolist(), list(range(18)), (1, 5, 10))
    cats = photos.categories
    cat_ref = _brute_force(feats["photo"], gallery, [cats[m] for m in feats["photo_model"].tolist()], cats, (1, 5, 10))
    for k in ("R@1", "R@5", "R@10", "mAP"):
        assert math.isclose(result["metrics"][f"photo2shape_{k}"], ref[k], abs_tol=1e-6), k
        assert math.isclose(result["metrics"][f"category/photo2shape_{k}"], cat_ref[k], abs_tol=1e-6), k
    assert ref["mAP"] < 1 and cat_ref["mAP"] < 1  # not saturated: a wrong ranking would show

    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    assert acc.Scalars("all/photo2shape_R@1")[0].value == pytest.approx(ref["R@1"], abs=1e-6)
    with Image.open(tmp_path / "photo2shape_gallery.png") as im:
        assert im.size[0] > 600 and im.size[1] > 600  # six photos x (photo + five shapes)

    assert esr.main(["--clip_model", "tiny", "--data_jsonl", str(photo_jsonl), "--split", "train", "--out_dir",
                     str(tmp_path / "hard"), "--num_workers", "0", "--keep_hard_photos=True"]) == 0
    assert json.loads((tmp_path / "hard/results.json").read_text())["n_photos"] == 24  # 12 train models x 2
    with pytest.raises(SystemExit):
        esr.main(["--clip_model", "tiny", "--data_jsonl", str(photo_jsonl), "--photo_mask=maybe"])
    assert "--photo_mask: expected True or False, got 'maybe'" in capsys.readouterr().err


def test_photo2shape_ddp_two_cpu_processes(photo_jsonl, tmp_path):
    """torchrun with gloo: the P x K batches are shared out between the ranks, rank 0 alone writes."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29518",
           str(root / "train_shape_stage2.py"), f"--data_jsonl={photo_jsonl}", "--clip_model=tiny", "--num_workers=0",
           "--pk_models=2", "--pk_images=2", "--epochs=1", "--warmup_steps=1", "--lr=5e-4",
           f"--logs_dir={tmp_path}/logs", f"--weights_dir={tmp_path}/weights", "--run_name=ddp"]
    res = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=240,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "world size 2" in res.stdout and res.stdout.count("epoch 1/1") == 1
    ckpt = torch.load(tmp_path / "weights/ddp/last.pt", weights_only=True)
    assert ckpt["step"] == 3  # 12 models / P=2 = 6 batches, 3 per rank


def test_gallery_frames_the_right_shape_green(tmp_path):
    from metrics.plots import GREEN, GREY, first_hit_rank, plot_gallery

    views_of = []
    for m, color in enumerate(("red", "blue", "yellow")):
        Image.new("RGB", (40, 40), color).save(tmp_path / f"{m}.png")
        views_of.append([tmp_path / f"{m}.png"])
    shapes = torch.eye(3)
    query = torch.tensor([0.1, 1.0, 0.5])  # model 1 first, then 2, then 0
    photo = Image.new("RGB", (50, 50), "purple")
    plot_gallery([("a photo of 1", query, 1, photo), ("text of 2", query, 2, "a blue shape seen from the front")],
                 shapes, [0, 1, 2], views_of, tmp_path / "g.png", top=3, thumb=40)
    with Image.open(tmp_path / "g.png") as im:
        pad, title_h, row_h = 6, 16, 16 + 40 + 6
        frame = [(2 * pad + (col + 1) * (40 + pad), pad + title_h) for col in range(3)]  # top-left corner of each shape
        assert [im.getpixel(xy) for xy in frame] == [GREEN, GREY, GREY]  # row 1: the right shape ranked first
        assert [im.getpixel((x, y + row_h)) for x, y in frame] == [GREY, GREEN, GREY]  # row 2: second
        assert im.getpixel((frame[0][0] + 20, frame[0][1] + 20)) == (0, 0, 255)  # the top-1 render: blue
        assert im.getpixel((pad + 20, pad + title_h + 20)) == (128, 0, 128)  # the photo query on the left
    assert first_hit_rank(torch.tensor([0.5, 0.9, 0.5]), [0, 1, 2], 2) == 2  # a tie goes to the right shape
