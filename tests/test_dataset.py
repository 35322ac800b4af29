import json

import pytest
import torch
from conftest import make_synthetic_dataset

from models.clip_wrapper import load_clip
from multiview_dataset import MultiViewDataset, ShapeImageDataset


@pytest.fixture(scope="module")
def preprocess():
    return load_clip("tiny")[1]


def test_train_mode_draws_views_and_captions_of_the_same_model(synthetic_jsonl, preprocess):
    ds = MultiViewDataset(synthetic_jsonl, "train", preprocess, draws_per_model=3)
    assert len(ds) == 12 * 3
    torch.manual_seed(0)
    seen = set()
    for i in range(len(ds)):
        image, caption, m = ds[i]
        assert image.shape == (3, 64, 64) and image.dtype == torch.float32
        assert m == i % 12 and caption in ds.captions[m]
        seen.add(caption)
    assert len(seen) > 12  # both captions of some models were drawn


def test_eval_mode_yields_every_view_and_caption(synthetic_jsonl, preprocess):
    ds = MultiViewDataset(synthetic_jsonl, "test", preprocess, mode="eval")
    assert len(ds) == 3 * 4 and len(ds.texts) == 3 * 2
    models = [ds[i][1] for i in range(len(ds))]
    assert models == [0] * 4 + [1] * 4 + [2] * 4
    assert {m for _, m in ds.texts} == {0, 1, 2}
    splits = {s: set(MultiViewDataset(synthetic_jsonl, s, preprocess).model_ids) for s in ("train", "val", "test")}
    assert not (splits["train"] & splits["test"]) and not (splits["val"] & splits["test"])


def test_unreadable_view_is_replaced_by_another_of_its_model_and_counted(tmp_path, preprocess, capsys):
    path = make_synthetic_dataset(tmp_path)
    broken = tmp_path / "renders" / "square" / "M00" / "view_00.png"
    broken.write_bytes(broken.read_bytes()[:30])  # truncated PNG
    ds = MultiViewDataset(path, "train", preprocess, mode="eval")
    image, m = ds[0]
    assert m == 0 and image.shape == (3, 64, 64) and ds.n_unreadable == 1
    assert "view_00.png" in capsys.readouterr().err
    assert torch.equal(image, ds[1][0])  # view 01 of the same model stands in
    train = MultiViewDataset(path, "train", preprocess, draws_per_model=8)
    torch.manual_seed(0)
    assert all(train[0][2] == 0 for _ in range(40)) and 0 < train.n_unreadable < 40
    with pytest.raises(ValueError, match="split"):
        MultiViewDataset(path, "dev", preprocess)


def test_unreadable_count_adds_up_over_dataloader_workers(tmp_path, preprocess):
    path = make_synthetic_dataset(tmp_path)
    for v in range(4):  # every view of M00 and M02 broken
        for mid in ("square/M00", "triangle/M02"):
            (tmp_path / "renders" / mid / f"view_{v:02d}.png").write_bytes(b"")
    ds = MultiViewDataset(path, "train", preprocess, draws_per_model=2)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2)
    labels = torch.cat([m for _, _, m in loader])
    assert len(labels) == len(ds) and 0 not in labels  # model 0 gives way to the next one
    assert ds.n_unreadable >= 4 * 4  # each draw of M00 or M02 tries its four views (counted in the workers)
    with pytest.raises(OSError, match="square/M00: none of its 4 views"):
        MultiViewDataset(path, "train", preprocess, mode="eval")[0]


def test_missing_photo_is_replaced_by_another_image_of_its_model(tmp_path, preprocess):
    path = make_synthetic_dataset(tmp_path)
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    for r in rows:
        r["photos"] = [{"img": r["views"][0], "mask": None, "bbox": [2, 2, 40, 40]},
                       {"img": "img/missing.jpg", "mask": None, "bbox": [2, 2, 40, 40]}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ds = ShapeImageDataset(path, "train", preprocess)
    missing = [i for i, (_, photo, src) in enumerate(ds.items) if photo and src["img"].name == "missing.jpg"]
    for i in missing:
        _, caption, m = ds[i]
        assert m == ds.labels[i] and caption in ds.captions[m]
    assert ds.n_unreadable == len(missing) == 12
    photos_only = ShapeImageDataset(path, "test", preprocess, views=False, mode="eval")
    assert [photos_only[i][1] for i in range(len(photos_only))] == [0, 0, 1, 1, 2, 2]
    assert photos_only.n_unreadable == 3


def test_bad_jsonl_lines_are_named_and_left_out(tmp_path, preprocess, capsys):
    path = make_synthetic_dataset(tmp_path)
    lines = path.read_text().splitlines()
    rows = [json.loads(x) for x in lines]
    no_split = {k: v for k, v in rows[0].items() if k != "split"}
    string_captions = dict(rows[2], captions="a red square")
    bad = [json.dumps(no_split), "[1, 2]", json.dumps(string_captions), lines[3], "{broken", lines[4],
           json.dumps(dict(rows[5], views=[])), json.dumps(dict(rows[6], photos=[{"mask": "m.png"}]))]
    path.write_text("\n".join(bad + lines[7:]) + "\n")
    ds = MultiViewDataset(path, "all", preprocess)
    err = capsys.readouterr().err
    assert f"{path}:1: split: None" in err and f"{path}:2: not a JSON object but list" in err
    assert f"{path}:3: captions: expected a non-empty list" in err
    assert f"{path}:5: not valid JSON" in err
    assert ds.n_bad_lines == 6 and len(ds.model_ids) == 2 + 11  # the two good lines among them, and the rest
    dup = tmp_path / "dup.jsonl"
    dup.write_text("\n".join(lines + [lines[0]]) + "\n")
    ds = MultiViewDataset(dup, "all", preprocess)
    assert ds.n_bad_lines == 1 and len(ds.model_ids) == 18
    assert f"{dup}:19: model_id: square/M00 is already on line 1" in capsys.readouterr().err
