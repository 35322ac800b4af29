"""The generative captioner: overfitting, decoding, CLIP guidance, training/resume and the two CLIs.

    .venv/bin/python -m pytest -q tests/test_captioner.py
"""
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import caption
import evaluate_caption
import train_captioner
from models.caption_decoder import (EOS, PAD, CaptionDecoder, _banned, build_vocab, decode_tokens, encode_captions,
                                    load_captioner, soft_text_embedding)
from models.clip_wrapper import CLIPWrapper, load_clip, tokenize

CAPTIONS = ["a tall white bookcase with five shelves", "a 3D model of a red chair",
            "a low brown sofa with two arms, three cushions and four legs", "a desk", "a beige single bed"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models are tiny: on 2 shared cores a second intra-op thread makes each step ~20x slower (it waits
    on the other thread), so this module runs on one and gives the setting back afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_decoder(clip_ids, detok=(), **kw):
    args = dict(prefix_len=2, width=64, layers=2, heads=4, max_len=20, dropout=0.0)
    return CaptionDecoder(32, clip_ids, detok, **{**args, **kw})


def fit(mapper="mlp", x_shape=(len(CAPTIONS), 32), steps=120):
    """A decoder trained on five (random embedding, caption) pairs until it has learned them."""
    torch.manual_seed(0)
    clip_ids, detok = build_vocab(CAPTIONS)
    dec = tiny_decoder(clip_ids, detok, mapper=mapper)
    x = torch.randn(*x_shape)
    tokens = encode_captions(CAPTIONS, clip_ids, 20)
    opt = torch.optim.AdamW(dec.parameters(), lr=5e-3)
    for _ in range(steps):
        logits = dec(x, tokens[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten(), ignore_index=PAD)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return dec, x


@pytest.fixture(scope="module")
def overfit():
    return fit()


def test_vocab_round_trip():
    clip_ids, detok = build_vocab(CAPTIONS)
    assert ["3 d", "3d"] in detok  # CLIP's BPE splits digits off: the word comes back whole
    tokens = encode_captions(CAPTIONS, clip_ids, 20)
    assert (tokens[:, 0] == 1).all() and ((tokens == EOS).sum(1) == 1).all()
    assert [decode_tokens(t[1:], clip_ids, detok) for t in tokens] == [c.lower() for c in CAPTIONS]
    assert encode_captions(["a purple desk"], clip_ids, 20)[0, 2].item() == 3  # unseen word -> UNK


def test_decoder_overfits_to_exact_greedy_reproduction(overfit):
    dec, x = overfit
    assert dec.generate(x, decode="greedy") == [c.lower() for c in CAPTIONS]
    assert dec.generate(x, decode="beam", beam_size=4) == [c.lower() for c in CAPTIONS]


@pytest.mark.parametrize("trained", [True, False])
def test_beam_width_one_equals_greedy(overfit, trained):
    dec, x = overfit
    if not trained:
        torch.manual_seed(1)
        dec = tiny_decoder(dec.clip_ids)
    x = torch.cat([x, torch.randn(6, 32)])  # off the training points too: longer, less certain captions
    for ngram in (0, 2):
        greedy = dec.generate_tokens(x, decode="greedy", no_repeat_ngram=ngram)
        assert dec.generate_tokens(x, decode="beam", beam_size=1, no_repeat_ngram=ngram) == greedy


@pytest.mark.parametrize("mapper", ["mlp", "transformer"])
def test_batch_generation_variable_lengths(mapper):
    # the transformer mapper reads a short sequence of view embeddings (B, V, D)
    dec, x = fit(mapper, (len(CAPTIONS), 32) if mapper == "mlp" else (len(CAPTIONS), 3, 32), steps=60)
    x = torch.cat([x, torch.randn(3, *x.shape[1:])])
    for method in ("greedy", "beam", "nucleus"):
        # max_len 8 cuts the long captions: rows end at EOS or at the limit, at different steps
        out = dec.generate_tokens(x, decode=method, beam_size=3, no_repeat_ngram=2, max_len=8)
        assert len(out) == len(x)
        for seq in out:
            assert 1 <= len(seq) <= 8 and (seq[-1] == EOS or len(seq) == 8) and EOS not in seq[:-1]
            assert len(set(zip(seq, seq[1:]))) == max(len(seq) - 1, 0)  # no bigram twice
        assert len({len(s) for s in out}) > 1, "the test needs captions of different lengths"
        assert len(dec.generate(x, decode=method)) == len(x)
    # a row's caption does not depend on the rest of the batch (padding, rows that finished early)
    batch = dec.generate_tokens(x, decode="greedy", max_len=8)
    assert batch == [dec.generate_tokens(x[i:i + 1], decode="greedy", max_len=8)[0] for i in range(len(x))]


def test_ngram_blocking_against_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(200):
        seq, n = rng.integers(0, 4, rng.integers(0, 9)).tolist(), int(rng.integers(1, 4))
        brute = {seq[i + n - 1] for i in range(len(seq) - n + 1)
                 if seq[i:i + n - 1] == seq[len(seq) - n + 1:]} if len(seq) >= n else set()
        assert set(_banned(seq, n)) == brute


def test_soft_text_embedding_equals_encode_text_on_one_hot():
    model, _ = load_clip("tiny", "cpu", seed=0)
    wrapper = CLIPWrapper(model, "zero_shot").eval()
    clip_ids, _ = build_vocab(CAPTIONS)
    dec = tiny_decoder(clip_ids)
    tokens = encode_captions(CAPTIONS, clip_ids, 20)[:, 1:]  # the targets: tokens then EOS
    lengths = (tokens != PAD).sum(1)
    probs = F.one_hot(tokens[:, : lengths.max()], len(dec.clip_token_ids)).float().requires_grad_()
    soft = soft_text_embedding(model, probs, dec.clip_token_ids, lengths - 1)
    with torch.no_grad():
        hard = wrapper.encode_text(tokenize(CAPTIONS))
    assert torch.allclose(soft, hard, atol=1e-4)
    soft.sum().backward()
    assert probs.grad.abs().sum() > 0  # differentiable in the token distributions


def test_soft_text_embedding_follows_the_model_device():
    """CLIP's attention masks stay on the CPU when the model moves (they are not buffers): on a GPU after a
    feature-cache hit nothing else moved them. The meta device stands in for the GPU."""
    import clip

    from models.clip_wrapper import TINY_ARGS

    model = clip.model.CLIP(**TINY_ARGS).to("meta")
    probs = torch.rand(2, 5, 10, device="meta")
    out = soft_text_embedding(model, probs, torch.arange(10, device="meta"), torch.tensor([3, 4], device="meta"))
    assert out.shape == (2, TINY_ARGS["embed_dim"]) and out.device.type == "meta"


# ----------------------------------------------------------------------------- training and CLIs
@pytest.fixture(scope="module")
def clip_ckpt(tmp_path_factory, synthetic_jsonl):
    """A train.py-style checkpoint of the tiny CLIP as initialised (zero-shot): enough to embed the shapes."""
    path = tmp_path_factory.mktemp("clip") / "best.pt"
    torch.save({"config": {"clip_model": "tiny", "clip_weights": "", "seed": 0, "train_mode": "zero_shot",
                           "data_jsonl": str(synthetic_jsonl)}, "model": {}}, path)
    return path


def run(root, clip_ckpt, *extra):
    argv = [f"--clip_checkpoint={clip_ckpt}", "--width=32", "--layers=1", "--heads=2", "--prefix_len=2",
            "--batch_size=8", "--warmup_steps=2", "--num_workers=0", "--decode=greedy", f"--logs_dir={root}/logs",
            f"--weights_dir={root}/weights", f"--cache_dir={root}/cache", "--run_name=run-captioner", *extra]
    return train_captioner.main(argv)


@pytest.fixture(scope="module")
def captioner_ckpt(tmp_path_factory, clip_ckpt):
    root = tmp_path_factory.mktemp("cap")
    out = run(root, clip_ckpt, "--epochs=3", "--lr=3e-3")
    return Path(out["weights_dir"]) / "best.pt"


def test_resume_continues_exactly(tmp_path, clip_ckpt):
    guided = ["--w_align=0.5", "--w_contrastive=0.1", "--view_aug=0.3", "--embed_noise=0.05"]
    a = run(tmp_path / "a", clip_ckpt, "--epochs=3", *guided)
    run(tmp_path / "b", clip_ckpt, "--epochs=3", "--stop_after_epochs=1", *guided)
    last = tmp_path / "b/weights/run-captioner/last.pt"
    assert torch.load(last, weights_only=True)["epoch"] == 1
    b = run(tmp_path / "b", clip_ckpt, f"--resume={last}", "--stop_after_epochs=0")
    sa = torch.load(tmp_path / "a/weights/run-captioner/last.pt", weights_only=True)
    sb = torch.load(last, weights_only=True)
    assert sa["epoch"] == sb["epoch"] == 3 and sa["step"] == sb["step"]
    for k in sa["model"]:
        assert torch.allclose(sa["model"][k], sb["model"][k], atol=1e-6), k
    assert a["val"] == b["val"]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(Path(a["run_dir"])))
    acc.Reload()
    assert {"train/ce", "train/align", "train/contrastive", "train/loss", "train/lr", "val/CIDEr", "val/ce"} <= set(
        acc.Tags()["scalars"])
    dec, ckpt = load_captioner(tmp_path / "a/weights/run-captioner/best.pt")  # weights_only loading
    assert isinstance(dec, CaptionDecoder) and ckpt["clip_checkpoint"] == str(clip_ckpt)


def test_evaluate_caption_cli_scores_generative(tmp_path, captioner_ckpt):
    out = tmp_path / "captions_test.json"
    assert evaluate_caption.main(["--captioner", "generative", "--captioner_checkpoint", str(captioner_ckpt),
                                  "--no_meteor", "--out_dir", str(tmp_path)]) == 0
    import json

    report = json.loads(out.read_text())
    assert set(report["captioners"]) == {"retrieval", "generative", "generic", "category", "nearest_caption"}
    assert {"CIDEr", "BLEU-4", "cosine_same_model"} <= set(report["captioners"]["generative"])
    assert all(isinstance(e["generative"], str) and e["generative"] for e in report["examples"])


def test_evaluate_caption_cli_rejects_a_clip_checkpoint_as_captioner(clip_ckpt, capsys):
    with pytest.raises(SystemExit):
        evaluate_caption.main(["--captioner", "generative", "--captioner_checkpoint", str(clip_ckpt), "--no_meteor"])
    assert "not a train_captioner.py checkpoint" in capsys.readouterr().err


def test_caption_cli_on_obj_and_renders(tmp_path, captioner_ckpt, capsys, monkeypatch):
    import trimesh

    obj = tmp_path / "box" / "model.obj"
    obj.parent.mkdir()
    trimesh.creation.box((1.0, 0.4, 0.6)).export(obj)
    argv = ["--captioner_checkpoint", str(captioner_ckpt), "--size", "64"]
    assert caption.main([str(obj), *argv, "--save_views", str(tmp_path / "views")]) == 0
    first = capsys.readouterr().out.strip().splitlines()
    assert len(first) == 1 and first[0].startswith(f"{obj}: ") and len(first[0]) > len(f"{obj}: ")
    assert len(list((tmp_path / "views").glob("view_*.png"))) == 12
    assert caption.main([str(tmp_path / "views"), *argv, "--decode", "nucleus", "--n", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith(f"{tmp_path / 'views'}: ") for line in lines)
    # a missing file and a broken mesh each get an error line; the good input after them is still captioned
    broken = tmp_path / "broken" / "model.obj"
    broken.parent.mkdir()
    broken.write_text("v 0 0 0\nf 1 2 3\n")
    assert caption.main([str(tmp_path / "missing.obj"), str(broken), str(obj), *argv]) == 1
    out, err = capsys.readouterr()
    assert [line.split(": ")[0] for line in out.strip().splitlines()] == [str(obj)]
    assert "missing.obj: error:" in err and f"{broken}: error:" in err and "2 of 3 inputs failed" in err
    monkeypatch.chdir(tmp_path)  # no weights/*captioner*/best.pt here
    assert caption.main([str(obj)]) == 2
    assert "captioner" in capsys.readouterr().err
