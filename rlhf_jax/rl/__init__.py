"""The online-RL engine (PPO, GRPO and its variants, RLOO, REINFORCE, REINFORCE++, CISPO, and
algorithms users register).

  setup.py       what a run works with (task, tokenizer, prompts, SFT export, reward), built by
                 the stage
  rollout.py     the `Rollout` pytree and the sharded device work that makes one (generate via
                 generation/sharded.py, score: old policy, reference, critic, reward model)
  algorithms.py  the registry: per algorithm its advantages and policy loss
  learn.py       advantages -> epochs of minibatch updates -> KL control, one jitted function;
                 `RLState` (the train state with β)
  kl_control.py  fixed / adaptive β (Ziegler et al. 2019)
  critic.py      PPO's value model on its own or the policy's backbone
  engine.py      one iteration: generate -> score -> rewards (dynamic sampling) -> learn
  evaluate.py    held-out evaluation (exact on the enumerable world; greedy accuracy, pass@k,
                 maj@k, sampled KL, reward)

The stages `ppo` and `policy_gradient` (stages/) only wire a config to it.
"""
