"""Methods that train a named subset of whole leaves: full, zero-shot, bitfit, head, prefix."""
import functools

import jax
import jax.numpy as jnp
import optax

from fttpu.methods import masks
from fttpu.methods.base import make_method, wrap
from fttpu.sharding import to_host


def full(config, optimizer, model):
  """Every model parameter trains."""
  labels = functools.partial(masks.label_all, label=masks.TRAIN)
  return make_method("full", wrap, labels, masks.partition(labels, optimizer))


def zero_shot(config, optimizer, model):
  """Evaluation only: every parameter is frozen and no step runs."""
  labels = functools.partial(masks.label_all, label=masks.FREEZE)
  return make_method("zero_shot", wrap, labels, masks.partition(labels, optimizer), trains=False)


def bitfit(config, optimizer, model):
  """BitFit (Ben Zaken et al.): only the bias terms train."""
  labels = lambda tree: masks.label_matching(tree, r"^model/.*/bias$", "bitfit's bias pattern")
  return make_method("bitfit", wrap, labels, masks.partition(labels, optimizer))


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


def head(config, optimizer, model):
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
          features, data["labels"], classes, config.head.l2)
    else:
      kernel, bias = jax.jit(classifier.zero_shot_head)(params, data)
    return {"model": params, "head": {"kernel": to_host(kernel), "bias": to_host(bias)}}

  labels = lambda tree: masks.label_matching(tree, r"^head/")
  return make_method("head", prepare, labels, masks.partition(labels, optimizer), trains=solver != "lbfgs")


def prefix(config, optimizer, model):
  """Prefix tuning: `prefix.length` trained keys and values per layer, prepended in attention.

  Initialised from real activations (as the MeZO paper's prefix variant): the keys and values
  each layer computes for `length` random vocabulary tokens.
  """
  length = config.prefix.length

  def prepare(params, rng, context):
    vocab = model.config.vocab_size
    ids = jax.random.randint(rng, (1, length), min(1000, vocab // 2), vocab)  # past special tokens
    _, captured = context.module.apply({"params": params}, ids, jnp.ones_like(ids), mutable=["intermediates"])
    layers = captured["intermediates"]["layers"]
    tree = dict(params)
    tree["layers"] = {**tree["layers"], "prefix_key": to_host(layers["key_states"][0][:, 0]),
                      "prefix_value": to_host(layers["value_states"][0][:, 0])}
    return {"model": tree}

  labels = lambda tree: masks.label_matching(tree, r"/prefix_(key|value)$")
  return make_method("prefix", prepare, labels, masks.partition(labels, optimizer))
