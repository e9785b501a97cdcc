"""The MeZO k=16 table, CPU edition: MiniLM (all-MiniLM-L6-v2) on SST-2 and TREC, five seeds.

Rows follow Table 18 of the MeZO paper (NeurIPS version), plus sparse fine-tuning and SpIEL. The
paper's grids (RoBERTa-large, batch 64, MeZO 100K steps, FT 1000 steps) are scaled to a 22.7M-parameter
model on 2 CPU cores: the budgets below are the steps each row gets, and each row's learning rate
(the only searched hyperparameter here, as in the paper's MeZO grid) is chosen by mean dev accuracy.
"""

from experiments.sweeps import Row

TASKS = ("sst2", "trec")
SEEDS = (13, 21, 42, 87, 100)
K = 16
# Each task's own settings. Sequence length: the longest test sentence fits (MiniLM tokens with [CLS] and
# [SEP]: SST-2 at most 55, TREC 24; of the training rows 0.5% of SST-2's pass 48, 0.3% of TREC's pass 32),
# and a step costs about its length, so TREC trains at half SST-2's cost. A new task needs only its entry
# here: its folder under --data_dir and its prompts, e.g. "reviews": (("data.label_descriptions", ("It was
# bad.", "It was good.")),).
TASK_SETTINGS = {"sst2": (("data.max_length", 56),), "trec": (("data.max_length", 32),)}

