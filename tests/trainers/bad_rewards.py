"""Rewards that misbehave, loaded by dotted path in the RL tests."""


def raises(samples):
    """Fails on every sample of the step's second prompt (group 1)."""
    out = []
    for s in samples:
        if s.metadata.get("group") == 1:
            raise ValueError("cannot score this one")
        out.append(0.0)
    return out


def half_the_values(samples):
    return [0.0] * (len(samples) // 2)
