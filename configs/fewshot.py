"""Few-shot classification: k examples per class, LM-BFF/MeZO protocol.

  python -m fttpu.main --config=configs/fewshot.py:task=sst2,method=full,k=16,seed=42 \
      --config.data.dir=../shared/data --workdir=DIR

The argument sets the common knobs; any other field is set with --config.a.b=value.
`family=roberta` (or opt, llama) with `checkpoint=DIR` classifies with the model's own LM head:
the LM-BFF prompt and verbalizer for masked LMs, candidate log-likelihoods for causal LMs.
"""

import os

import ml_collections

from fttpu import methods, models, sharding
from fttpu.config import parse_arg
from fttpu.data import generation
from fttpu.methods import base as method_base


def get_config(arg=None):
  arg = parse_arg(
    arg,
    task="sst2",
    method="full",
    k=16,
    seed=42,
    steps=200,
    zo_base="lora",
    family="bert",
    checkpoint="",
    classifier="",
  )
  config = ml_collections.ConfigDict()
  config.method = arg.method  # a registered method (fttpu.methods.METHODS); most have a section below
  config.seed = arg.seed  # picks the k-shot sample and the training randomness

  config.data = ml_collections.ConfigDict()
  config.data.task = arg.task  # a registered task (sst2, trec) or a directory name under data.dir
  config.data.dir = os.environ.get("DATA_DIR", "../shared/data")
  config.data.cache_dir = os.environ.get("FTTPU_TFDS_DIR", "~/.cache/fttpu/tfds")  # prepared TFDS files
  config.data.k = arg.k  # examples per class for train, and again for dev
  # MeZO's large-model protocol instead of k per class: num_train + num_dev rows drawn from the train
  # split by the seed, num_test from the test split (one draw for every seed); 0 = off / the whole split.
  config.data.num_train = 0
  config.data.num_dev = 0
  config.data.num_test = 0
  config.data.max_length = 64  # tokens per sentence, truncated and padded
  # each split padded only to its longest example, rounded up to a multiple of this (evaluation batches to
  # theirs, longest first); 0 pads everything to max_length
  config.data.pad_to_multiple_of = 16
  # generation tasks (squad, drop): answer tokens decoded at most (MeZO's 50); prompts keep max_length - this
  config.data.max_new_tokens = generation.MAX_NEW_TOKENS
  # In-context demonstrations before each dev and test row (causal LMs, method=zero_shot only: MeZO's ICL
  # row uses 32), drawn from the training rows per evaluated row; fttpu/data/demonstrations.py.
  config.data.demonstrations = 0
  config.data.template = ""  # e.g. "Review: {sentence}"; "" keeps the task's
  config.data.label_descriptions = ()  # one per class; () keeps the task's
  config.data.label_names = ()
  config.data.mlm_template = ""  # e.g. "{sentence} It was {mask}."; "" keeps the task's (LM-BFF's)
  config.data.causal_template = ""  # e.g. "{sentence} It was"; "" keeps the task's (MeZO's)
  config.data.label_words = ()  # verbalizer / candidate word per class; () keeps the task's

  config.model = ml_collections.ConfigDict()
  config.model.family = arg.family  # bert | roberta | opt | llama
  config.model.checkpoint = arg.checkpoint  # Hugging Face directory; "" = the installed all-MiniLM-L6-v2
  # similarity (label descriptions, for sentence encoders) | mlm (prompt + verbalizer) | causal (candidates)
  config.model.classifier = arg.classifier or models.FAMILIES.get(arg.family).default_classifier
  config.model.logit_scale = 20.0  # similarity: logits = scale * cosine(sentence, label description)
  config.model.param_dtype = "float32"  # float32 | bfloat16 | float16: how parameters are stored
  config.model.compute_dtype = "float32"  # the matmuls' dtype; logits and losses are float32 always
  # none | int8 | nf4: the layers' projection kernels stored quantised and frozen (adapter methods: lora, dora,
  # prefix, head, zero_shot, zo over them); embeddings, norms and biases stay in param_dtype
  config.model.quantize = "none"

  zeroth_order = method_base.is_zeroth_order(arg.method)  # ZO-SGD, constant, no weight decay (MeZO's)
  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = "sgd" if zeroth_order else "adamw"  # adamw | sgd | momentum | sign | zo_sgd_sign (ZO only)
  # Per method, chosen on dev (each method module registers its own, see fttpu/methods/simple.py).
  config.optimizer.learning_rate = method_base.default_learning_rate(arg.method, arg.zo_base)
  config.optimizer.weight_decay = 0.0 if zeroth_order else 0.01
  config.optimizer.b1 = 0.9
  config.optimizer.b2 = 0.999
  config.optimizer.eps = 1e-8
  config.optimizer.schedule = "constant" if zeroth_order else "linear"  # MeZO: constant
  config.optimizer.warmup_steps = 0

  config.train = ml_collections.ConfigDict()
  config.train.steps = arg.steps
  config.train.batch_size = 8
  config.train.eval_batch_size = 64
  config.train.log_every = 10
  config.train.eval_every = 50  # dev accuracy
  config.train.checkpoint_every = 100
  config.train.keep_checkpoints = 2  # the newest ones, plus the best by best_metric
  # dev metric whose best checkpoint is kept: accuracy | loss (classification), f1 | em (generation) | "" (none)
  config.train.best_metric = "f1" if generation.is_generation_task(arg.task) else "accuracy"
  config.train.nonfinite = "stop"  # NaN/Inf loss or gradient: stop (keeping the last good state) | skip the batch
  config.train.divergence = "stop"  # a diverged run (below): stop (keeping the last good state) | continue
  config.train.divergence_ratio = 100.0  # diverged: a training loss above this x max(first step's loss, 1); 0: off
  config.train.stuck_steps = 20  # diverged (zo.objective=loss): projected gradient exactly 0 this many steps; 0: off
  config.train.grad_accum_steps = 1  # micro-batches per step (the batch split, one update; zeroth-order: the same z)
  config.train.remat = "none"  # the scanned layer keeps for the backward: none | full | dots_saveable | ...

  # Update rules: each method module's own section (its defaults live beside its checks), read only
  # when it is config.method (or zo.base).
  for name, section in methods.SECTIONS.items():
    config[name] = section.defaults()
  config.zo.base = arg.zo_base  # method=zo's trainable set

  # Device mesh: axis -> size, -1 takes the remaining devices (of every process). Batches split over
  # data x fsdp; parameters and optimizer state as sharding_rules map their logical axes onto the mesh.
  config.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
  # Logical axis -> mesh axes ("" replicated; "data,fsdp" both): FSDP over fsdp, Megatron tensor parallelism.
  config.sharding_rules = ml_collections.ConfigDict(sharding.default_rules(arg.family))
  return config
