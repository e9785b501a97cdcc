"""The MeZO paper's OPT-13B table (Table 1 of the NeurIPS version): SST-2, SuperGLUE, SQuAD and DROP with 1000 examples.

Runs on a TPU pod (or GPU cluster) with the OPT-13B checkpoint in a local Hugging Face directory (--base
gives it). The protocol is MeZO's large_models: per task, 1000 training and 500 dev rows drawn from the
train split by the seed and 1000 test rows from the validation split (one draw for all seeds); each class
is the log-likelihood of its word after the prompt of MeZO's templates.py. MeZO rows: 20K ZO-SGD steps at
batch 16, constant rate, evaluated every 4K steps; FT: 5 epochs of AdamW at batch 8. The hyperparameter
grids are the paper's (its OPT appendix table; MeZO's large_models/README.md:58-64 and *.sh). The MeZO rows
store and compute in float16, as MeZO ran them (large_models/mezo.sh:59 --load_float16); fttpu rounds a
float16 weight's update stochastically (fttpu/methods/masks.py apply_updates), so a 1e-7 step moves the
weights in expectation where MeZO's round-to-nearest drops most of it. FT keeps float32 weights with
bfloat16 matmuls: MeZO ran it as transformers' --fp16 mixed precision (finetune.sh:67: float32 master
weights, float16 autocast, dynamic loss scaling), and fttpu has no loss scaling, which a float16 backward
pass needs; bfloat16 has float32's range. Parameters are sharded over every device (config.mesh fsdp).
"""

from experiments.sweeps import Row

NAME = "mezo_opt13b"
TASKS = ("sst2", "rte", "cb", "boolq", "wsc", "wic", "multirc", "copa", "record", "squad", "drop")
GENERATION_TASKS = ("squad", "drop")  # greedy answers scored by F1 (the table's SQuAD and DROP columns)
SEEDS = (0,)  # one training sample per task, the paper's single number per cell; --seeds=0,1,2 for more
BASE = "family=opt,checkpoint=/path/to/opt-13b"  # --base gives the real directory

SPLITS = (("data.num_train", 1000), ("data.num_dev", 500), ("data.num_test", 1000))
# Tokens per row, ours: MeZO pads to OPT's 2048; fttpu pads to data.max_length and truncates from the left,
# so the prompt's question and the candidate word always stay. CB has 250 training rows: 100 go to dev
# (MeZO's --num_dev=100 for CB) and the other 150 train; COPA has 400: 100 dev, 300 train, its 100 validation
# rows the test (fttpu/data/row_tasks.py MEZO_ROWS). SQuAD and DROP decode up to 50 answer tokens (MeZO's
# max_new_tokens) after prompts of max_length - 50 tokens, left-truncated (the question stays).
TASK_SETTINGS = {
  "sst2": SPLITS + (("data.max_length", 64),),
  "rte": SPLITS + (("data.max_length", 384),),
  "cb": (("data.num_train", 150), ("data.num_dev", 100), ("data.num_test", 1000), ("data.max_length", 256)),
  "boolq": SPLITS + (("data.max_length", 512),),
  "wsc": SPLITS + (("data.max_length", 128),),
  "wic": SPLITS + (("data.max_length", 128),),
  "multirc": SPLITS + (("data.max_length", 768),),
  "copa": (("data.num_train", 300), ("data.num_dev", 100), ("data.num_test", 1000), ("data.max_length", 64)),
  "record": SPLITS + (("data.max_length", 768),),
  "squad": SPLITS + (("data.max_length", 1024),),
  "drop": SPLITS + (("data.max_length", 1536),),
}

