"""fttpu.plan: the train step compiled on abstract shapes (config.json only, no weights) over fake devices."""

import json
import os
import subprocess
import sys

import pytest

from fttpu.models import tiny

from tests.conftest import REPO, data_dir

SMALL_ROBERTA = {
  "model_type": "roberta",
  "vocab_size": 1000,
  "hidden_size": 64,
  "num_hidden_layers": 2,
  "num_attention_heads": 4,
  "intermediate_size": 128,
  "max_position_embeddings": 130,
  "type_vocab_size": 1,
  "layer_norm_eps": 1e-5,
  "pad_token_id": 1,
}

SCRIPT = """
import json, sys
import jax
jax.config.update("jax_num_cpu_devices", 8)
from configs import fewshot
from fttpu import plan
config = fewshot.get_config("family=roberta")
config.data.dir = sys.argv[2]
one, fsdp8 = sys.argv[3].split(","), [m for m in sys.argv[4].split(",") if m]
out = {"one": plan.plan(config, sys.argv[1], {"data": 1, "fsdp": 1, "tensor": 1}, one)}
if fsdp8:
  out["fsdp8"] = plan.plan(config, sys.argv[1], {"data": 1, "fsdp": 8, "tensor": 1}, fsdp8)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def config_only(tmp_path_factory):
  """A checkpoint directory with config.json and nothing else: planning must not need weights."""
  path = tmp_path_factory.mktemp("config-only")
  with open(path / "config.json", "w") as f:
    json.dump(SMALL_ROBERTA, f)
  return str(path)


def plan_small_roberta(config_only: str, one_device: str, fsdp8: str) -> dict:
  """SCRIPT's plans: the methods `one_device` on one device, `fsdp8` (comma-separated) over 8 with FSDP."""
  result = subprocess.run(
    [sys.executable, "-c", SCRIPT, config_only, data_dir(), one_device, fsdp8],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=600,
    env={**os.environ, "JAX_PLATFORMS": "cpu"},
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert os.listdir(config_only) == ["config.json"]
  return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def plans(config_only):
  return plan_small_roberta(config_only, "mezo,full,lora", "mezo,full")


def test_fsdp_over_8_devices_holds_an_eighth_of_the_state_per_device(plans):
  """Parameters and optimizer state (the step's arguments) split 8 ways by FSDP; the leaves without a
  hidden axis (the attention biases) and the batch stay whole, which bounds the excess."""
  one, eight = plans["one"], plans["fsdp8"]
  assert one["mesh"] == {"data": 1, "fsdp": 1, "tensor": 1} and eight["mesh"] == {"data": 1, "fsdp": 8, "tensor": 1}
  for method in ("mezo", "full"):
    single, sharded = one["methods"][method]["argument_mb"], eight["methods"][method]["argument_mb"]
    assert single / 8 <= sharded <= single / 8 * 1.15, (method, single, sharded)


def test_optimizer_state_and_activation_memory_order_the_methods(plans):
  """MeZO (ZO-SGD) has no optimizer state and keeps no activations for a backward pass; full fine-tuning
  with AdamW holds two moments per parameter, so about 3x MeZO's arguments; LoRA's state is tiny."""
  m = plans["one"]["methods"]
  assert m["mezo"]["optimizer_state_mb"] < 1e-3 and m["mezo"]["trainable"] == plans["one"]["parameters"]
  assert 2.8 <= m["full"]["argument_mb"] / m["mezo"]["argument_mb"] <= 3.1
  assert m["lora"]["trainable"] < 0.05 * plans["one"]["parameters"]
  assert m["lora"]["argument_mb"] < 1.1 * m["mezo"]["argument_mb"]
  assert m["mezo"]["temp_mb"] < m["full"]["temp_mb"]
  for method in m.values():  # the step donates its state: every parameter is written in place
    assert method["alias_mb"] > 0 and method["peak_mb"] == pytest.approx(
      method["argument_mb"] + method["temp_mb"] + method["output_mb"] - method["alias_mb"]
    )


@pytest.mark.slow  # four plans (25 s here): make test-all
def test_remat_and_micro_batches_cut_the_full_steps_temporaries(config_only):
  """Rematerialisation keeps each layer's input instead of its activations, and 4 micro-batches hold
  a quarter of the batch's: the temporaries fall, the arguments (weights, AdamW's moments) do not."""
  specs = "full,full:train.remat=full,full:train.remat=dots_saveable,full:train.grad_accum_steps=4"
  m = plan_small_roberta(config_only, specs, "")["one"]["methods"]
  plain = m["full"]
  assert (plain["remat"], plain["micro_batches"]) == ("none", 1)
  for spec, remat, micro in (
    ("full:train.remat=full", "full", 1),
    ("full:train.remat=dots_saveable", "dots_saveable", 1),
    ("full:train.grad_accum_steps=4", "none", 4),
  ):
    r = m[spec]
    assert (r["remat"], r["micro_batches"]) == (remat, micro)
    assert r["argument_mb"] == pytest.approx(plain["argument_mb"])
  # Two layers here: the backward still recomputes one layer's activations (8.9 of 14.0 MiB; 4.5 with 4 micro).
  assert m["full:train.remat=full"]["temp_mb"] < 0.75 * plain["temp_mb"]
  assert m["full:train.remat=dots_saveable"]["temp_mb"] < plain["temp_mb"]
  assert m["full:train.grad_accum_steps=4"]["temp_mb"] < 0.5 * plain["temp_mb"]


def test_plan_cli_prints_a_table_per_method_and_rejects_a_bad_mesh(config_only):
  command = [
    sys.executable,
    "-m",
    "fttpu.plan",
    "--config=configs/fewshot.py:family=roberta",
    f"--model={config_only}",
    f"--config.data.dir={data_dir()}",
    "--mesh=fsdp=2,tensor=2",
    "--methods=zo:zo.base=lora",
    "--hbm_gb=1",
  ]
  result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = result.stdout.splitlines()
  assert lines[1].startswith("mesh data=1 fsdp=2 tensor=2 on 4 cpu devices")
  assert lines[3].startswith("zo:zo.base=lora") and lines[3].endswith("yes")
  bad = subprocess.run(
    [*command[:-3], "--mesh=fsdp=2,pipeline=2"], cwd=REPO, capture_output=True, text=True, timeout=120
  )
  assert bad.returncode != 0 and "--mesh item 'pipeline=2' is invalid" in bad.stderr
  unknown = subprocess.run([*command[:4], "--model=gpt-5"], cwd=REPO, capture_output=True, text=True, timeout=120)
  assert unknown.returncode != 0 and "--model='gpt-5' is neither a preset" in unknown.stderr


ROW_SCRIPT = """
import json, sys
import jax
jax.config.update("jax_num_cpu_devices", 2)
from configs import fewshot
from fttpu import plan
mesh = {"data": 1, "fsdp": 2, "tensor": 1}
def config(task, **data):
  c = fewshot.get_config(f"family=opt,task={task}")
  c.train.batch_size = 4
  for key, value in data.items():
    c.data[key] = value
  return c
plans = {
  "squad": lambda: plan.plan(config("squad", max_length=40, max_new_tokens=8), sys.argv[1], mesh,
                             ["full", "mezo", "mezo:zo.objective=f1"]),
  "record": lambda: plan.plan(config("record", max_length=40), sys.argv[1], mesh, ["mezo"], choices=5),
  "copa": lambda: plan.plan(config("copa", max_length=40), sys.argv[1], mesh, ["mezo"]),
  "record_data_parallel": lambda: plan.plan(
    config("record", max_length=40), sys.argv[1], {"data": 2, "fsdp": 1, "tensor": 1}, ["mezo"], choices=5
  ),
}
out = {name: plans[name]() for name in sys.argv[2].split(",")}
print(json.dumps({name: {**result, "table": plan.table(result, 0)} for name, result in out.items()}))
"""


def plan_rows(tmp_path_factory, names: str) -> dict:
  """ROW_SCRIPT's plans `names` (comma-separated) on a tiny OPT over 2 fake devices."""
  path = tmp_path_factory.mktemp("tiny-opt")
  with open(path / "config.json", "w") as f:
    json.dump(tiny.hf_config("opt", 512), f)  # a tiny random OPT's config.json
  result = subprocess.run(
    [sys.executable, "-c", ROW_SCRIPT, str(path), names],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=600,
    env={**os.environ, "JAX_PLATFORMS": "cpu"},
  )
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def row_plans(tmp_path_factory):
  """ReCoRD and COPA (multiple choice by rows), ReCoRD under data parallelism too."""
  return plan_rows(tmp_path_factory, "record,copa,record_data_parallel")


@pytest.mark.slow  # three plans (26 s here); make test plans the row tasks' multiple choice below
def test_a_generation_task_plans_teacher_forcing_and_the_f1_objectives_decode(tmp_path_factory):
  """SQuAD's batch is generation.train_rows': teacher forcing (n, max_length) on the answer, each row's
  left-padded prompt (n, max_length - max_new_tokens) and its row index. zo.objective=f1 decodes those
  prompts inside the step (a key/value cache and a host callback) and compiles under plan: its temporaries
  exceed the loss objective's. Full fine-tuning holds AdamW's two moments beside the weights."""
  squad = plan_rows(tmp_path_factory, "squad")["squad"]
  shapes = squad["shapes"]
  assert squad["task"] == "squad" and shapes["input_ids"] == shapes["target_mask"] == [4, 40]
  assert shapes["prompt_input_ids"] == shapes["prompt_attention_mask"] == [4, 32] and shapes["row_index"] == [4]
  header = squad["table"].splitlines()[0]
  assert "causal classifier, task squad, batch 4 x 40 tokens, prompts 32 tokens" in header
  m = squad["methods"]
  assert m["mezo"]["optimizer_state_mb"] < 1e-3 and 2.5 <= m["full"]["argument_mb"] / m["mezo"]["argument_mb"] <= 3.1
  assert m["mezo:zo.objective=f1"]["temp_mb"] > m["mezo"]["temp_mb"]
  # the same state; the f1 step also reads the prompts (the loss objective's step leaves them unused: jit drops them)
  assert m["mezo"]["argument_mb"] < m["mezo:zo.objective=f1"]["argument_mb"] < 1.05 * m["mezo"]["argument_mb"]


def test_a_row_multiple_choice_task_plans_its_candidates_with_their_masks(row_plans):
  """ReCoRD with --choices=5 and COPA with its 2: causal batches (n, candidates, length) with choice_mask and
  gold_mask (n, candidates); more candidates, more activations."""
  record, copa = row_plans["record"], row_plans["copa"]
  for result, choices in ((record, 5), (copa, 2)):
    shapes = result["shapes"]
    assert shapes["input_ids"] == shapes["attention_mask"] == shapes["target_mask"] == [4, choices, 40]
    assert shapes["choice_mask"] == shapes["gold_mask"] == [4, choices]
    assert f"task {result['task']}, batch 4 x {choices} candidates x 40 tokens)" in result["table"].splitlines()[0]
  assert (record["task"], copa["task"]) == ("record", "copa")
  assert record["methods"]["mezo"]["temp_mb"] > copa["methods"]["mezo"]["temp_mb"]


def test_plan_cli_asks_for_recards_candidate_count():
  """ReCoRD's candidates vary per row: the CLI asks for --choices rather than guessing; COPA refuses another count."""
  command = [sys.executable, "-m", "fttpu.plan", "--model=opt-125m", "--mesh=data=1"]
  record = subprocess.run(
    [*command, "--config=configs/fewshot.py:family=opt,task=record"], cwd=REPO, capture_output=True, text=True
  )
  assert record.returncode != 0 and "give that number, >= 2 (fttpu.plan: --choices=N)" in record.stderr
  copa = subprocess.run(
    [*command, "--config=configs/fewshot.py:family=opt,task=copa", "--choices=3"],
    cwd=REPO,
    capture_output=True,
    text=True,
  )
  assert copa.returncode != 0 and "rows have 2 candidates each; give 2 or 0" in copa.stderr


def test_fsdp_splits_the_output_layers_logits_by_rows_as_data_parallelism_does(row_plans):
  """The causal LM head under fsdp: its input is split by rows (models.layers.split_rows_for_logits), so each device
  computes its rows' logits, as under data parallelism, where XLA left to itself contracted over the
  fsdp-sharded hidden axis and all-reduced the whole batch's float32 logits on every device (ReCoRD's 4 x 5
  x 40 tokens x 512 words here: 1.9x data parallelism's temporaries; OPT-13B at 16 x 20 x 768: 93 GiB)."""
  fsdp, data = (row_plans[name]["methods"]["mezo"]["temp_mb"] for name in ("record", "record_data_parallel"))
  assert fsdp <= 1.1 * data, (fsdp, data)
