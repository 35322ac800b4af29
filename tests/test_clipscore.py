"""evaluate_caption.py's two CLIP scores end to end: cosine_same_model (the evaluated model's own mean cosine) and,
with --clipscore_model, Hessel et al.'s CLIPScore under another CLIP, here the tiny model standing in, recomputed
by hand from the images and captions.

    .venv/bin/python -m pytest -q tests/test_clipscore.py
"""
import json

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import evaluate_caption
import models.clip_wrapper
from models.clip_wrapper import load_clip, tokenize
from utils import read_jsonl


def run_cli(jsonl, out_dir, *extra):
    assert evaluate_caption.main(["--clip_model", "tiny", "--data_jsonl", str(jsonl), "--split", "test",
                                  "--no_meteor", "--no_baselines", "--num_workers", "0", "--out_dir", str(out_dir),
                                  *extra]) == 0
    return json.loads((out_dir / "captions_test.json").read_text())


@torch.no_grad()
def hand_cosines(model, preprocess, jsonl, captions_of):
    """Per test model, the cosine of its shape (the mean of its unit view embeddings) and its caption prefixed
    "A photo depicts", encoded one by one."""
    root, cosines = jsonl.parent, []
    for row in (r for r in read_jsonl(jsonl) if r["split"] == "test"):
        views = torch.stack([preprocess(Image.open(root / v).convert("RGB")) for v in row["views"]])
        shape = F.normalize(F.normalize(model.encode_image(views), dim=-1).mean(0), dim=0)
        text = F.normalize(model.encode_text(tokenize([f"A photo depicts {captions_of[row['model_id']]}"]))[0], dim=0)
        cosines.append(float(shape @ text))
    return cosines


def check_clipscores(report, model, preprocess, jsonl):
    """Every captioner's CLIPScore is 2.5 * max(cos, 0) averaged over the hand cosines; returns those cosines."""
    assert len(report["examples"]) == report["n_models"] == 3  # every test model, so the captions are all here
    seen = []
    for name, scores in report["captioners"].items():
        cosines = hand_cosines(model, preprocess, jsonl, {ex["model_id"]: ex[name] for ex in report["examples"]})
        assert scores["CLIPScore"] == pytest.approx(sum(2.5 * max(c, 0.0) for c in cosines) / 3, abs=1e-5), name
        seen += cosines
    return seen


def test_cosine_same_model_always_and_clipscore_only_when_asked(synthetic_jsonl, tmp_path, capsys):
    plain = run_cli(synthetic_jsonl, tmp_path / "plain")
    for scores in plain["captioners"].values():
        assert "cosine_same_model" in scores and "CLIPScore" not in scores
    assert "clipscore_model" not in plain

    report = run_cli(synthetic_jsonl, tmp_path / "tiny", "--clipscore_model", "tiny")
    assert "stand-in" in report["clipscore_model"] and "random init" in report["clipscore_model"]
    assert "CLIPScore under tiny (random init" in capsys.readouterr().out
    for name, scores in report["captioners"].items():
        assert scores["cosine_same_model"] == plain["captioners"][name]["cosine_same_model"]
    # the untrained tiny CLIP (seed 0) puts every caption below 0: max(cos, 0) clips them all
    cosines = check_clipscores(report, *load_clip("tiny"), synthetic_jsonl)
    assert max(cosines) < 0 and all(s["CLIPScore"] == 0 for s in report["captioners"].values())


def test_clipscore_model_from_a_weights_file(synthetic_jsonl, tmp_path):
    """Another random tiny CLIP (seed 2) saved as a plain state dict: its cosines have both signs."""
    from models.clip_weights import load_weights

    torch.save(load_clip("tiny", seed=2)[0].state_dict(), tmp_path / "other.pt")
    report = run_cli(synthetic_jsonl, tmp_path / "out", "--clipscore_model", str(tmp_path / "other.pt"))
    assert report["clipscore_model"].startswith("CLIP of no OpenAI architecture (other.pt, sha256")
    model, preprocess, _ = load_weights(tmp_path / "other.pt")
    cosines = check_clipscores(report, model, preprocess, synthetic_jsonl)
    assert min(cosines) < 0 < max(cosines)


def test_clipscore_model_never_downloads(synthetic_jsonl, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(models.clip_wrapper, "CLIP_CACHE", str(tmp_path / "empty_cache"))

    def no_download(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(models.clip_wrapper.clip.clip, "_download", no_download)
    with pytest.raises(SystemExit):
        run_cli(synthetic_jsonl, tmp_path / "out", "--clipscore_model", "ViT-B/32")
    err = capsys.readouterr().err
    assert "nothing is downloaded" in err and str(tmp_path / "empty_cache") in err
    with pytest.raises(SystemExit):
        run_cli(synthetic_jsonl, tmp_path / "out", "--clipscore_model", str(tmp_path / "missing.pt"))
    assert "neither a weights file nor a CLIP name" in capsys.readouterr().err
