"""Composed retrieval end to end on tiny data: stage 1 and stage 2 through fit(), each resumed inside an epoch to
the uninterrupted run's weights; eval_composed's rows, its image_only row against a brute-force ranking, CIRR's
server files and FashionIQ's per-garment rows."""
import json

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import eval_composed
import train_composed
from composed_fixtures import make_cirr, make_composed_pairs, make_fashioniq
from conftest import make_synthetic_dataset
from models.clip_wrapper import load_clip

KEYS = {"R@1", "R@5", "R@10", "R@50", "Rsubset@1", "Rsubset@2", "Rsubset@3", "mean_R@5_Rsubset@1", "mean_R@10_R@50"}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models on shared cores: one thread is steadier than two fighting other jobs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    make_composed_pairs(make_synthetic_dataset(root))
    return root


def train(root, data_root, *extra):
    argv = [f"--data_root={data_root}", "--clip_model=tiny", "--num_workers=0", "--batch_size=4", "--lr=5e-4",
            "--warmup_steps=2", "--amp=False", f"--logs_dir={root}/logs", f"--weights_dir={root}/weights",
            f"--cache_dir={root}/cache", "--run_name=run", *extra]
    return train_composed.main(argv)


def weights(path):
    return torch.load(path, weights_only=True)["model"]


def resumed_matches_uninterrupted(tmp_path, data_root, *args):
    """12 pairs, batches of 4: 3 batches an epoch. B stops after step 4 (inside epoch 2) and resumes."""
    a = train(tmp_path / "a", data_root, "--epochs=2", *args)
    b = train(tmp_path / "b", data_root, "--epochs=2", "--max_steps=4", *args)
    last = tmp_path / "b/weights/run/last.pt"
    assert torch.load(last, weights_only=True)["batches_done"] == 1
    train(tmp_path / "b", data_root, f"--resume={last}", "--max_steps=0")
    wa, wb = weights(tmp_path / "a/weights/run/last.pt"), weights(last)
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-6), k
    assert KEYS <= set(a["val"]) and set(b["val"]) == set(a["val"])
    return a


@pytest.fixture(scope="module")
def stage1(toy, tmp_path_factory):
    root = tmp_path_factory.mktemp("stage1")
    out = resumed_matches_uninterrupted(root, toy)
    results = json.loads((root / "a/logs/run/results.json").read_text())
    assert results["best_mean_R@5_Rsubset@1"] >= results["val"]["mean_R@5_Rsubset@1"]  # the selected epoch's
    return root / "a/weights/run/best.pt", out


def test_stage1_trains_and_resumes_exactly(stage1):
    best, out = stage1
    ckpt = torch.load(best, weights_only=True)
    assert ckpt["kind"] == "composed" and ckpt["config"]["stage"] == 1 and "visual.conv1.weight" in ckpt["model"]


@pytest.mark.parametrize("combiner", ["combiner", "moe_combiner"])
def test_stage2_trains_on_cached_features_and_resumes_exactly(toy, stage1, tmp_path, combiner, monkeypatch):
    resumed_matches_uninterrupted(tmp_path, toy, "--stage=2", f"--combiner={combiner}", f"--init_from={stage1[0]}")
    ckpt = torch.load(tmp_path / "a/weights/run/best.pt", weights_only=True)
    assert ckpt["combiner_args"]["name"] == combiner and ckpt["config"]["train_mode"] == "zero_shot"
    assert sorted(p.name.split("-")[2] for p in (tmp_path / "a/cache").iterdir()) == ["train", "val"]
    import tasks.composed  # a second run reads the cache: it never encodes

    monkeypatch.setattr(tasks.composed, "encode_composed", lambda *a, **k: pytest.fail("encoded again"))
    train(tmp_path / "a", toy, "--stage=2", f"--combiner={combiner}", f"--init_from={stage1[0]}", "--epochs=1",
          "--run_name=again")


