"""Composed retrieval (a reference shape or image + a modification text -> the target), CLIP4Cir's two stages.

    python train_composed.py                                         # stage 1: CLIP on element_wise_sum -> target
    python train_composed.py --stage=2 --init_from=weights/<stage 1 run>/best.pt               # CLIP4Cir's Combiner
    python train_composed.py --stage=2 --combiner=moe_combiner --init_from=weights/<stage 1 run>/best.pt
    python train_composed.py --clip_model=tiny --lr=5e-4             # offline: the tiny random-init model, toy data
    python train_composed.py --dataset=cirr --data_root=data/cirr_dataset --batch_size=128   # CIRR (or fashioniq)
    python train_composed.py --resume=latest                         # the newest composed run, either stage
Any constant below can be overridden as --key=value; a stage's preset (STAGE_PRESETS) only states what differs.
The loop is train.py's fit() with tasks/composed.py; each run writes logs/<run>/ and weights/<run>/{last,best}.pt.
Then: python eval_composed.py --stage1 weights/<stage 1 run>/best.pt --combiner weights/<stage 2 run>/best.pt
"""
import secrets
import time

from tasks.composed import ComposedStage1, ComposedStage2
from train import configure, fit
from utils import apply_overrides, get_device, torch_threads

# ----------------------------------------------------------------------------- config (edit, or --key=value)
dataset = "toy"             # toy | cirr | fashioniq
data_root = "data/pix3d_toy"  # toy: the folder of usable_samples.jsonl and composed.<split>.json | cirr: the
                            # cirr_dataset folder (cirr/captions, cirr/image_splits, train/, dev/, test1/) |
                            # fashioniq: the fashionIQ_dataset folder (captions/, image_splits/, images/)
stage = 1                   # 1: fine-tune CLIP on element_wise_sum(reference, caption) -> target | 2: a Combiner
clip_model = "ViT-B/32"     # any of clip.available_models(), or "tiny" (random init; tests and offline demo)
clip_weights = ""           # a local OpenAI checkpoint file, for machines without network
init_from = ""              # stage 2: the stage-1 run's best.pt, whose CLIP stays frozen ("" = the base CLIP)
train_mode = "full"         # stage 1: full (both towers) | image | text (one tower) | zero_shot (validate only)
combiner = "combiner"       # stage 2: combiner (CLIP4Cir's) | moe_combiner (experts, attention, element-wise gate)
projection_mult = 4         # stage 2: projection dim = this x CLIP's embedding dim (CLIP4Cir: 2560 = 4 x 640)
hidden_mult = 8             # stage 2: hidden dim = this x the embedding dim (CLIP4Cir: 5120 = 8 x 640)
n_experts = 4               # moe_combiner: expert MLPs, each hidden_mult x dim / n_experts wide
attention_heads = 4         # moe_combiner: heads of the attention between the image and the text token
dropout = 0.5               # stage 2: CLIP4Cir's Combiner dropout
group_weight = 0.0          # stage 2: weight of the group loss (each query's target against the other members of
                            # its group, the reference included; CIRR's img_set, the toy set's base + variants;
                            # FashionIQ, without groups: the reference);
                            # 0 = CLIP4Cir's batch loss alone
epochs = 30
batch_size = 64             # per process; the contrastive loss sees the global batch under DDP
draws_per_pair = 1          # draws of each training pair per epoch (each a random view of each shape)
lr = 2e-6                   # stage 1: CLIP4Cir's fine-tuning rate (the tiny from-scratch model wants ~5e-4)
weight_decay = 0.01         # AdamW (CLIP4Cir's stage 1: torch's default); not on biases, norms, the temperature
warmup_steps = 20           # linear warmup, then cosine decay to 0 over the run
grad_clip = 1.0             # max gradient norm (0 = off)
grad_accum = 1              # optimizer step every N batches
amp = True                  # bf16 autocast where the hardware has it (fp16 + grad scaling on older GPUs)
patience = 5                # early stopping: epochs without a better select_metric
select_metric = ""          # "" = mean_R@5_Rsubset@1 (toy, CIRR) or mean_R@10_R@50 (FashionIQ), CLIP4Cir's
num_workers = 2             # DataLoader workers (stage 1) and for the one-off encoding (stage 2)
device = "auto"             # auto = cuda when present, else cpu
cpu_threads = 0             # torch threads on a CPU (0 = torch's default); stage 2's small matrices run faster on
                            # one thread than on two that wait for each other on shared cores
seed = 0
run_name = ""               # default: <timestamp>-composed<stage>-<train_mode or combiner>-<clip_model>-<suffix>
resume = ""                 # a last.pt path, or "latest" (the newest composed run)
stop_after_epochs = 0       # stop (resumably) after this many epochs in this process
max_steps = 0               # stop after this many optimizer steps (0 = no limit)
log_every = 10              # optimizer steps between TensorBoard points
logs_dir = "logs"
weights_dir = "weights"
cache_dir = "data/cache"    # stage 2's frozen features
# -----------------------------------------------------------------------------
DEFAULTS = {k: v for k, v in dict(globals()).items()
            if not k.startswith("_") and isinstance(v, (int, float, str, bool)) and k != "DEFAULTS"}
STAGE_PRESETS = {
    1: {},
    2: dict(
        lr=2e-5,            # CLIP4Cir's Combiner rate
        weight_decay=0.0,   # CLIP4Cir trains the Combiner with Adam, no decay
        batch_size=256,     # CLIP4Cir: 4096 (CIRR) / 2048 (FashionIQ); cached features make big batches cheap
        epochs=100,         # an epoch is a pass over cached features: seconds
        patience=10,
        cpu_threads=1,
    ),
}
TASKS = {1: ComposedStage1, 2: ComposedStage2}


def main(argv=None):
    stage = apply_overrides(DEFAULTS, argv)["stage"]  # which preset; a resumed run takes its stored config instead
    if stage not in TASKS:
        raise ValueError(f"--stage={stage}: expected 1 or 2")
    cfg, ckpt = configure(DEFAULTS, argv, STAGE_PRESETS[stage], kind="composed")
    if not cfg["run_name"]:
        what = cfg["train_mode"] if cfg["stage"] == 1 else cfg["combiner"]
        cfg["run_name"] = (f"{time.strftime('%Y%m%d-%H%M%S')}-composed{cfg['stage']}-{what}-"
                           f"{cfg['clip_model'].replace('/', '-')}-{secrets.token_hex(2)}")
    with torch_threads(cfg["cpu_threads"], get_device(cfg["device"])):
        return fit(cfg, TASKS[cfg["stage"]](cfg), ckpt)


if __name__ == "__main__":
    main()
