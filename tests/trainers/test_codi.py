"""CODI: the answer-emitting token on GPT-2- and Llama/Qwen-style tokenizers, negative answers, left-padding
invariance of the student pass, the losses, and the recipe end to end (hidden and soft heads, LoRA)."""

import pytest
import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from rl_latent.config import load_config
from rl_latent.model import LatentReasoner
from rl_latent.model.heads import HEAD_NAME
from tests.rollouts.latent_fixtures import make_latent_model
from trainers.codi import (
    answer_emit_index,
    codi_losses,
    encode_codi,
    exit_loss,
    kd_loss,
    stop_loss,
    student_forward,
)

CORPUS = ["Tom has 3 apples and buys 21 more. The answer is: 24", "The answer is: 21", "x = 12 , y = 5"] * 50
# Llama-3's pre-tokenizer pattern (numbers split off in runs of up to 3 digits, without their leading space)
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)


def _bpe(style: str) -> PreTrainedTokenizerFast:
    tk = Tokenizer(models.BPE())
    if style == "gpt2":
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        tk.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tk.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<eos>", pad_token="<eos>")


@pytest.mark.parametrize("style,emitter", [("gpt2", ":"), ("llama3", " ")])
def test_answer_emitting_token_found_by_tokenizing(style, emitter):
    tok = _bpe(style)
    text = " x = 12 , y = 5 The answer is: 21"
    ids, idx = answer_emit_index(tok, text, "21")
    assert tok.decode(ids[idx : idx + 1]) == emitter
    assert tok.decode(ids[idx + 1 :]).strip().startswith("2")
    ids, idx = answer_emit_index(tok, " The answer is: -7", "-7")  # the sign belongs to the answer
    assert "-" in tok.decode(ids[idx + 1 :]) and "-" not in tok.decode(ids[: idx + 1])


def _rows(answer="5"):
    return [
        {"question": "a = 3 , b = a + 4 , c = b - 2 . what is c ?", "steps": ["<<3+4=7>>", "<<7-2=5>>"],
         "answer": answer, "step_results": ["7", answer], "num_steps": 2},
        {"question": "k = 1 , m = k + 2 . what is m ?", "steps": ["<<1+2=3>>"], "answer": "3",
         "step_results": ["3"], "num_steps": 1},
        {"question": "p = 9 , q = p - 8 , r = q + 6 , s = r - 1 , t = s + 2 , u = t - 3 . what is u ?",
         "steps": ["<<9-8=1>>", "<<1+6=7>>", "<<7-1=6>>", "<<6+2=8>>", "<<8-3=5>>"], "answer": "5",
         "step_results": ["1", "7", "6", "8", "5"], "num_steps": 5},
    ]  # fmt: skip


def _cfg(*over):
    return load_config(None, ["data.max_len=128", *over])


def test_encode_keeps_negative_answers_and_finds_both_emitters():
    model = make_latent_model("soft")
    rows = _rows(answer="-2")
    enc, dropped = encode_codi(rows, model, _cfg("codi.align=1.0", "latent.head=soft"))
    assert dropped == 0 and len(enc) == 3
    tok = model.tokenizer
    r = enc[0]
    assert tok.decode(r.suffix_ids[r.s_emit + 1 : -1]).replace(" ", "") == "-2"
    assert r.suffix_ids[r.s_emit] == model.eot_id  # `<eot> -2`: <eot> emits the answer
    assert tok.decode(r.teacher_ids[r.t_emit : r.t_emit + 1]) == ":"
    assert "7 - 2" not in tok.decode(r.teacher_ids)  # the teacher's CoT lost its last step
    assert [r.k for r in enc] == [2, 1, 5] and enc[2].results == tok(" 1 7 6 8 5")["input_ids"]


def test_pad_steps_add_thoughts_that_repeat_the_final_result():
    model = make_latent_model("soft")
    rows = _rows() * 20
    base, _ = encode_codi(rows, model, _cfg("codi.align=1.0", "latent.head=soft"))
    pad, _ = encode_codi(rows, model, _cfg("codi.align=1.0", "latent.head=soft", "latent.pad_steps=2"))
    extra = [p.k - b.k for p, b in zip(pad, base)]
    assert set(extra) == {0, 1, 2}  # each row draws its own 0..N
    for p, b, e in zip(pad, base, extra):
        assert p.results == b.results + b.results[-1:] * e  # the wasted thoughts say the final result
    again, _ = encode_codi(rows, model, _cfg("codi.align=1.0", "latent.head=soft", "latent.pad_steps=2"))
    assert [r.k for r in again] == [r.k for r in pad]  # fixed by train.seed


def test_student_pass_is_independent_of_batch_neighbours():
    model = make_latent_model("soft")
    model.latent_extra["latent"]["max_steps"] = 8
    enc, _ = encode_codi(_rows(), model, _cfg("codi.align=1.0", "latent.head=soft"))
    alone = student_forward(model, [enc[0]], gold_mix=0.0, want_hidden=True)
    for neighbours in ([enc[1]], [enc[2]], [enc[1], enc[2]]):
        both = student_forward(model, [enc[0], *neighbours], gold_mix=0.0, want_hidden=True)
        k = enc[0].k
        assert torch.allclose(alone["dec_logits"][0, : k + 1], both["dec_logits"][0, : k + 1], atol=1e-5)
        n = len(enc[0].suffix_ids)
        assert torch.allclose(alone["out"].logits[0, :n], both["out"].logits[0, :n], atol=1e-5)
        for a, b in zip(alone["out"].hidden_states, both["out"].hidden_states):
            assert torch.allclose(a[0, :n], b[0, :n], atol=1e-5)


