"""Config: YAML + dotted overrides, typed coercion, and errors that name the key and suggest the real one."""

from pathlib import Path

import pytest

from rl_latent.config import Config, ConfigError, all_keys, describe, load_config, stage_config

REPO = Path(__file__).resolve().parents[2]


def test_every_recipe_in_configs_loads():
    recipes = sorted((REPO / "configs").glob("*.yaml"))
    assert recipes, "configs/ has no recipes"
    for path in recipes:
        assert isinstance(load_config(path), Config)


def test_config_command_prints_every_key_of_every_recipe(capsys):
    from rl_latent.cli import main

    for path in sorted((REPO / "configs").glob("*.yaml")):
        main(["config", str(path), "train.seed=7"])
        lines = capsys.readouterr().out.splitlines()
        assert len(lines) == len(describe()), path
        rows = {line.split()[0]: line for line in lines}
        assert rows["train.seed"].split()[1] == "7"
    # a dict-valued field is one row (the quickstart recipe has per-stage overrides)
    main(["config", str(REPO / "configs/quickstart.yaml")])
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "'grpo': {" in rows["stage_overrides"]


def test_overrides_are_typed_and_win_over_yaml():
    cfg = load_config(
        REPO / "configs" / "quickstart.yaml",
        [
            "optim.lr=3e-4",
            "train.max_steps=7",
            "eval.ks=[1,4]",
            "eval.n_samples=4",
            "data.nl_cot=true",
            "model.name_or_path=none",
        ],
    )
    assert cfg.optim.lr == pytest.approx(3e-4) and isinstance(cfg.optim.lr, float)
    assert cfg.train.max_steps == 7 and isinstance(cfg.train.max_steps, int)
    assert cfg.eval.ks == [1, 4]
    assert cfg.data.nl_cot is True
    assert cfg.model.name_or_path is None


@pytest.mark.parametrize(
    "override, suggestion",
    [("optim.lrr=1", "optim.lr"), ("optm.lr=1", "optim.lr"), ("train.max_step=3", "train.max_steps")],
)
def test_unknown_key_names_it_and_suggests(override, suggestion):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert override.split("=")[0] in str(e.value)
    assert suggestion in str(e.value)


def test_unknown_key_in_yaml_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  learning_rate: 1e-3\n")
    with pytest.raises(ConfigError, match=r"optim.learning_rate.*bad.yaml"):
        load_config(bad)


def test_bad_values_are_rejected_with_the_key():
    with pytest.raises(ConfigError, match="train.max_steps"):
        load_config(None, ["train.max_steps=lots"])
    with pytest.raises(ConfigError, match="train.mode"):
        load_config(None, ["train.mode=latent"])
    with pytest.raises(ConfigError, match="n_samples"):
        load_config(None, ["eval.ks=[1,8]"])
    with pytest.raises(ConfigError, match="stage"):
        load_config(None, ["stages=[cot_sft,codii]"])
    with pytest.raises(ConfigError, match="rl.pass_k=8"):
        load_config(None, ["train.recipe=grpo", "rl.group_size=8", "rl.pass_k=8"])
    with pytest.raises(ConfigError, match="rl.pass_k=2.*ppo"):
        load_config(None, ["train.recipe=ppo", "rl.pass_k=2"])
    with pytest.raises(ConfigError, match="rl.unlikely_beta=1.5"):
        load_config(None, ["train.recipe=grpo", "rl.unlikely_beta=1.5"])
    with pytest.raises(ConfigError, match="rl.unlikely_beta=0.25.*ppo"):
        load_config(None, ["train.recipe=ppo", "rl.unlikely_beta=0.25"])
    greedy = ["latent.policy=vanilla", "rl.answer_temperature=0"]  # the adapters would act deterministically
    with pytest.raises(ConfigError, match="rl.trainable=shortcuts.*rl.trainable=routers"):
        load_config(None, ["rl.trainable=shortcuts", *greedy])
    assert load_config(None, ["rl.trainable=routers", *greedy]).rl.trainable == "routers"
    assert load_config(None, ["rl.trainable=shortcuts", "latent.policy=vanilla"]).rl.trainable == "shortcuts"


def test_every_field_is_documented():
    rows = describe()
    assert len(rows) == len(all_keys())
    assert all(help_ for _, _, _, help_ in rows), [k for k, _, _, h in rows if not h]


def test_stage_config_does_not_touch_the_parent():
    cfg = load_config(None, ["train.output_dir=runs/x"])
    nocot = stage_config(cfg, "no_cot")
    assert nocot.train.mode == "nocot" and cfg.train.mode == "cot"
    assert nocot.train.output_dir == str(Path("runs/x") / "no_cot")


def test_stage_overrides_win_over_stage_defaults_and_are_checked():
    cfg = load_config(REPO / "configs" / "quickstart.yaml", ["optim.beta1=0.5"])
    soft = stage_config(cfg, "codi_soft")
    assert soft.train.recipe == "codi" and soft.latent.head == "soft" and soft.codi.align == 1.0
    assert soft.optim.lr == cfg.stage_overrides["codi_soft"]["optim.lr"] != cfg.optim.lr  # the recipe's YAML
    assert soft.optim.beta1 == 0.5  # the command line
    # the command line wins over stage_overrides, except over what defines the stage
    cli = load_config(REPO / "configs" / "quickstart.yaml", ["optim.lr=0.5", "latent.head=hidden"])
    assert (
        stage_config(cli, "codi_soft").optim.lr == 0.5
        and stage_config(cli, "codi_soft").latent.head == "soft"
    )
    assert stage_config(cfg, "codi").latent.fixed_steps == 6  # CODI as published
    with pytest.raises(ConfigError, match="unknown stage 'codi_sfot'"):
        load_config(None, ["stage_overrides={codi_sfot: {optim.lr: 1}}"])
    with pytest.raises(ConfigError, match="optim.lrr"):
        load_config(None, ["stage_overrides={codi_soft: {optim.lrr: 1}}"])
