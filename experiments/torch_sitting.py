"""One sitting against the PyTorch peers: fttpu's steps beside HF transformers, PEFT and the published MeZO.

  python -m experiments.torch_sitting --workdir=workdirs/torch_sitting      (make bench-torch)

In one sitting on this machine: ../shared/bench/peer_torch.py (PyTorch 2.13 CPU, HF transformers, PEFT
LoRA r=8 on query/value, MeZO as published) times its steps, then `fttpu.bench` times fttpu's on the
same MiniLM checkpoint, batch, sequence length and thread count, then the peers run again. Each figure
is a median after warm-up in a process of its own (compile time apart); the peers' two runs show how
much the machine drifted meanwhile. Every ratio divides by the mean of the peers' two runs. fttpu's
methods run --rounds times in turn: its figures are the median round's, `x forward` the median of
the rounds' own ratios.

Writes WORKDIR/results.md (the table), WORKDIR/results.png (fttpu / PyTorch, step time and peak RSS)
and WORKDIR/sitting.json (every raw figure).
"""

import datetime
import json
import os
import subprocess
import sys

from absl import flags

from fttpu import cli

PEERS = ("forward", "full", "lora", "mezo")  # peer_torch's methods, each fttpu's method of the same name
FTTPU_ONLY = ("mezo:zo.noise=rademacher", "zo:zo.base=lora")
LABELS = {
  "forward": "forward",
  "full": "full AdamW",
  "lora": "LoRA r=8 q,v (PEFT)",
  "mezo": "MeZO, gaussian (published algorithm)",
  "mezo:zo.noise=rademacher": "MeZO, sign noise",
  "zo:zo.base=lora": "MeZO over LoRA",
}
FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command line's flags (defined when it runs, so that importing the table code defines none)."""
  flags.DEFINE_string("workdir", "workdirs/torch_sitting", "Where results.md, results.png and sitting.json go.")
  flags.DEFINE_string("peer", "../shared/bench/peer_torch.py", "The PyTorch peers' script.")
  flags.DEFINE_list("extra_methods", [], "More fttpu methods for the table, without a peer (full:train.remat=full).")
  flags.DEFINE_integer("batch", 16, "Sentences per batch.")
  flags.DEFINE_integer("seq", 64, "Tokens per sentence.")
  flags.DEFINE_integer("steps", 5, "Timed steps (after warm-up) per figure.")
  flags.DEFINE_integer("rounds", 3, "Rounds of fttpu's methods in turn (fttpu.bench --rounds).", lower_bound=1)
  flags.DEFINE_integer("threads", 2, "The peers' torch threads (fttpu's XLA uses every core).")


def run_peers() -> dict:
  env = {**os.environ, "THREADS": str(FLAGS.threads), "BATCH": str(FLAGS.batch), "SEQ": str(FLAGS.seq)}
  env["STEPS"] = str(FLAGS.steps)
  result = subprocess.run([sys.executable, FLAGS.peer], capture_output=True, text=True, env=env)
  if result.returncode:
    raise RuntimeError(f"{FLAGS.peer} failed:\n{result.stderr[-3000:]}")
  return json.loads(result.stdout[result.stdout.index("{") :])


def run_fttpu(methods: list) -> dict:
  command = [sys.executable, "-m", "fttpu.bench", f"--methods={','.join(methods)}", f"--batch={FLAGS.batch}"]
  command += [f"--seq={FLAGS.seq}", f"--steps={FLAGS.steps}", f"--rounds={FLAGS.rounds}"]
  result = subprocess.run(command, capture_output=True, text=True)
  if result.returncode:
    raise RuntimeError(f"fttpu.bench failed:\n{result.stderr[-3000:]}")
  return json.loads(result.stdout[result.stdout.index("{") :])