def test_kd_and_stop_losses():
    t = [torch.randn(4, 8) * s for s in (1.0, 5.0)]
    assert kd_loss([x.clone() for x in t], t).item() == 0.0
    # mean over layers of SmoothL1 / the teacher layer's std: an offset of 0.5 (quadratic zone, 0.125 per
    # element) in layer 0 and of 3 (linear zone, 2.5 per element) in layer 1
    got = kd_loss([t[0] + 0.5, t[1] + 3.0], t).item()
    assert got == pytest.approx((0.125 / t[0].std().item() + 2.5 / t[1].std().item()) / 2, rel=1e-5)
    logits = torch.zeros(1, 3, 10)
    logits[0, 2, 7] = 20.0  # <eot> = 7 said at decision 2 only
    logits[0, :2, 3] = 20.0
    assert stop_loss(logits, torch.tensor([2]), eot_id=7).item() < 1e-6
    assert stop_loss(logits, torch.tensor([1]), eot_id=7).item() > 5


def test_exit_loss_is_the_depth_weighted_kl_to_the_last_layer():
    V = 5
    final = torch.randn(3, V)
    same = final[:, None].repeat(1, 2, 1)  # identity norm and head: every layer already says the final
    ident = lambda x: x  # noqa: E731
    assert exit_loss(same, final, torch.ones(3, dtype=torch.bool), ident, ident).item() == pytest.approx(
        0, abs=1e-6
    )
    # layer 1 uniform, layer 2 right: (1 * KL(p || uniform) + 2 * 0) / 3 = (log V - H(p)) / 3
    states = torch.stack([torch.zeros(3, V), final], 1)
    p = torch.softmax(final, -1)
    kl_uniform = torch.log(torch.tensor(float(V))) + (p * torch.log(p)).sum(-1)
    valid = torch.tensor([True, False, True])
    want = (kl_uniform[valid] / 3).mean().item()
    assert exit_loss(states, final, valid, ident, ident).item() == pytest.approx(want, rel=1e-5)
    final.requires_grad_(True)
    states.requires_grad_(True)
    exit_loss(states, final, valid, ident, ident).backward()
    assert final.grad is None and states.grad.abs().sum() > 0  # the last layer is the (detached) target


@pytest.mark.parametrize(
    "head,over",
    [
        ("hidden", []),
        ("soft", ["codi.align=1.0", "codi.gold_anneal_steps=2"]),
        ("soft", ["codi.align=1.0", "codi.exit_weight=1.0"]),
    ],
)
def test_losses_backprop_through_latent_steps(head, over):
    model = make_latent_model(head).train()
    cfg = _cfg(f"latent.head={head}", *over)
    enc, _ = encode_codi(_rows(), model, cfg)
    terms = codi_losses(model, enc, cfg, gold_mix=0.5 if over else 0.0)
    expected = {"student_ce", "teacher_ce", "kd", "stop", "loss"} | ({"align"} if over else set())
    expected |= {"exit"} if "codi.exit_weight=1.0" in over else set()
    assert set(terms) == expected and all(torch.isfinite(v) for v in terms.values())
    terms["loss"].backward()
    g = (
        model.heads[HEAD_NAME].proj.fc1.weight.grad
        if head == "hidden"
        else model.lm.get_input_embeddings().weight.grad
    )
    assert g is not None and g.abs().sum() > 0


@pytest.mark.parametrize(
    "head,extra",
    [
        ("hidden", ["latent.fixed_steps=2"]),
        ("soft", ["codi.align=1.0"]),
        ("hidden", ["codi.lora_r=4", "codi.exit_weight=0.5"]),
    ],
)
def test_codi_recipe_end_to_end(tmp_path, head, extra):
    from trainers import codi

    torch.set_num_threads(1)
    cfg = load_config(
        None,
        [
            "model.arch=llama", "model.n_layer=2", "model.n_embd=32", "model.n_head=2", "model.max_number=30",
            "data.n_train=64", "data.n_valid=8", "data.n_test=8", "data.difficulty=1", "train.batch_size=8",
            "train.max_steps=3", "train.eval_every=0", "train.save_every=2", "optim.warmup_steps=1",
            f"train.output_dir={tmp_path / 'run'}", "tracking.wandb=none", "train.recipe=codi",
            f"latent.head={head}", *extra,
        ],
    )  # fmt: skip
    summary = codi.run(cfg, progress=False)
    assert summary["steps"] == 3 and 0.0 <= summary["accuracy"] <= 1.0
    assert summary["latent_steps"] == 2 if "latent.fixed_steps=2" in extra else summary["latent_steps"] <= 8
    model = LatentReasoner.from_pretrained(summary["model_dir"])
    assert model.heads[HEAD_NAME].kind == head and model.latent_extra["latent"]["head"] == head
    assert not hasattr(model.lm, "peft_config")  # LoRA adapters were merged into the export
