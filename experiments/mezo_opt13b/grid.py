"""The MeZO paper's OPT-13B table (Table 1 of the NeurIPS version): SuperGLUE and SST-2 with 1000 examples.

Runs on a TPU pod (or GPU cluster) with the OPT-13B checkpoint in a local Hugging Face directory (--base
gives it). The protocol is MeZO's large_models: per task, 1000 training and 500 dev rows drawn from the
train split by the seed and 1000 test rows from the validation split (one draw for all seeds); each class
is the log-likelihood of its word after the prompt of MeZO's templates.py. MeZO rows: 20K ZO-SGD steps at
batch 16, constant rate, evaluated every 4K steps; FT: 5 epochs of AdamW at batch 8. The hyperparameter
grids are the paper's (its OPT appendix table). Parameters are stored in float32 (a 1e-7 step vanishes in
bfloat16) and sharded over every device (config.mesh fsdp); matmuls run in bfloat16.

Not here: ICL (fttpu has no in-context demonstrations), COPA (its connective depends on the row's question
field), ReCoRD (a variable candidate list per row) and SQuAD/DROP (generation and F1).
"""
from experiments.sweeps import Row

NAME = "mezo_opt13b"
TASKS = ("sst2", "rte", "cb", "boolq", "wsc", "wic", "multirc")
SEEDS = (0,)  # one training sample per task, the paper's single number per cell; --seeds=0,1,2 for more
BASE = "family=opt,checkpoint=/path/to/opt-13b"  # --base gives the real directory

SPLITS = (("data.num_train", 1000), ("data.num_dev", 500), ("data.num_test", 1000))
# Tokens per row, ours: MeZO pads to OPT's 2048; fttpu pads to data.max_length and truncates from the left,
# so the prompt's question and the candidate word always stay. CB has 250 training rows: 100 go to dev
# (MeZO's --num_dev=100 for CB) and the other 150 train.
TASK_SETTINGS = {
    "sst2": SPLITS + (("data.max_length", 64),),
    "rte": SPLITS + (("data.max_length", 384),),
    "cb": (("data.num_train", 150), ("data.num_dev", 100), ("data.num_test", 1000), ("data.max_length", 256)),
    "boolq": SPLITS + (("data.max_length", 512),),
    "wsc": SPLITS + (("data.max_length", 128),),
    "wic": SPLITS + (("data.max_length", 128),),
    "multirc": SPLITS + (("data.max_length", 768),),
}

LARGE = (("model.compute_dtype", "bfloat16"), ("mesh.data", 1), ("mesh.fsdp", -1), ("train.eval_batch_size", 16))
MEZO_STEPS, FT_STEPS = 20_000, 5 * 1000 // 8  # FT: 5 epochs of 1000 rows at batch 8
MEZO = LARGE + (("train.steps", MEZO_STEPS), ("train.batch_size", 16), ("train.eval_every", 4000),
                ("train.checkpoint_every", 4000))
FT = LARGE + (("train.steps", FT_STEPS), ("train.batch_size", 8), ("train.eval_every", 125),
              ("train.checkpoint_every", 125))

ROWS = (
    Row("zero-shot", "zero_shot", fixed=LARGE),
    Row("LP", "head", fixed=LARGE + (("head.solver", "lbfgs"),)),
    Row("MeZO", "mezo", fixed=MEZO + (("zo.eps", 1e-3),), grid=(("optimizer.learning_rate", (1e-6, 1e-7)),)),
    Row("MeZO (LoRA)", "zo", fixed=MEZO + (("zo.base", "lora"), ("zo.eps", 1e-2)),
        grid=(("optimizer.learning_rate", (1e-4, 5e-5)),)),
    Row("MeZO (prefix)", "zo", fixed=MEZO + (("zo.base", "prefix"), ("zo.eps", 1e-1)),
        grid=(("optimizer.learning_rate", (1e-2, 1e-3)),)),
    Row("FT", "full", fixed=FT, grid=(("optimizer.learning_rate", (1e-5, 5e-5, 8e-5)),)),
)

PAPER = {}  # the issue quotes no OPT-13B numbers; see Table 1 of the paper
CAPTION = (f"OPT-13B, 1000 training / 500 dev / 1000 test rows (CB: 150 / 100), accuracy; MeZO rows "
           f"{MEZO_STEPS} steps at batch 16, FT {FT_STEPS} steps at batch 8; hyperparameters chosen on dev.")
