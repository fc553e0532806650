"""SFT of a 1B-class model (the `1b` preset: Llama-3.2-1B shapes) in bfloat16 on 8 devices.

Meant for accelerators: bfloat16 compute with float32 master weights, full rematerialisation of
each block, 4 micro-batches per step, mesh data=2 x fsdp=2 x tensor=2, and an ahead-of-time
compile whose memory analysis is logged before the loop. `experiments/aot_memory.py` compiles it
from abstract shapes only (no parameters allocated), on 8 simulated CPU devices:

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python experiments/aot_memory.py \
      --config=configs/sft_1b.py

The vocabulary comes from the run's tokenizer (a toy task's is small); aot_memory.py uses the
preset's 128,256.
"""

from rlhf_jax import configlib, defaults

VARIANTS = {"lora": "rank-16 LoRA adapters on every projection instead of full fine-tuning"}


def get_config(arg=None):
  variants = configlib.parse_variants(arg, VARIANTS)
  c = defaults.base_config()
  c.stage = "sft"
  c.model.preset = "1b"
  c.model.dtype = "bfloat16"
  c.model.remat = "full"
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 2, 2, 2
  c.data.prompt_len = 384
  c.data.completion_len = 128
  c.data.batch_size = 32
  c.train.microbatches = 4
  c.train.aot_memory = True
  c.train.num_steps = 1000
  c.train.log_every = 10
  c.train.eval_every = 250
  c.train.checkpoint_every = 250
  c.optimizer.lr = 2e-5
  c.optimizer.warmup_steps = 50
  c.optimizer.weight_decay = 0.0
  if "lora" in variants:
    c.lora.rank = 16
    c.lora.alpha = 32.0
    c.lora.targets = "all"
    c.optimizer.lr = 2e-4
  return c