def rows(before: dict, ours: dict, after: dict) -> list[dict]:
  """One row per fttpu method: its step time and peak RSS, the peers' where there is one, the ratios."""
  forward = ours["forward"]["step_s"]
  out = []
  for method in [m for m in ours if isinstance(ours[m], dict) and "step_s" in ours[m]]:
    row = {"method": method, "fttpu_s": ours[method]["step_s"], "fttpu_rss_mb": ours[method]["max_rss_mb"]}
    # the median of the rounds' own ratios where fttpu.bench gives one (the machine drifts between rounds)
    row["x_forward"] = ours.get("ratios_to_forward", {}).get(method, row["fttpu_s"] / forward)
    if method in PEERS:
      peer_s = (before[method]["step_s"], after[method]["step_s"])
      peer_rss = (before[method]["max_rss_mb"], after[method]["max_rss_mb"])
      row.update(peer_s=peer_s, peer_rss_mb=peer_rss)
      row["time_ratio"] = row["fttpu_s"] / (sum(peer_s) / 2)
      row["rss_ratio"] = row["fttpu_rss_mb"] / (sum(peer_rss) / 2)
    out.append(row)
  return out


def table(table_rows: list[dict], header: str) -> str:
  lines = [
    header,
    "",
    "| step | PyTorch s (before / after) | fttpu s | fttpu / PyTorch | x forward | peak RSS MB PyTorch / fttpu | RSS ratio |",
    "|---|---:|---:|---:|---:|---:|---:|",
  ]
  for r in table_rows:
    peer = f"{r['peer_s'][0]:.3f} / {r['peer_s'][1]:.3f}" if "peer_s" in r else ""
    rss = f"{sum(r['peer_rss_mb']) / 2:.0f} / " if "peer_rss_mb" in r else ""
    ratio = lambda key: f"{r[key]:.2f}" if key in r else ""
    lines.append(
      f"| {LABELS.get(r['method'], r['method'])} | {peer} | {r['fttpu_s']:.3f} | {ratio('time_ratio')} | "
      f"{r['x_forward']:.2f}x | {rss}{r['fttpu_rss_mb']:.0f} | {ratio('rss_ratio')} |"
    )
  return "\n".join(lines) + "\n"


def plot(table_rows: list[dict], path: str) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  peered = [r for r in table_rows if "time_ratio" in r]
  names = [LABELS[r["method"]].split(" (")[0] for r in peered]
  figure, axes = plt.subplots(1, 2, figsize=(10, 3.6))
  for ax, key, title in zip(axes, ("time_ratio", "rss_ratio"), ("step time", "peak RSS")):
    ax.barh(names, [r[key] for r in peered], color="tab:blue")
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_xlim(0, 1.2 * max([1.0] + [r[key] for r in peered]))
    ax.set_title(f"fttpu / PyTorch, {title}")
    ax.invert_yaxis()
    for i, r in enumerate(peered):
      ax.text(r[key], i, f" {r[key]:.2f}", va="center")
  figure.tight_layout()
  figure.savefig(path, dpi=110)


def main(argv):
  del argv
  os.makedirs(FLAGS.workdir, exist_ok=True)
  started = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
  before = run_peers()
  ours = run_fttpu(list(PEERS) + list(FTTPU_ONLY) + FLAGS.extra_methods)
  after = run_peers()
  ended = datetime.datetime.now().strftime("%H:%M")
  header = (
    f"One sitting, {started}-{ended}, {ours['cpu_count']} cores: MiniLM, batch {FLAGS.batch} x {FLAGS.seq} tokens, "
    f"median of {FLAGS.steps} steps after warm-up, fttpu's figures the median of {FLAGS.rounds} rounds of its methods in turn; PyTorch peers ({FLAGS.threads} threads) before and after fttpu; "
    "ratios over the peers' mean, `x forward` over fttpu's forward."
  )
  table_rows = rows(before, ours, after)
  text = table(table_rows, header)
  with open(os.path.join(FLAGS.workdir, "results.md"), "w") as f:
    f.write(text)
  with open(os.path.join(FLAGS.workdir, "sitting.json"), "w") as f:
    json.dump({"before": before, "fttpu": ours, "after": after, "header": header}, f, indent=1)
  plot(table_rows, os.path.join(FLAGS.workdir, "results.png"))
  print(text)


if __name__ == "__main__":
  define_flags()
  cli.run(main)