FT_STEPS = 200  # autodiff rows: AdamW, linear decay, batch 8 (the paper: 1000 steps)
ZO_STEPS = 500  # zeroth-order rows: ZO-SGD, constant rate, batch 16 (the paper: 100K steps, batch 64)
FT = (("train.steps", FT_STEPS), ("train.eval_every", FT_STEPS // 4), ("train.checkpoint_every", FT_STEPS))
# Sign (rademacher) noise, as the table's cells were run: 2.2x a forward pass per step on this CPU against
# gaussian's 3.4x (fttpu.bench, 2026-12-02); the estimate is unbiased with either (tests/test_zo_consistency.py).
ZO = (
  ("train.steps", ZO_STEPS),
  ("train.eval_every", ZO_STEPS // 4),
  ("train.checkpoint_every", ZO_STEPS),
  ("train.batch_size", 16),
  ("zo.noise", "rademacher"),
)

# Learning rates. The autodiff rows and MeZO train at one rate each, the one the dev sweep of
# experiments/methods_sst2.py chose (seed 42, SST-2; MeZO's of 1e-5, 3e-5, 1e-4 over 500 steps), to fit the
# 3-hour budget (a row's grid may list several; the aggregator then picks by mean dev accuracy over the seeds):
# measured on 2 cores (fttpu.bench, MiniLM, seq 64): full 0.42 s/step at batch 8, lora 0.22, sparse and
# spiel 0.43; mezo (sign noise) 0.25 at batch 16, zo over lora 0.22, over prefix 0.23; plus ~15 s per cell
# (load, compile, 4 dev and 1 test evaluation). A step's cost falls less than its length (AdamW's update
# and the 11.7M-entry embedding table's gradient do not shrink): the 90 cells took 2 h 25 min with
# --jobs=2 (README.md, Results).
#
# The zeroth-order rows carry the paper's eps and weight decay (its Table 15, RoBERTa-large; MeZO's
# medium_models/README.md:49-55 and mezo.sh:8-9): MeZO eps 1e-3, no decay; MeZO (LoRA) eps 1e-3, decay
# 0.1, r=8, alpha=16 on query and value; MeZO (prefix) eps 1e-1, no decay, 5 prefix tokens per layer
# initialised from real activations (fttpu's prefix method always is). The paper's rate grids are for
# 100K steps at batch 64: MeZO 1e-7, 1e-6, 1e-5; LoRA 1e-5, 5e-5, 1e-4; prefix 1e-3, 5e-3, 1e-2. Here a
# row has 500 steps at batch 16, 200x fewer, so the LoRA and prefix grids have 2 rates each: the paper's
# largest and 10x it. Constant-rate SGD moves about rate x steps, so matching the paper's distance would
# take 200x; the ZO estimate's variance caps the rate well below that: in the dev sweep behind
# configs/fewshot.py (batch 8), zo over LoRA trained at 1e-3 (10x the paper's largest) and diverged at
# 1e-2 in 500 steps, so 10x is the largest power of ten known to train. The prefix row's 1e-1 is the same
# factor, untested here (a diverging cell stops at its last good state and loses on dev). Budget: 2 rows
# x 2 tasks x 5 seeds x 2 rates = 40 cells, about 40-60 min with --jobs=2 (from the step times above, not
# measured). MeZO (full) keeps its 1e-5, the paper's largest, and ran at the paper's eps and decay already.
#
# In the LoRA and prefix rows eps and weight decay are one-value grid entries, not fixed settings, so that
# they name the cell's workdir (.../eps=0.1_weight_decay=0.0_learning_rate=0.01/seed13): the cells run
# before at eps 1e-3 without decay (.../learning_rate=0.001/seed13) are not taken for finished cells here.
MEZO_PAPER = (("zo.eps", 1e-3), ("optimizer.weight_decay", 0.0))  # the config's defaults: MeZO's cells stand
LORA = (("zo.base", "lora"), ("lora.rank", 8), ("lora.alpha", 16.0), ("lora.targets", "query|value"))
PREFIX = (("zo.base", "prefix"), ("prefix.length", 5))
ROWS = (
  Row("zero-shot", "zero_shot"),
  Row("LP", "head", fixed=(("head.solver", "lbfgs"),)),
  Row("FT", "full", fixed=FT, grid=(("optimizer.learning_rate", (2e-5,)),)),
  Row("FT (LoRA)", "lora", fixed=FT, grid=(("optimizer.learning_rate", (5e-4,)),)),
  Row("FT (sparse)", "sparse", fixed=FT, grid=(("optimizer.learning_rate", (5e-4,)),)),
  Row("FT (spiel)", "spiel", fixed=FT, grid=(("optimizer.learning_rate", (5e-4,)),)),
  Row("MeZO", "mezo", fixed=ZO + MEZO_PAPER, grid=(("optimizer.learning_rate", (1e-5,)),)),
  Row(
    "MeZO (LoRA)",
    "zo",
    fixed=ZO + LORA,
    grid=(("zo.eps", (1e-3,)), ("optimizer.weight_decay", (0.1,)), ("optimizer.learning_rate", (1e-4, 1e-3))),
  ),
  Row(
    "MeZO (prefix)",
    "zo",
    fixed=ZO + PREFIX,
    grid=(("zo.eps", (1e-1,)), ("optimizer.weight_decay", (0.0,)), ("optimizer.learning_rate", (1e-2, 1e-1))),
  ),
)

# RoBERTa-large, k=16, Table 18 of the MeZO paper (NeurIPS version).
PAPER = {
  "zero-shot": {"sst2": 79.0, "trec": 32.0},
  "LP": {"sst2": 76.0, "trec": 51.3},
  "MeZO": {"sst2": 90.5, "trec": 76.9},
  "MeZO (LoRA)": {"sst2": 91.4, "trec": 73.1},
  "MeZO (prefix)": {"sst2": 90.8, "trec": 80.3},
  "FT": {"sst2": 91.9, "trec": 85.0},
}

NAME = "mezo_k16_cpu"
BASE = f"k={K}"  # the installed MiniLM checkpoint, its label-description classifier
CAPTION = (
  f"MiniLM (all-MiniLM-L6-v2, 22.7M parameters), k={K} per class, test accuracy mean (std) over seeds "
  f"{', '.join(map(str, SEEDS))}; FT rows {FT_STEPS} AdamW steps (batch 8), MeZO rows {ZO_STEPS} ZO-SGD "
  "steps (batch 16); learning rates chosen by mean dev accuracy. Paper: RoBERTa-large (MeZO, Table 18)."
)