LARGE = (("mesh.data", 1), ("mesh.fsdp", -1), ("train.eval_batch_size", 16))
FLOAT16 = (("model.param_dtype", "float16"), ("model.compute_dtype", "float16"))  # mezo.sh:59 --load_float16
MIXED = (("model.param_dtype", "float32"), ("model.compute_dtype", "bfloat16"))  # for finetune.sh's --fp16
MEZO_STEPS, FT_STEPS = 20_000, 5 * 1000 // 8  # FT: 5 epochs of 1000 rows at batch 8
MEZO = (
  LARGE
  + FLOAT16
  + (
    ("train.steps", MEZO_STEPS),
    ("train.batch_size", 16),
    ("train.eval_every", 4000),
    ("train.checkpoint_every", 4000),
  )
)
# FT: transformers' Trainer defaults as finetune.sh leaves them: AdamW, linear decay, no warmup, no weight decay.
FT = (
  LARGE
  + MIXED
  + (
    ("train.steps", FT_STEPS),
    ("train.batch_size", 8),
    ("train.eval_every", 125),
    ("train.checkpoint_every", 125),
    (
      "train.remat",
      "full",
    ),  # layers recomputed in the backward: MultiRC 10.8 GiB a v4 chip (25.8 without), ReCoRD 27.7
    ("optimizer.weight_decay", 0.0),
  )
)

# Per MeZO row: eps and rate grid from large_models/README.md:60-64 (the paper's OPT table); no weight decay
# (mezo.sh passes none: transformers' default 0; trainer.py:804 would decay all but biases and norms, as
# fttpu does); LoRA r=8, alpha=16 on q_proj and v_proj (run.py:72-73, lora.py); prefix 5 tokens per layer,
# no reparametrization, initialised from real activations (mezo.sh:18; fttpu's prefix method is that).
# ICL: 32 demonstrations from the training rows before each evaluated row (icl.sh: --num_train 32, a draw per
# row as run.py's num_train_sets=None), the prompt left-truncated to OPT's 2048 positions keeping BOS.
ICL = (("data.demonstrations", 32), ("data.max_length", 2048))
ROWS = (
  Row("zero-shot", "zero_shot", fixed=LARGE + FLOAT16),  # icl.sh:3 --load_float16
  Row("ICL", "zero_shot", fixed=LARGE + FLOAT16 + ICL),
  # A linear probe fits a classifier on the features before the candidates: SQuAD and DROP have no classes.
  Row("LP", "head", fixed=LARGE + MIXED + (("head.solver", "lbfgs"),), skip=GENERATION_TASKS),
  Row(
    "MeZO",
    "mezo",
    fixed=MEZO + (("zo.eps", 1e-3), ("optimizer.weight_decay", 0.0)),
    grid=(("optimizer.learning_rate", (1e-6, 1e-7)),),
  ),
  Row(
    "MeZO (LoRA)",
    "zo",
    fixed=MEZO
    + (
      ("zo.base", "lora"),
      ("zo.eps", 1e-2),
      ("optimizer.weight_decay", 0.0),
      ("lora.rank", 8),
      ("lora.alpha", 16.0),
      ("lora.targets", "query|value"),
    ),
    grid=(("optimizer.learning_rate", (1e-4, 5e-5)),),
  ),
  Row(
    "MeZO (prefix)",
    "zo",
    fixed=MEZO + (("zo.base", "prefix"), ("zo.eps", 1e-1), ("optimizer.weight_decay", 0.0), ("prefix.length", 5)),
    grid=(("optimizer.learning_rate", (1e-2, 1e-3)),),
  ),
  Row("FT", "full", fixed=FT, grid=(("optimizer.learning_rate", (1e-5, 5e-5, 8e-5)),)),
)

# Table 1 of the NeurIPS version (accuracy; SQuAD and DROP: F1), the rows issue 23 quotes.
PAPER = {
  name: dict(zip(TASKS, values))
  for name, values in (
    ("zero-shot", (58.8, 59.6, 46.4, 59.0, 38.5, 55.0, 46.9, 80.0, 81.2, 46.2, 14.6)),
    ("MeZO", (91.4, 66.1, 67.9, 67.6, 63.5, 61.1, 60.1, 88.0, 81.7, 84.7, 30.9)),
    ("FT", (92.0, 70.8, 83.9, 77.1, 63.5, 70.1, 71.1, 79.0, 74.1, 84.9, 31.3)),
  )
}
CAPTION = (
  f"OPT-13B, 1000 training / 500 dev / 1000 test rows (CB: 150 / 100, COPA: 300 / 100 / 100), accuracy (SQuAD, "
  f"DROP: F1); MeZO rows {MEZO_STEPS} steps at batch 16, FT {FT_STEPS} steps at batch 8; hyperparameters chosen on dev."
)