def brute_image_only(root, split, seed):
    """R@k and Rsubset@k of image_only from the pixels: the zero-shot tiny CLIP, the mean of each model's unit
    view embeddings, each query's candidates sorted by cosine without its reference (no ties in float features)."""
    model, preprocess = load_clip("tiny", seed=seed)
    rows = [json.loads(line) for line in (root / "usable_samples.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["split"] == split]
    with torch.no_grad():
        emb = {r["model_id"]: F.normalize(F.normalize(model.encode_image(torch.stack(
            [preprocess(Image.open(root / v).convert("RGB")) for v in r["views"]])), dim=-1).mean(0), dim=0)
            for r in rows}
    ranks, subset_ranks = [], []
    for p in json.loads((root / f"composed.{split}.json").read_text()):
        ref, tgt = p["reference"], p["target_hard"]
        order = sorted((m for m in emb if m != ref), key=lambda m: -float(emb[ref] @ emb[m]))
        ranks.append(order.index(tgt) + 1)
        subset_ranks.append([m for m in order if m in p["img_set"]["members"]].index(tgt) + 1)
    out = {f"R@{k}": sum(r <= k for r in ranks) / len(ranks) for k in (1, 5, 10, 50)}
    out.update({f"Rsubset@{k}": sum(r <= k for r in subset_ranks) / len(ranks) for k in (1, 2, 3)})
    return out


def test_eval_composed_every_row_and_image_only_by_brute_force(toy, stage1, tmp_path):
    combiners = {}
    for name in ("combiner", "moe_combiner"):
        train(tmp_path / name, toy, "--stage=2", f"--combiner={name}", f"--init_from={stage1[0]}", "--epochs=1")
        combiners[name] = str(tmp_path / name / "weights/run/best.pt")
    out = tmp_path / "eval"
    assert eval_composed.main(["--data_root", str(toy), "--split", "train", "--stage1", str(stage1[0]), "--combiner",
                               combiners["combiner"], "--moe_combiner", combiners["moe_combiner"], "--out_dir",
                               str(out), "--num_workers", "0", "--device", "cpu"]) == 0
    result = json.loads((out / "results.json").read_text())
    assert list(result["rows"]) == list(eval_composed.ROWS) and result["n_queries"] == 12 and result["n_gallery"] == 12
    for row, metrics in list(result["rows"].items()) + [("chance", result["chance"])]:
        assert set(metrics) == KEYS, row
    seed = torch.load(stage1[0], weights_only=True)["config"]["seed"]
    want = brute_image_only(toy, "train", seed)
    for k, v in want.items():
        assert result["rows"]["image_only"][k] == pytest.approx(v, abs=1e-9), k
    assert result["chance"]["R@1"] == pytest.approx(1 / 11)  # 11 candidates: every model but the reference
    assert (out / "composed_gallery.png").is_file() and list(out.glob("events.out.tfevents.*"))
    with pytest.raises(ValueError, match="takes a stage-2 run of --combiner=combiner"):
        eval_composed.composed_report(toy, combiner=combiners["moe_combiner"], out_dir=tmp_path / "x")


def test_cirr_val_rows_and_test1_server_files(tmp_path):
    root = make_cirr(tmp_path / "cirr_dataset")
    args = ["--dataset", "cirr", "--data_root", str(root), "--clip_model", "tiny", "--num_workers", "0"]
    val = eval_composed.composed_report(root, "cirr", "val", "tiny", out_dir=tmp_path / "val")
    assert set(val["rows"]) == {"image_only", "text_only", "sum_zero_shot"} and KEYS <= set(val["rows"]["text_only"])
    assert eval_composed.main(args + ["--split", "test1", "--out_dir", str(tmp_path / "test1")]) == 0
    sub = json.loads((tmp_path / "test1/recall_submission_image_only.json").read_text())
    subset = json.loads((tmp_path / "test1/recall_subset_submission_image_only.json").read_text())
    assert (sub["version"], sub["metric"], subset["metric"]) == ("rc2", "recall", "recall_subset")
    pairs = json.loads((root / "cirr/captions/cap.rc2.test1.json").read_text())
    names = json.loads((root / "cirr/image_splits/split.rc2.test1.json").read_text())
    model, preprocess = load_clip("tiny", seed=0)
    with torch.no_grad():
        emb = F.normalize(model.encode_image(torch.stack([preprocess(Image.open(root / rel).convert("RGB"))
                                                          for rel in names.values()])), dim=-1)
    ids = list(names)
    for p in pairs:
        r = ids.index(p["reference"])
        order = [ids[j] for j in (emb @ emb[r]).argsort(descending=True).tolist() if j != r]
        assert sub[str(p["pairid"])] == order[:50]
        assert subset[str(p["pairid"])] == [m for m in order if m in p["img_set"]["members"]][:3]


def test_fashioniq_stage2_and_per_garment_rows(tmp_path):
    root = make_fashioniq(tmp_path / "fashionIQ_dataset")
    out = train(tmp_path, root, "--dataset=fashioniq", "--stage=2", "--epochs=1")
    assert {"dress/R@10", "toptee/R@50", "mean_R@10_R@50"} <= set(out["val"]) and "Rsubset@1" not in out["val"]
    result = eval_composed.composed_report(root, "fashioniq", "val", combiner=str(tmp_path / "weights/run/best.pt"),
                                           out_dir=tmp_path / "eval")
    m = result["rows"]["combiner"]
    assert m["R@10"] == pytest.approx(sum(m[f"{g}/R@10"] for g in ("dress", "shirt", "toptee")) / 3)
    assert result["chance"]["dress/R@1"] == pytest.approx(1 / 4)  # FashionIQ keeps the reference a candidate


def test_a_batch_larger_than_the_training_pairs_names_the_data_and_the_flag(toy, stage1, tmp_path):
    """Stage 2 has no data_jsonl: the error names its data_root and what to change."""
    with pytest.raises(ValueError, match=rf"{toy}: too few training examples for one batch of 64 .* --batch_size"):
        train(tmp_path, toy, "--stage=2", f"--init_from={stage1[0]}", "--batch_size=64", "--epochs=1")


def test_group_loss_draws_each_pairs_other_group_members(toy, stage1, tmp_path):
    """group_weight > 0: each batch brings, per pair, a view of every member of its group but the target (the
    reference included), padded; a run logs the group term as train/group beside train/contrastive."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from composed_dataset import load_composed
    from tasks.composed import ComposedStage2
    from train import configure

    argv = [f"--data_root={toy}", "--clip_model=tiny", "--num_workers=0", "--stage=2", f"--init_from={stage1[0]}",
            "--group_weight=1", "--batch_size=4", f"--cache_dir={tmp_path}/cache"]
    cfg, _ = configure(train_composed.DEFAULTS, argv, train_composed.STAGE_PRESETS[2], kind="composed")
    task = ComposedStage2(cfg)
    task.setup("cpu", 0, 1)
    pairs = json.loads((toy / "composed.train.json").read_text())
    item_ids = load_composed("toy", toy, "train")[0].item_ids  # what view_item indexes
    assert task.group_items.shape[1] == max(len(p["img_set"]["members"]) for p in pairs) - 1
    group_of = {p["target_hard"]: set(p["img_set"]["members"]) for p in pairs}  # a target has one group
    f = task.train_feats
    item_of_view = {tuple(v.tolist()): item_ids[int(i)] for v, i in zip(f["views"], f["view_item"])}
    n_checked = 0
    for ref, _, tgt, _, group, mask in task.batches(0):
        for b in range(len(ref)):
            target = item_of_view[tuple(tgt[b].tolist())]
            drawn = [item_of_view[tuple(g.tolist())] for g in group[b][mask[b]]]
            assert sorted(drawn) == sorted(group_of[target] - {target})  # each other member once
            assert item_of_view[tuple(ref[b].tolist())] in drawn
            n_checked += 1
    assert n_checked >= len(pairs) - 4
    train(tmp_path, toy, "--stage=2", f"--init_from={stage1[0]}", "--group_weight=1", "--epochs=1", "--log_every=1")
    events = EventAccumulator(str(tmp_path / "logs/run"))
    events.Reload()
    assert {"train/group", "train/contrastive", "train/loss"} <= set(events.Tags()["scalars"])
