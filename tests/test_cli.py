import json
import subprocess
import sys

import pytest

from raycat.cli import COMMANDS, main, parse_config
from raycat.config import ConfigError, TrainConfig


@pytest.mark.parametrize("command", [[]] + [[c] for c in COMMANDS])
def test_help_on_every_command(command, capsys):
    with pytest.raises(SystemExit) as e:
        main(command + ["--help"])
    assert e.value.code == 0
    assert "usage: raycat" in capsys.readouterr().out


def test_python_dash_m_works():
    r = subprocess.run([sys.executable, "-m", "raycat", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "lr-find" in r.stdout


def test_flags_override_config_file(tmp_path):
    cfg_file = tmp_path / "recipe.json"
    cfg_file.write_text(json.dumps({"lr-mult": 5, "arch": "resnet18", "head_cycles": 1}))
    _, cfg = parse_config(["train", "data", "--out", "o", "--config", str(cfg_file), "--arch", "resnet50"])
    assert isinstance(cfg, TrainConfig)
    assert cfg.lr_mult == 5.0 and cfg.arch == "resnet50" and cfg.head_cycles == 1


def test_yaml_config(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("lr: 0.01\nunfrozen-cycles: 2\n")
    _, cfg = parse_config(["train", "d", "--out", "o", "--config", str(f)])
    assert cfg.lr == 0.01 and cfg.unfrozen_cycles == 2


@pytest.mark.parametrize("content,message", [
    ({"learning_rate": 0.1}, "unknown config key 'learning_rate'"),
    ({"head_cycles": "two"}, "config key 'head_cycles': expected int"),
    ({"lr": -1}, "--lr: must be > 0"),
])
def test_bad_config_names_the_key(tmp_path, content, message):
    f = tmp_path / "c.json"
    f.write_text(json.dumps(content))
    with pytest.raises(ConfigError, match=message):
        parse_config(["train", "d", "--out", "o", "--config", str(f)])


def test_bad_input_exits_2_with_a_message(tmp_path, capsys):
    assert main(["check", str(tmp_path / "missing")]) == 2
    assert "missing: no such folder" in capsys.readouterr().err
    f = tmp_path / "c.json"
    f.write_text("{not json")
    assert main(["train", "d", "--out", "o", "--config", str(f)]) == 2
    assert "is not valid JSON" in capsys.readouterr().err


def test_bad_flag_value_exits_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "d", "--out", "o", "--arch", "vgg16"])
    assert e.value.code == 2
    assert "--arch" in capsys.readouterr().err
