"""Train the generative captioner (models/caption_decoder.py) on the shape embeddings of a frozen CLIP.

    python train_captioner.py --clip_checkpoint=weights/<clip run>/best.pt      # the defaults below
    python train_captioner.py --w_align=0.1 --w_contrastive=0.05                # add the CLIP-guided terms
    python train_captioner.py --resume=latest                                   # the newest captioner run
Any constant below can be overridden as --key=value. The loop is train.py's fit() with the captioner task
(tasks/captioner.py); each run writes logs/<run>/ (TensorBoard, config.json, results.json) and
weights/<run>/{last,best}.pt. Then:
    python evaluate_caption.py --captioner generative --captioner_checkpoint weights/<run>/best.pt
    python caption.py path/to/model.obj
"""
import time
from pathlib import Path

from models.clip_wrapper import read_checkpoint
from tasks.captioner import Captioner
from train import configure, fit
from utils import get_device, torch_threads

# ----------------------------------------------------------------------------- config (edit, or --key=value)
clip_checkpoint = "weights/demo-full/best.pt"  # a train.py checkpoint: its CLIP (frozen) embeds the shapes
data_jsonl = ""             # default: the CLIP checkpoint's
input_mode = "mean"         # mean: one shape embedding | views: the view embeddings as a sequence (transformer mapper)
mapper = "mlp"              # mlp (ClipCap's MLP) | transformer (K learned queries over the input embeddings)
prefix_len = 4              # K prefix vectors
width = 128                 # decoder width; 2-3 layers of 128-256 are plenty for templated captions
layers = 2
heads = 4
mapper_layers = 2           # transformer mapper only
max_len = 32                # BPE tokens per caption, end token included
dropout = 0.1
view_aug = 0.0              # mean input: probability of a single random view's embedding instead of the shape's
embed_noise = 0.0           # std of Gaussian noise on the unit input embedding (CapDec): bridges train/test shapes
epochs = 40
batch_size = 64
lr = 1e-3
weight_decay = 0.01         # AdamW, not on biases, norms and 1-d parameters
warmup_steps = 50           # linear warmup, then cosine decay to 0
grad_clip = 1.0             # max gradient norm (0 = off)
w_align = 0.0               # CLIP-guided: 1 - cos(CLIP text embedding of the soft teacher-forced caption, shape)
w_contrastive = 0.0         # CLIP-guided: symmetric InfoNCE of those text embeddings against the batch's shapes
align_tau = 1.0             # softmax temperature of the decoder's token distributions fed to CLIP
decode = "greedy"           # greedy | beam | nucleus (validation decodes greedily when this is nucleus); on the toy
                            # val split greedy beat beam with length_penalty 1 (CIDEr 2.18 vs 2.11)
beam_size = 3
length_penalty = 0.0        # beam: score = sum log p / length ** length_penalty (1 chose long, colourless
                            # template captions on the toy val split: CIDEr 2.11 vs 2.27 with 0)
top_p = 0.9                 # nucleus
temperature = 1.0           # nucleus
no_repeat_ngram = 3         # forbid any n-gram twice in a caption (0 = off)
patience = 15               # early stopping: epochs without a better select_metric (CIDEr of 36 val models
                            # jumps +-0.3 between epochs: a small patience stops on a lucky early epoch)
select_metric = "CIDEr"     # val metric (of the decoded val captions) for best.pt and early stopping
num_workers = 2             # DataLoader workers for the one-off feature encoding
device = "auto"
cpu_threads = 1             # torch threads for the training loop on a CPU (0 = torch's default): the decoder's
                            # matrices are tiny and a second thread mostly waits; on 2 shared cores an epoch took
                            # 4 s with 1 thread and 23-36 s with 2
seed = 0
run_name = ""               # default: <timestamp>-captioner-<clip run>
resume = ""                 # a last.pt path, or "latest" (the newest captioner run)
stop_after_epochs = 0       # stop (resumably) after this many epochs in this process
max_steps = 0               # end the run after this many optimizer steps (0 = no limit)
grad_accum = 1              # optimizer step every N batches
amp = True                  # bf16 autocast where the hardware has it (fp16 + grad scaling on older GPUs)
log_every = 10              # optimizer steps between TensorBoard points
logs_dir = "logs"
weights_dir = "weights"
cache_dir = "data/cache"
# -----------------------------------------------------------------------------
DEFAULTS = {k: v for k, v in dict(globals()).items()
            if not k.startswith("_") and isinstance(v, (int, float, str, bool)) and k != "DEFAULTS"}


def main(argv=None):
    cfg, ckpt = configure(DEFAULTS, argv, kind="captioner")
    if not Path(cfg["clip_checkpoint"]).is_file():
        raise FileNotFoundError(f"--clip_checkpoint={cfg['clip_checkpoint']}: not found (train a CLIP with train.py first)")
    if not cfg["data_jsonl"]:
        cfg["data_jsonl"] = read_checkpoint(cfg["clip_checkpoint"])["config"]["data_jsonl"]  # no model built here
    if not cfg["run_name"]:
        cfg["run_name"] = f"{time.strftime('%Y%m%d-%H%M%S')}-captioner-{Path(cfg['clip_checkpoint']).parent.name}"
    task = Captioner(cfg)
    with torch_threads(cfg["cpu_threads"], get_device(cfg["device"])):
        out = fit(cfg, task, ckpt)
    for e in task.extra_results.get("val_examples", [])[:4]:
        print(f"  {e['model_id']}: {e['caption']!r}")
    return out


if __name__ == "__main__":
    main()
