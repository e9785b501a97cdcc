"""Methods that train a named subset of whole leaves: full, zero-shot, bitfit, head, prefix."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import optax

from fttpu.errors import check
from fttpu.methods import masks
from fttpu.methods.base import make_method, register, register_added_leaves, register_section, wrap
from fttpu.sharding import to_host


# Learning rates: AdamW, 200 steps, batch 8, chosen on the few-shot dev split; as zo.base (ZO-SGD, constant,
# batch 8): full is the best dev accuracy of 1e-5, 3e-5, 1e-4 over 500 steps (experiments/methods_sst2.py),
# the others are untuned guesses.


@register("full", learning_rate=2e-5, zo_learning_rate=1e-5)
def full(config, model):
  """Every model parameter trains."""
  return make_method("full", wrap, functools.partial(masks.label_all, label=masks.TRAIN))


@register("zero_shot", learning_rate=2e-5, frozen_base=True)
def zero_shot(config, model):
  """Evaluation only: every parameter is frozen and no step runs. With data.demonstrations = k > 0 (causal
  LMs) it is MeZO's ICL row: k answered training rows before each evaluated row (fttpu/data/demonstrations.py);
  the other methods train, so they refuse demonstrations."""
  return make_method("zero_shot", wrap, functools.partial(masks.label_all, label=masks.FREEZE), trains=False)


@register("bitfit", learning_rate=5e-4, zo_learning_rate=1e-3)
def bitfit(config, model):
  """BitFit (Ben Zaken et al.): only the bias terms train."""
  return make_method(
    "bitfit", wrap, lambda tree: masks.label_matching(tree, r"^model/.*/bias$", "bitfit's bias pattern")
  )


def fit_logistic_regression(features, labels, classes: int, l2: float, iterations: int = 200):
  """Multinomial logistic regression by L-BFGS (optax.lbfgs with zoom line search).

  Minimises mean cross-entropy + l2 / (2 n) * ||kernel||^2, i.e. scikit-learn's
  LogisticRegression(C=1/l2) objective scaled by 1/n. Returns (kernel, bias).
  """
  n = features.shape[0]

  def objective(params):
    logits = features @ params["kernel"] + params["bias"]
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss + 0.5 * l2 / n * jnp.sum(jnp.square(params["kernel"]))

  solver = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(objective)

  def step(carry, _):
    params, state = carry
    value, grad = value_and_grad(params, state=state)
    updates, state = solver.update(grad, state, params, value=value, grad=grad, value_fn=objective)
    return (optax.apply_updates(params, updates), state), value

  params = {"kernel": jnp.zeros((features.shape[1], classes)), "bias": jnp.zeros((classes,))}
  (params, _), _ = jax.lax.scan(step, (params, solver.init(params)), length=iterations)
  return params["kernel"], params["bias"]


def head_section() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(
    {
      "solver": "adam",  # adam: trained by the step from the zero-shot classifier; lbfgs: closed form
      "l2": 1.0,  # lbfgs: L2 penalty (scikit-learn's 1/C)
    }
  )


def check_head(config) -> None:
  check(config.head.solver in ("adam", "lbfgs"), "head.solver", config.head.solver, "['adam', 'lbfgs']")
  check(config.head.l2 > 0, "head.l2", config.head.l2, "a number > 0")


register_section("head", head_section, check_head)


@register("head", learning_rate=1e-2, zo_learning_rate=1e-3, frozen_base=True)
def head(config, model):
  """Linear probing: a linear head on the frozen model's features (see fttpu/classifier.py).

  head.solver=adam trains the head with the configured optimizer, starting from the zero-shot
  classifier (label-description features, or the verbalizer words' output embeddings), so step 0
  equals zero-shot.
  head.solver=lbfgs fits it in closed form (logistic regression by L-BFGS on the training
  features, as the MeZO paper's LP baseline) and runs no steps.
  """
  solver = config.head.solver

  def prepare(params, rng, context):
    data, classifier = context.train_set, context.classifier
    if solver == "lbfgs":
      features = jax.jit(classifier.features)(params, data)
      classes = jax.eval_shape(classifier.zero_shot_head, params, data)[1].shape[0]
      kernel, bias = jax.jit(fit_logistic_regression, static_argnums=(2,))(
        features, data["labels"], classes, config.head.l2
      )
    else:
      kernel, bias = jax.jit(classifier.zero_shot_head)(params, data)
    return {"model": params, "head": {"kernel": to_host(kernel), "bias": to_host(bias)}}

  return make_method("head", prepare, lambda tree: masks.label_matching(tree, r"^head/"), trains=solver != "lbfgs")


register_section(
  "prefix",
  lambda: ml_collections.ConfigDict({"length": 5}),  # prefix tokens per layer
  lambda config: check(config.prefix.length >= 1, "prefix.length", config.prefix.length, "an integer >= 1"),
)


register_added_leaves(
  "prefix_", lambda path, shape, model_axes: ("layers", None, "heads", "kv")
)  # (layers, length, ...)


@register("prefix", learning_rate=3e-2, zo_learning_rate=1e-3, frozen_base=True)
def prefix(config, model):
  """Prefix tuning: `prefix.length` trained keys and values per layer, prepended in attention.

  Initialised from real activations (as the MeZO paper's prefix variant): the keys and values
  each layer computes for `length` random vocabulary tokens.
  """
  length = config.prefix.length

  def prepare(params, rng, context):
    vocab = model.config.vocab_size
    ids = jax.random.randint(rng, (1, length), min(1000, vocab // 2), vocab)  # past special tokens
    _, captured = model.module.apply({"params": params}, ids, jnp.ones_like(ids), mutable=["intermediates"])
    layers = captured["intermediates"]["layers"]
    tree = dict(params)
    tree["layers"] = {
      **tree["layers"],
      "prefix_key": to_host(layers["key_states"][0][:, 0]),
      "prefix_value": to_host(layers["value_states"][0][:, 0]),
    }
    return {"model": tree}

  return make_method("prefix", prepare, lambda tree: masks.label_matching(tree, r"/prefix_(key|value)$"))
