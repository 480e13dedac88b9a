"""Rewards: the interface, registry and dotted-path loading (base.py), answer correctness and compute cost.
Built by the RL issue; see DESIGN.md."""
