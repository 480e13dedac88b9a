"""Latent rollouts: the batched sampler with KV cache (sampler.py), the Ray rollout actor (worker.py) and the
pool that shards prompts over workers (pool.py). Built by the latent-core and RL issues; see DESIGN.md."""
