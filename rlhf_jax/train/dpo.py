"""DPO-family train and eval steps (losses/preference.py), reference log-probs given per pair.

Per pair: sequence log-probs log π(y|x) = Σ_t m_t log π(y_t | x, y_<t) of chosen and rejected
under the policy (and, precomputed once, under the frozen reference); the configured loss maps
them to a per-pair loss, averaged over the batch. Implicit rewards β·(log π − log π_ref) give the
accuracy and margin metrics (Rafailov et al. 2023). The train step accumulates gradients over
`train.microbatches` micro-batches and, with LoRA (train/lora.py), trains the adapters only.
"""

from __future__ import annotations

import jax.numpy as jnp

from rlhf_jax import losses
from rlhf_jax.generation import scoring
from rlhf_jax.train import microbatch

REFERENCE_FREE = ("simpo", "orpo")
# Preference-family entries that are terms added to a pair loss (sft_coef · chosen NLL, the RPO
# term), not pair losses of their own.
TERMS = ("chosen_nll",)


def pair_loss_names() -> list[str]:
  """The loss.name values `pair_loss` can run: the preference family less its TERMS."""
  return [n for n in losses.names("preference") if n not in TERMS]


def sequence_logps(graphdef, params, tokens_BxS, mask_BxS, completion_mask_BxS, prompt_len: int):
  """(Σ completion-token log-probs [B], completion lengths [B]) of [prompt | completion] rows."""
  completion_mask_BxT = completion_mask_BxS[:, prompt_len:]
  scores = scoring.score_tokens(graphdef, params, tokens_BxS[:, :prompt_len],
                                mask_BxS[:, :prompt_len], tokens_BxS[:, prompt_len:],
                                completion_mask_BxT)
  return (jnp.sum(scores.logp_BxT, axis=1),
          jnp.sum(completion_mask_BxT, axis=1).astype(jnp.float32))


def pair_logps(graphdef, params, batch, prompt_len: int):
  pc, lc = sequence_logps(graphdef, params, batch["chosen_tokens"], batch["chosen_mask"],
                          batch["chosen_completion_mask"], prompt_len)
  pr, lr = sequence_logps(graphdef, params, batch["rejected_tokens"], batch["rejected_mask"],
                          batch["rejected_completion_mask"], prompt_len)
  return pc, pr, lc, lr


def pair_loss(loss_cfg, pc, pr, rc, rr, lc, lr):
  """Per-pair loss of `loss_cfg.name` (+ sft_coef · chosen NLL, the RPO term)."""
  fn = losses.get(loss_cfg.name)
  lengths = {"chosen_lengths": lc, "rejected_lengths": lr}
  if loss_cfg.name == "simpo":
    loss_B = fn(pc, pr, beta=loss_cfg.beta, gamma=loss_cfg.simpo_gamma, **lengths)
  elif loss_cfg.name == "orpo":
    loss_B = fn(pc, pr, beta=loss_cfg.beta, **lengths)
  else:
    loss_B = fn(pc, pr, rc, rr, beta=loss_cfg.beta, label_smoothing=loss_cfg.label_smoothing,
                **lengths)
  if loss_cfg.sft_coef:
    loss_B = loss_B + loss_cfg.sft_coef * losses.chosen_nll_loss(pc, chosen_lengths=lc)
  return loss_B


def pair_metrics(beta, pc, pr, rc, rr):
  chosen_B, rejected_B = beta * (pc - rc), beta * (pr - rr)
  return {"rewards/chosen": jnp.mean(chosen_B), "rewards/rejected": jnp.mean(rejected_B),
          "rewards/margin": jnp.mean(chosen_B - rejected_B),
          "rewards/accuracy": jnp.mean((chosen_B > rejected_B).astype(jnp.float32)),
          "logps/chosen": jnp.mean(pc), "logps/rejected": jnp.mean(pr)}


def make_train_step(graphdef, tx, loss_cfg, prompt_len: int, *, microbatches: int = 1,
                    trainable=None):
  """`train_step(state, batch, rng) -> (state, metrics)` on the batch-mean pair loss.

  microbatches = k: the pairs are processed in k micro-batches (train/microbatch.py) whose summed
    losses, divided by the whole batch's pair count, add up to the full-batch mean (and gradient).
  trainable: a pytree of bools like the params (train/lora.py's mask), or None (all). Frozen
    leaves get stop_gradient (exact zero gradients).
  """
  def objective(params, micro, batch):
    num_pairs = batch["chosen_tokens"].shape[0]
    pc, pr, lc, lr = pair_logps(graphdef, params, micro, prompt_len)
    rc, rr = micro["ref_chosen_logps"], micro["ref_rejected_logps"]
    loss = jnp.sum(pair_loss(loss_cfg, pc, pr, rc, rr, lc, lr)) / num_pairs
    # pair_metrics are means over this micro-batch: weighted by its share, they add up.
    share = pc.shape[0] / num_pairs
    metrics = {k: v * share for k, v in pair_metrics(loss_cfg.beta, pc, pr, rc, rr).items()}
    return loss, {"loss": loss, **metrics}

  return microbatch.make_step(objective, tx, microbatches=microbatches, trainable=trainable)


def make_reference_step(graphdef, prompt_len: int):
  """Reference sequence log-probs of a batch of pairs (run once over the data, then cached)."""
  def ref_step(params, batch):
    pc, pr, _, _ = pair_logps(graphdef, params, batch, prompt_len)
    return pc, pr
  return ref_step


def make_eval_step(graphdef, beta: float, prompt_len: int):
  """Sums over a batch of: pairs, correct implicit-reward orderings, implicit margin."""
  def eval_step(params, batch):
    pc, pr, _, _ = pair_logps(graphdef, params, batch, prompt_len)
    valid_B = (jnp.sum(batch["chosen_mask"], axis=1) > 0).astype(jnp.float32)
    margin_B = beta * ((pc - batch["ref_chosen_logps"]) - (pr - batch["ref_rejected_logps"]))
    return {"pairs": jnp.sum(valid_B), "correct": jnp.sum((margin_B > 0) * valid_B),
            "margin": jnp.sum(margin_B * valid_B)}
  return eval_step
