"""The real ViT-B/32 size (random weights in OpenAI's state-dict form): one step of full fine-tuning writes a
best.pt under 800 MB that evaluates with its base weights file gone. Slow on a CPU (~1-2 min): `make test-slow`."""
import json

import clip
import pytest
import torch

import eval_recall
from conftest import run_train
from models.clip_weights import openai_args

pytestmark = pytest.mark.slow


def test_vit_b32_one_step_checkpoint_stands_alone(tmp_path, synthetic_jsonl):
    weights = tmp_path / "ViT-B-32.pt"
    torch.manual_seed(0)
    torch.save(clip.model.CLIP(**openai_args("ViT-B/32")).state_dict(), weights)
    out = run_train(tmp_path, synthetic_jsonl, "--clip_model=ViT-B/32", f"--clip_weights={weights}", "--epochs=1",
                    "--max_steps=1", "--batch_size=2", "--draws_per_model=1", "--lr=1e-5", "--amp=False",
                    batch_size=2)
    best, last = tmp_path / "weights/run/best.pt", tmp_path / "weights/run/last.pt"
    sizes = {p.name: p.stat().st_size / 2**20 for p in (best, last)}
    print(f"checkpoint sizes (MiB): {sizes}")
    assert sizes["best.pt"] < 800 < sizes["last.pt"]  # best.pt: the tensors only; last.pt: + AdamW moments
    results = json.loads((tmp_path / "logs/run/results.json").read_text())
    assert results["clip_fingerprint"]["file"] == "ViT-B-32.pt" and "ViT-B-32.pt" in results["model"]
    weights.unlink()  # the checkpoint holds every tensor: no base file needed
    assert eval_recall.main(["--checkpoint", str(best), "--split", "test", "--data_jsonl", str(synthetic_jsonl),
                             "--out_dir", str(tmp_path / "eval"), "--num_workers", "0"]) == 0
    report = json.loads((tmp_path / "eval/results.json").read_text())
    assert 0 <= report["metrics"]["text2image_R@1"] <= 1 and out["val"]
    assert "ViT-B-32.pt, sha256 of its first MB" in report["model"]  # the evaluation names the weights too
