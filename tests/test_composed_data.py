"""composed_dataset.py on tiny files in each on-disk layout: the toy set over usable_samples.jsonl, CIRR and
FashionIQ as published; bad files named; training draws that depend only on (seed, epoch, index)."""
import json
import shutil

import pytest
import torch

from composed_dataset import (ComposedDraws, fashioniq_caption, fashioniq_train_captions, load_composed,
                              merge_sets)
from composed_fixtures import make_cirr, make_composed_pairs, make_fashioniq
from conftest import make_synthetic_dataset
from models.clip_wrapper import load_clip
from multiview_dataset import SeededDraws, read_samples


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    jsonl = make_synthetic_dataset(root)
    make_composed_pairs(jsonl)
    return root


@pytest.fixture(scope="module")
def preprocess():
    return load_clip("tiny")[1]


def test_toy_sets_are_the_splits_models_and_pairs(toy):
    rows, _ = read_samples(toy / "usable_samples.jsonl")
    for split in ("train", "val", "test"):
        (s,) = load_composed("toy", toy, split)
        assert s.item_ids == [r["model_id"] for r in rows if r["split"] == split]
        entries = json.loads((toy / f"composed.{split}.json").read_text())
        assert [(p.reference, p.target, p.caption, p.members) for p in s.pairs] == [
            (e["reference"], e["target_hard"], e["caption"], e["img_set"]["members"]) for e in entries]
        assert all(path.is_file() for paths in s.item_images for path in paths) and s.exclude_reference
    # the jsonl itself names the root too
    by_jsonl = load_composed("toy", toy / "usable_samples.jsonl", "val")[0]
    assert by_jsonl.item_ids == load_composed("toy", toy, "val")[0].item_ids


def test_toy_errors_name_the_file_and_the_pair(toy, tmp_path):
    root = tmp_path / "t"
    shutil.copytree(toy, root)
    entries = json.loads((root / "composed.val.json").read_text())
    train_model = json.loads((root / "composed.train.json").read_text())[0]["reference"]
    bad = [dict(entries[0], target_hard=train_model)]
    (root / "composed.val.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=r"composed.val.json: pair 0: target .* is in split 'train': a group never"):
        load_composed("toy", root, "val")
    (root / "composed.val.json").write_text(json.dumps([{k: v for k, v in entries[0].items() if k != "caption"}]))
    with pytest.raises(ValueError, match=r"composed.val.json: pair 0: 'caption' missing"):
        load_composed("toy", root, "val")
    (root / "composed.val.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"composed.val.json: not found"):
        load_composed("toy", root, "val")
    with pytest.raises(ValueError, match="unknown split 'test1'"):
        load_composed("toy", root, "test1")


def test_draws_depend_only_on_seed_epoch_and_index(toy, preprocess):
    (train,) = load_composed("toy", toy, "train")
    ds = SeededDraws(ComposedDraws(train, preprocess, draws_per_pair=2), seed=3)
    assert len(ds) == 2 * len(train.pairs)
    a, b = ds[(1, 5)], ds[(1, 5)]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2:] == b[2:]
    pair = train.pairs[5]
    assert a[3] == train.index[pair.target] and a[2] in pair.train_captions
    views = [ds[(e, 5)][0] for e in range(8)]  # a random view of the reference each draw: not always the same
    assert any(not torch.equal(views[0], v) for v in views[1:])


def test_cirr_layout(tmp_path):
    root = make_cirr(tmp_path / "cirr_dataset")
    (val,) = load_composed("cirr", root, "val")
    names = json.loads((root / "cirr/image_splits/split.rc2.val.json").read_text())
    assert val.item_ids == list(names) and [p[0] for p in val.item_images] == [root / r for r in names.values()]
    assert val.pairs[0].target == val.item_ids[1] and val.pairs[0].members == val.item_ids and val.has_targets
    (test,) = load_composed("cirr", root, "test1")
    assert not test.has_targets and test.pairs[2].pairid == 102
    with pytest.raises(ValueError, match="pairs without targets cannot train"):
        ComposedDraws(test, None)
    (root / "dev/val-3-0-img3.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"split.rc2.val.json: 1 image files missing, e.g. .*val-3-0-img3.png"):
        load_composed("cirr", root, "val")


def test_fashioniq_layout_and_clip4cirs_captions(tmp_path):
    root = make_fashioniq(tmp_path / "fashionIQ_dataset")
    sets = load_composed("fashioniq", root, "val")
    assert [s.name for s in sets] == ["dress", "shirt", "toptee"] and not any(s.exclude_reference for s in sets)
    triplets = json.loads((root / "captions/cap.shirt.val.json").read_text())
    p = sets[1].pairs[0]
    assert (p.reference, p.target) == (triplets[0]["candidate"], triplets[0]["target"])
    c1, c2 = triplets[0]["captions"]
    assert p.caption == fashioniq_caption(c1, c2) == f"{c1.strip('.?, ').capitalize()} and {c2.strip('.?, ')}"
    assert p.train_captions == fashioniq_train_captions(c1, c2) and len(set(p.train_captions)) == 4
    assert sets[0].item_images[0] == [root / "images/dressval0.png"]
    # the train split takes in the image a triplet names that its split file leaves out
    train = merge_sets(load_composed("fashioniq", root, "train"))
    assert "dresstrain3" in train.item_ids and len(train.pairs) == 12 and len(train.item_ids) == 12
    (root / "images/shirtval2.png").unlink()
    with pytest.raises(FileNotFoundError, match="no image shirtval2"):
        load_composed("fashioniq", root, "val")


def test_fashioniq_caption_joining():
    assert fashioniq_caption("is red.", "has long sleeves ") == "Is red and has long sleeves"
    assert fashioniq_train_captions("is red.", "Has Long sleeves") == [
        "Is red and Has Long sleeves", "Has long sleeves and is red", "Is red", "Has long sleeves"]
