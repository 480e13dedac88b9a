import math

import torch

from trainers.common import categorical_kl


def test_categorical_kl_matches_torch_and_closed_forms():
    g = torch.Generator().manual_seed(0)
    log_p = torch.log_softmax(torch.randn(4, 7, generator=g), -1)
    log_q = torch.log_softmax(torch.randn(4, 7, generator=g), -1)
    ref = torch.distributions.kl_divergence(
        torch.distributions.Categorical(logits=log_p), torch.distributions.Categorical(logits=log_q)
    )
    assert torch.allclose(categorical_kl(log_p, log_q), ref, atol=1e-6)
    assert torch.allclose(categorical_kl(log_p, log_p), torch.zeros(4), atol=1e-7)
    # a one-hot p against uniform q over V: KL = log V
    one_hot = torch.full((1, 5), -1e30).index_fill_(1, torch.tensor([2]), 0.0)
    uniform = torch.full((1, 5), -math.log(5))
    assert torch.allclose(categorical_kl(one_hot, uniform), torch.tensor([math.log(5)]), atol=1e-6)
