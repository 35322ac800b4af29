import pytest
import torch

from models.clip_wrapper import load_clip
from multiview_dataset import MultiViewDataset


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


def test_unreadable_image_names_the_file(tmp_path, preprocess):
    from conftest import make_synthetic_dataset

    path = make_synthetic_dataset(tmp_path)
    broken = tmp_path / "renders" / "square" / "M00" / "view_00.png"
    broken.write_bytes(b"not a png")
    ds = MultiViewDataset(path, "train", preprocess, mode="eval")
    with pytest.raises(OSError, match="view_00.png"):
        ds[0]
    with pytest.raises(ValueError, match="split"):
        MultiViewDataset(path, "dev", preprocess)
