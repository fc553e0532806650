"""Generation and scoring: cache vs recomputation, sampling log-probs, padding invariance, sampling
distribution, stop semantics, compile counts, and the 8-device mesh against 1 device."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rlhf_jax import generation as gen
from rlhf_jax.losses.logprobs import token_entropy, token_logps
from rlhf_jax.models import ScalarModel, Transformer, get_model_config, last_token_values
from rlhf_jax.parallel import mesh as mesh_lib, sharding as sharding_lib

VOCAB = 64


def _init(make_model, seed=0):
  """(graphdef, pure-dict params) of make_model(rngs). The 'rbg' key's random ops compile much
  faster than threefry's, and this suite's time is mostly compilation."""
  model = make_model(nnx.Rngs(jax.random.key(seed, impl="rbg")))
  graphdef, state = nnx.split(model, nnx.Param)
  return graphdef, nnx.to_pure_dict(state)


def _tiny(vocab=VOCAB):
  return lambda rngs: Transformer(get_model_config("tiny", vocab_size=vocab), rngs=rngs)


@pytest.fixture(scope="module")
def policy():
  return _init(_tiny())


# Shared by several tests so that their (config, shape) compilations are shared too.
GREEDY = gen.SamplingConfig(max_new_tokens=10, greedy=True, eos_id=VOCAB + 1)  # never stops
SAMPLED = gen.SamplingConfig(max_new_tokens=9, temperature=0.9, top_k=40, top_p=0.95)


@pytest.fixture(scope="module")
def sampled_fn(policy):
  return gen.make_generate_fn(policy[0], SAMPLED)


def _prompts(batch, length, real, seed=0):
  """Left-padded random prompts; row b has real[b] real tokens (BOS first)."""
  rng = np.random.default_rng(seed)
  tokens = np.zeros((batch, length), np.int32)
  mask = np.zeros((batch, length), np.int32)
  for b, n in enumerate(real):
    tokens[b, length - n:] = np.concatenate([[1], rng.integers(3, VOCAB, n - 1)])
    mask[b, length - n:] = 1
  return tokens, mask


@functools.lru_cache(maxsize=None)
def _full_logits(graphdef):
  """Jitted full forward pass (no cache): float32 logits [B, S, V]."""
  return jax.jit(lambda params, tokens, mask: nnx.merge(graphdef, params)(tokens, mask_BxS=mask))


def _greedy_by_recompute(graphdef, params, prompt_tokens, prompt_mask, config):
  """Reference: greedy decoding by a full forward pass over the whole row at every step, with
  stop tokens suppressed (numpy) while t < min_new_tokens."""
  b, p = prompt_tokens.shape
  t_max = config.max_new_tokens
  tokens = np.concatenate([prompt_tokens, np.zeros((b, t_max), np.int32)], 1)
  mask = np.concatenate([prompt_mask, np.zeros((b, t_max), np.int32)], 1)
  done = np.zeros(b, bool)
  for t in range(t_max):
    logits = np.array(_full_logits(graphdef)(params, tokens, mask)[:, p + t - 1])
    if t < config.min_new_tokens:
      logits[:, [v for v in config.stop_ids if v < logits.shape[1]]] = -np.inf
    tokens[:, p + t] = np.where(done, config.pad_id, logits.argmax(-1))
    mask[:, p + t] = ~done
    done |= np.isin(tokens[:, p + t], config.stop_ids)
  return tokens[:, p:], mask[:, p:]


def _sampling_distribution(logits_V, temperature=1.0, top_k=0, top_p=1.0):
  """Numpy reference of the sampling distribution: softmax(z / T), top-k, then top-p."""
  z = logits_V.astype(np.float64) / temperature
  keep = np.ones(z.shape, bool)
  if top_k:
    keep &= z >= np.sort(z)[::-1][top_k - 1]
  probs = np.where(keep, np.exp(z - z.max()), 0.0)
  probs /= probs.sum()
  order = np.argsort(-probs, kind="stable")
  mass_before = np.cumsum(probs[order]) - probs[order]
  keep[order[mass_before >= top_p]] = False
  probs = np.where(keep, probs, 0.0)
  return probs / probs.sum()


@functools.lru_cache(maxsize=None)
def _jitted_generate(graphdef, config):
  return jax.jit(functools.partial(gen.generate, graphdef, config=config))


def _generate(graphdef, params, prompts, mask, config, seed=0):
  return jax.device_get(_jitted_generate(graphdef, config)(params, prompts, mask,
                                                           jax.random.key(seed)))


def test_greedy_cache_equals_recompute_with_stops(policy):
  graphdef, params = policy
  prompts, mask = _prompts(4, 8, real=[8, 5, 1, 3])
  ref_tokens, _ = _greedy_by_recompute(graphdef, params, prompts, mask, GREEDY)
  out = _generate(graphdef, params, prompts, mask, GREEDY)
  np.testing.assert_array_equal(out.tokens_BxT, ref_tokens)
  assert out.mask_BxT.all() and not out.stopped_B.any()

  # Stop rows mid-way: the greedy token at t=4 of row 0 and at t=2 of row 2 become stop tokens
  # (min_new_tokens=2 also suppresses them at t < 2, which the reference applies as well).
  stops = (int(ref_tokens[0, 4]), int(ref_tokens[2, 2]))
  config = gen.SamplingConfig(max_new_tokens=10, greedy=True, eos_id=stops[0],
                              stop_token_ids=(stops[1],), min_new_tokens=2)
  ref_tokens, ref_mask = _greedy_by_recompute(graphdef, params, prompts, mask, config)
  out = _generate(graphdef, params, prompts, mask, config)
  np.testing.assert_array_equal(out.tokens_BxT, ref_tokens)
  np.testing.assert_array_equal(out.mask_BxT, ref_mask)
  for b in range(4):
    n = int(out.mask_BxT[b].sum())
    assert out.mask_BxT[b, :n].all() and not out.mask_BxT[b, n:].any()  # right-padded
    assert (out.tokens_BxT[b, n:] == config.pad_id).all() and (out.logp_BxT[b, n:] == 0).all()
    # A stopped row ends with its stop token inside the mask (the losses see EOS).
    assert out.stopped_B[b] == (out.tokens_BxT[b, n - 1] in config.stop_ids)
  assert out.stopped_B.sum() >= 2 and (out.mask_BxT.sum(1) < 10).sum() >= 2  # stops exercised
  assert out.mask_BxT[:, :2].all() and not np.isin(out.tokens_BxT[:, :2], stops).any()


FAMILY_OVERRIDES = {
    "qwen2": dict(family="qwen2"), "gemma": dict(family="gemma"), "gpt2": dict(family="gpt2"),
    "llama_linear_rope": dict(rope_scaling=(("rope_type", "linear"), ("factor", 4.0))),
}


@pytest.mark.parametrize("name", list(FAMILY_OVERRIDES))
def test_greedy_cache_equals_recompute_every_family(name):
  """The decode step reads each family's options (q/k/v and output biases, embedding scale,
  learned positions instead of RoPE, RoPE frequency scaling, tied embeddings, GeGLU / plain
  MLP). Parameters are perturbed so biases and norm weights are far from their zero/one init."""
  cfg = get_model_config("tiny", vocab_size=VOCAB, **FAMILY_OVERRIDES[name])
  graphdef, params = _init(lambda rngs: Transformer(cfg, rngs=rngs))
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  params = jax.tree.unflatten(treedef, [x + 0.3 * jax.random.normal(k, x.shape, x.dtype)
                                        for x, k in zip(leaves, keys)])
  prompts, mask = _prompts(3, 6, real=[6, 4, 1], seed=2)
  ref_tokens, _ = _greedy_by_recompute(graphdef, params, prompts, mask, GREEDY)
  out = _generate(graphdef, params, prompts, mask, GREEDY)
  np.testing.assert_array_equal(out.tokens_BxT, ref_tokens)
  logits = _full_logits(graphdef)(params, np.concatenate([prompts, out.tokens_BxT], 1),
                                  np.concatenate([mask, out.mask_BxT], 1))
  ref_logp = token_logps(logits[:, 5:-1], jnp.asarray(out.tokens_BxT))
  # Greedy log-probs are those of the model's softmax (temperature 1).
  np.testing.assert_allclose(out.logp_BxT, ref_logp, atol=2e-5)


SAMPLING_CONFIGS = {
    "greedy": dict(greedy=True),
    "temp1.3_topk12_topp0.8_min3": dict(temperature=1.3, top_k=12, top_p=0.8, min_new_tokens=3),
}


@pytest.mark.parametrize("name", list(SAMPLING_CONFIGS))
def test_sampling_logps_equal_full_forward_rescoring(policy, name):
  graphdef, params = policy
  prompts, mask = _prompts(6, 7, real=[7, 2, 5, 1, 6, 3], seed=1)
  config = gen.SamplingConfig(max_new_tokens=10, **SAMPLING_CONFIGS[name])

  @jax.jit
  def rollout(params, prompts, mask, rng):  # generation and scoring inside one jitted function
    out = gen.generate(graphdef, params, prompts, mask, rng, config=config)
    scores = gen.score_tokens(graphdef, params, prompts, mask, out.tokens_BxT, out.mask_BxT,
                              config=config, with_entropy=True)
    # Independent recomputation: full forward logits -> the same processing -> log-softmax.
    logits = nnx.merge(graphdef, params)(jnp.concatenate([prompts, out.tokens_BxT], 1),
                                         mask_BxS=jnp.concatenate([mask, out.mask_BxT], 1))
    z = gen.process_logits(logits[:, 6:-1], config, jnp.arange(10)[None])
    return out, scores, (token_logps(z, out.tokens_BxT), token_entropy(z))

  out, scores, (ref_logp, ref_entropy) = jax.device_get(rollout(params, prompts, mask,
                                                                jax.random.key(3)))
  assert out.logp_BxT.dtype == np.float32 and scores.logp_BxT.dtype == np.float32
  assert np.isfinite(out.logp_BxT).all() and (out.logp_BxT <= 0).all()
  np.testing.assert_allclose(out.logp_BxT, scores.logp_BxT, atol=2e-5)
  real = out.mask_BxT > 0
  np.testing.assert_allclose(out.logp_BxT, np.where(real, ref_logp, 0.0), atol=2e-5)
  np.testing.assert_allclose(scores.entropy_BxT, np.where(real, ref_entropy, 0.0), atol=1e-5)
  if config.min_new_tokens:
    assert not np.isin(out.tokens_BxT[:, :config.min_new_tokens], config.stop_ids).any()
  # Deterministic for a given rng; a different rng gives different samples.
  again = jax.device_get(rollout(params, prompts, mask, jax.random.key(3))[0])
  np.testing.assert_array_equal(again.tokens_BxT, out.tokens_BxT)
  if not config.greedy:
    other = jax.device_get(rollout(params, prompts, mask, jax.random.key(4))[0])
    assert (other.tokens_BxT != out.tokens_BxT).any()


def test_left_padding_amount_does_not_change_greedy_completion(policy):
  graphdef, params = policy
  base, _ = _prompts(1, 5, real=[5], seed=2)
  results = []
  for length in (8, 13):  # P=8 pads it by 3 tokens, P=13 by 8
    prompts = np.zeros((4, length), np.int32)
    mask = np.zeros((4, length), np.int32)
    prompts[:, -5:], mask[:, -5:] = base, 1
    prompts[1, :length - 5] = 7  # garbage under the pad mask must not matter either
    out = _generate(graphdef, params, prompts, mask, GREEDY)
    results.append(out)
    np.testing.assert_array_equal(out.tokens_BxT, np.repeat(out.tokens_BxT[:1], 4, 0))
  for out in results[1:]:
    np.testing.assert_array_equal(out.tokens_BxT, results[0].tokens_BxT)
    np.testing.assert_array_equal(out.mask_BxT, results[0].mask_BxT)
    np.testing.assert_allclose(out.logp_BxT, results[0].logp_BxT, atol=1e-5)


@pytest.mark.parametrize("kwargs", [dict(temperature=0.8), dict(top_k=5),
                                    dict(top_p=0.6, temperature=1.5)],
                         ids=["temp0.8", "topk5", "topp0.6_temp1.5"])
def test_next_token_frequencies_match_sampling_distribution(policy, kwargs):
  """N samples of one prompt's first token vs pi = softmax(logits / T) after top-k / top-p.

  Bound: E[TV] <= 0.5 * sqrt(|support| / N) (Cauchy-Schwarz on sum_v E|p_hat_v - p_v|), and TV
  moves by at most 1/N per sample, so P(TV > E[TV] + eps) <= exp(-2 N eps^2) (McDiarmid). With
  N = 20000, |support| <= 64 and eps = 0.02 the bound TV <= 0.05 fails with probability < 1e-6.
  """
  graphdef, params = policy
  n = 20_000
  config = gen.SamplingConfig(max_new_tokens=1, eos_id=VOCAB + 1, **kwargs)
  prompts = np.ones((n, 1), np.int32)  # P = 1: just BOS (no prefill, the first step feeds it)
  out = _generate(graphdef, params, prompts, np.ones_like(prompts), config, seed=11)
  logits = np.asarray(_full_logits(graphdef)(params, prompts[:1], np.ones((1, 1), np.int32)))[0, -1]
  pi = _sampling_distribution(logits, **kwargs)
  if "top_k" in kwargs:
    assert (pi > 0).sum() == kwargs["top_k"]
  if "top_p" in kwargs:
    assert 1 < (pi > 0).sum() < VOCAB // 2
  emitted = out.tokens_BxT[:, 0]
  assert (pi[emitted] > 0).all(), "emitted a token outside the top-k / top-p set"
  freq = np.bincount(emitted, minlength=VOCAB) / n
  tv = 0.5 * np.abs(freq - pi).sum()
  assert tv < 0.05, f"total variation {tv:.4f} between sampled frequencies and the distribution"
  np.testing.assert_allclose(out.logp_BxT[:, 0], np.log(pi[emitted]), atol=1e-5)


def test_all_rows_stopping_ends_the_loop(policy):
  graphdef, params = policy
  prompts, mask = _prompts(4, 8, real=[8, 4, 2, 6], seed=4)
  first = _generate(graphdef, params, prompts, mask, GREEDY)
  # Every row's greedy first token made a stop token: all rows stop at t=0 and the loop exits.
  stops = tuple(dict.fromkeys(int(x) for x in first.tokens_BxT[:, 0]))
  config = gen.SamplingConfig(max_new_tokens=10, greedy=True, eos_id=stops[0],
                              stop_token_ids=stops[1:])
  out = _generate(graphdef, params, prompts, mask, config)
  np.testing.assert_array_equal(out.mask_BxT, np.eye(1, 10, dtype=np.int32).repeat(4, 0))
  np.testing.assert_array_equal(out.tokens_BxT[:, 0], first.tokens_BxT[:, 0])
  np.testing.assert_allclose(out.logp_BxT[:, 0], first.logp_BxT[:, 0], atol=1e-6)
  assert out.stopped_B.all() and (out.tokens_BxT[:, 1:] == 0).all()
  assert (out.logp_BxT[:, 1:] == 0).all()


def test_one_compilation_per_shape(policy, sampled_fn):
  params = policy[1]
  for seed in range(3):
    prompts, mask = _prompts(8, 6, real=[6, 3 + seed, 1, 5, 2, 6, 4, 1], seed=seed)
    jax.block_until_ready(sampled_fn(params, prompts, mask, jax.random.key(seed)))
  assert sampled_fn.jitted._cache_size() == 1


def test_values_and_rewards_from_a_scalar_model(policy):
  cfg = get_model_config("tiny", vocab_size=VOCAB)
  graphdef, params = _init(lambda rngs: ScalarModel(cfg, rngs=rngs), seed=1)
  prompts, mask = _prompts(3, 5, real=[5, 2, 4], seed=6)
  completion = np.array([[5, 6, 2, 0], [7, 2, 0, 0], [8, 9, 10, 11]], np.int32)
  cmask = (np.arange(4)[None] < np.array([[3], [2], [4]])).astype(np.int32)
  tokens, full_mask = np.concatenate([prompts, completion], 1), np.concatenate([mask, cmask], 1)

  @jax.jit
  def run(params):
    values = nnx.merge(graphdef, params)(jnp.asarray(tokens), mask_BxS=jnp.asarray(full_mask))
    return gen.score_values(graphdef, params, prompts, mask, completion, cmask), values

  got, values = jax.device_get(run(params))
  np.testing.assert_allclose(got.values_BxT, np.where(cmask > 0, values[:, 4:8], 0.0), atol=1e-6)
  np.testing.assert_allclose(got.last_B, [values[0, 7], values[1, 6], values[2, 8]], atol=1e-6)
  np.testing.assert_allclose(got.last_B, last_token_values(values, full_mask), atol=1e-6)
  with pytest.raises(ValueError, match="per-token scalars"):  # an LM is not a value model
    jax.eval_shape(functools.partial(gen.score_values, policy[0]), policy[1], prompts, mask,
                   completion, cmask)


def test_8_device_mesh_matches_1_device(policy, sampled_fn):
  assert jax.device_count() == 8
  graphdef, params = policy
  mesh = mesh_lib.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  abstract = nnx.eval_shape(lambda: _tiny()(nnx.Rngs(0)))
  shardings = sharding_lib.param_shardings(nnx.state(abstract, nnx.Param), mesh,
                                           sharding_lib.DEFAULT_RULES)
  sharded_params = jax.device_put(params, shardings)
  assert any(len(x.sharding.device_set) == 8 and not x.sharding.is_fully_replicated
             for x in jax.tree.leaves(sharded_params))
  prompts, mask = _prompts(8, 6, real=[6, 1, 3, 5, 2, 6, 4, 1], seed=7)
  key = jax.random.key(8)
  single = sampled_fn(params, prompts, mask, key)
  multi = gen.make_generate_fn(graphdef, SAMPLED, mesh=mesh, param_shardings=shardings)(
      sharded_params, prompts, mask, key)
  assert multi.tokens_BxT.sharding.spec[0] == ("data", "fsdp")
  np.testing.assert_array_equal(multi.tokens_BxT, single.tokens_BxT)
  np.testing.assert_array_equal(multi.mask_BxT, single.mask_BxT)
  np.testing.assert_allclose(multi.logp_BxT, single.logp_BxT, atol=1e-5)
  # While decoding, weights drop the batch (fsdp) split and keep the tensor split.
  rules = dict(gen.decode_rules(sharding_lib.DEFAULT_RULES))
  assert rules["embed"] is None and rules["batch"] == ("data", "fsdp") and rules["mlp"] == "tensor"
  score = gen.make_score_fn(graphdef, config=SAMPLED, mesh=mesh, param_shardings=shardings)
  scored = score(sharded_params, prompts, mask, multi.tokens_BxT, multi.mask_BxT)
  np.testing.assert_allclose(scored.logp_BxT, single.logp_BxT, atol=2e-5)


def test_bad_inputs_get_clear_errors(policy):
  graphdef, params = policy
  fn = gen.make_generate_fn(graphdef, gen.SamplingConfig(max_new_tokens=2))  # fails before jit
  prompts, mask = _prompts(2, 4, real=[4, 2])
  key = jax.random.key(0)
  with pytest.raises(ValueError, match=r"rows \[1\] have no real token"):
    fn(params, prompts, mask * np.array([[1], [0]], np.int32), key)
  with pytest.raises(ValueError, match="not left-padded"):
    fn(params, prompts, mask[:, ::-1], key)
  with pytest.raises(ValueError, match="shape"):
    fn(params, prompts, mask[:, :3], key)
  with pytest.raises(ValueError, match=r"must lie in \[0, 64\)"):
    fn(params, prompts + VOCAB, mask, key)
  with pytest.raises(ValueError, match="must be integer"):
    fn(params, prompts.astype(np.float32), mask, key)
  for bad in (dict(temperature=0.0), dict(top_p=0.0), dict(top_k=-1), dict(min_new_tokens=5),
              dict(pad_id=2)):
    with pytest.raises(ValueError, match="SamplingConfig"):
      gen.SamplingConfig(max_new_tokens=4, **bad)
  with pytest.raises(ValueError, match="differ in shape"):
    gen.score_tokens(graphdef, params, prompts, mask, prompts[:, :3], mask)
