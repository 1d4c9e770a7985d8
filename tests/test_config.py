"""Run configuration: recipes, overrides and clear errors before any model is built."""
from __future__ import annotations

import pytest

from mdist.config import load_run_config
from mdist.recipes import recipe_names
from mdist.errors import ConfigError
from mdist.strategies import STRATEGIES, layer_mapping, resolve_weights


def test_shipped_recipes_exist():
    assert {"tiny", "xlmr-base-monoshot", "xlmr-base-monoalignment", "clkd-monoshot", "clkd-monoalignment"} <= set(recipe_names())


@pytest.mark.parametrize("recipe, strategy", [("clkd-monoshot", "hinton_hidcos_att_emb"), ("clkd-monoalignment", "monoalignment")])
def test_authors_recipes_carry_their_loss_config(tmp_path, recipe, strategy):
    """MinhDucBui/clkd configs/students/individual/loss/{monoshot,monoalignment}.yaml at f292e7a."""
    cfg = load_run_config(recipe, [f"teacher.path={tmp_path}", "data.kind=synthetic"])
    assert cfg.strategy == strategy and cfg.loss.mapping is None
    assert cfg.loss.temperature == 4.0
    assert cfg.loss.weights == {"mlm": 0.0005, "kl": 0.0005, "hid": 0.333, "att": 0.333, "emb": 0.333}
    assert STRATEGIES[strategy].hidden_loss == ("cos" if recipe == "clkd-monoshot" else "mse")
    assert layer_mapping(STRATEGIES[strategy].mapping, 6, 12) == ([(6, 12)] if recipe == "clkd-monoalignment" else [(m, 2 * m) for m in range(1, 7)])


def test_tiny_recipe_and_overrides():
    cfg = load_run_config("tiny", ["train.steps=7", "train.lr=1e-3", "strategy=tinybert", "students.groups={en_tr: [en, tr]}"])
    assert cfg.train.steps == 7 and cfg.train.lr == pytest.approx(1e-3)
    assert cfg.strategy == "tinybert"
    assert cfg.languages == ["en", "tr"]


@pytest.mark.parametrize("recipe, strategy", [("xlmr-base-monoshot", "monoshot"), ("xlmr-base-monoalignment", "monoalignment")])
def test_thesis_recipes_carry_table_4_2(tmp_path, recipe, strategy):
    (tmp_path / "en.txt").write_text("hello\n")
    (tmp_path / "tr.txt").write_text("merhaba\n")
    cfg = load_run_config(recipe, [f"teacher.path={tmp_path}", f"data.text={{en: [{tmp_path}/en.txt], tr: [{tmp_path}/tr.txt]}}"])
    assert cfg.strategy == strategy
    assert (cfg.train.batch_size, cfg.train.steps, cfg.train.lr, cfg.train.weight_decay, cfg.train.warmup_steps) == (16, 500_000, 2e-4, 0.01, 50_000)
    assert (cfg.students.layers, cfg.students.init, cfg.students.share_embeddings, cfg.students.tie_head) == (6, "teacher", True, True)


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.stpes=3", "unknown config key 'train.stpes'"),
        ("train.steps=many", "config key 'train.steps' must be of type int"),
        ("train.save_every=1.5", "config key 'train.save_every' must be of type int"),
        ("strategy=monoshoot", "config key 'strategy': unknown strategy 'monoshoot'"),
        ("students.groups={en: [en], tr: []}", "student 'tr' owns no language"),
        ("teacher.path=/nonexistent/teacher", "teacher directory '/nonexistent/teacher' does not exist"),
        ("deepspeed.zero_stage=4", "config key 'deepspeed.zero_stage'"),
        (("strategy=hinton", "loss.weights={mlm: 0.5, att: 0.5}"), "config key 'loss.weights.att': strategy 'hinton' has no term 'att'"),
        ("loss.weights={kl: 0.5}", "config key 'loss.weights': the weights (mlm=0.2, kl=0.5, hid=0.2, att=0.2, emb=0.2; unset terms keep 1/5) sum to 1.3, not 1"),
        (("strategy=hinton", "loss.weights={mlm: 0.3, kl: 0.3}"), "sum to 0.6, not 1; give every term of strategy 'hinton' (mlm, kl)"),
        (("strategy=hinton", "loss.weights={mlm: 1.5, kl: -0.5}"), "config key 'loss.weights.kl' must be >= 0, got -0.5"),
        ("data.kind=text", "config key 'data.text' has no files for language(s) en, tr"),
        ("loss.mapping=sideways", "config key 'loss.mapping': unknown mapping 'sideways'"),
        (("train.compile=true", "deepspeed.zero_stage=3"), "config key 'train.compile' needs deepspeed.zero_stage 0, 1 or 2"),
        ("train.encoder=flash", "config key 'train.encoder': 'flash' is not one of hf, fused"),
        (("train.encoder=fused", "deepspeed.zero_stage=3"), "config key 'train.encoder': fused needs deepspeed.zero_stage 0, 1 or 2"),
        (("train.encoder=fused", "train.compile=true"), "config key 'train.compile' compiles the Hugging Face layers, which train.encoder: fused replaces"),
        (("train.optimizer=adamw_fused", "deepspeed.zero_stage=2", "deepspeed.offload_optimizer=true"), "adamw_fused steps on the device"),
    ],
)
def test_bad_config_names_the_key(override, message):
    with pytest.raises(ConfigError) as err:
        load_run_config("tiny", [override] if isinstance(override, str) else list(override))
    assert message in str(err.value)


def test_unknown_recipe_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="unknown recipe 'nope'"):
        load_run_config("nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_run_config(str(bad))
    with pytest.raises(ConfigError, match="does not exist"):
        load_run_config(str(tmp_path / "missing.yaml"))


def test_loss_weights_resolve_to_the_convex_combination_written():
    assert resolve_weights("hinton", None) == {"mlm": 0.5, "kl": 0.5}
    assert resolve_weights("hinton", {"mlm": 0.5}) == {"mlm": 0.5, "kl": 0.5}  # the other term keeps its 1/2
    assert resolve_weights("hinton", {"kl": 1.0, "mlm": 0.0}) == {"mlm": 0.0, "kl": 1.0}
    assert resolve_weights("tinybert", {"hid": 0.5, "att": 0.25, "emb": 0.25}) == {"hid": 0.5, "att": 0.25, "emb": 0.25}
    cfg = load_run_config("tiny", ["loss.weights={mlm: 0.1, kl: 0.2, hid: 0.3, att: 0.25, emb: 0.15}"])
    assert cfg.loss.weights == {"mlm": 0.1, "kl": 0.2, "hid": 0.3, "att": 0.25, "emb": 0.15}
