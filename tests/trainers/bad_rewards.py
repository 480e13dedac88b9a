"""Rewards that misbehave or shape a test step, loaded by dotted path in the RL tests."""


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


def alternating_after_round0(samples):
    """0 for every sample of the step's first 4 prompts (uniform groups); for later prompts (dynamic
    sampling's extra rounds) 1 at every other sample, so each of their groups has rewards that differ."""
    return [float(s.metadata.get("group", 0) >= 4 and i % 2 == 1) for i, s in enumerate(samples)]
