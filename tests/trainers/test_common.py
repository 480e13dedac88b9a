import math

import pytest
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


def test_train_only_head_freezes_the_backbone():
    from rl_latent.model.shortcuts import SHORTCUT_NAME, Shortcuts
    from tests.rollouts.latent_fixtures import make_latent_model
    from trainers.common import train_only_head

    model = make_latent_model("soft")
    model.heads[SHORTCUT_NAME] = Shortcuts(
        model.hidden_size, model.num_layers, [0, 1], rank=4, router_hidden=4
    )
    n = train_only_head(model, SHORTCUT_NAME)
    trainable = {k for k, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(k.startswith(f"heads.{SHORTCUT_NAME}.") for k in trainable)
    assert n == sum(p.numel() for p in model.heads[SHORTCUT_NAME].parameters()) > 0
    assert not any(p.requires_grad for p in model.lm.parameters())
    n = train_only_head(model, SHORTCUT_NAME, "routers")  # exit RL: the routers alone
    trainable = {k for k, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(k.startswith(f"heads.{SHORTCUT_NAME}.routers.") for k in trainable)
    assert n == sum(p.numel() for p in model.heads[SHORTCUT_NAME].routers.parameters()) > 0
    with pytest.raises(KeyError, match="no 'nope' head"):
        train_only_head(model, "nope")
