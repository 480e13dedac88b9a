"""Training recipes, one file each (sft.py; codi.py, shortcut.py, grpo.py, ppo.py to come), on the DeepSpeed
engine of engine.py."""
