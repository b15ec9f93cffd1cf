"""``persona evaluate`` (:mod:`cli.evaluate`): what it evaluates by default, and its one-line errors; the model
and method names are the recipes' to check (the full ``--methods`` run: ``tests/llm_cloud/test_methods.py``)."""

from __future__ import annotations

import pytest

from cli.evaluate import DEFAULT_EVALUATED
from cli.main import build_parser, main
from llm_cloud.methods import METHODS
from recipes.adaptation import UnknownMethodError, check_methods
from recsys.models import DEFAULT_MODELS
from tests.conftest import one_line_error, persona


def test_evaluate_without_checkpoint_says_what_to_run(tmp_path):
    proc = persona("evaluate", "--models", "sasrec", f"output_dir={tmp_path}", f"data.workdir={tmp_path / 'a'}")
    one_line_error(proc, "persona train model=sasrec")


def test_default_models_come_from_the_registry():
    assert DEFAULT_EVALUATED == "pop," + ",".join(DEFAULT_MODELS)
    assert build_parser().parse_args(["evaluate"]).models == DEFAULT_EVALUATED


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--models", "pop,nope4rec"], "persona evaluate: error: unknown model 'nope4rec' (known: "),
        (["--methods", "static,nope"], "persona evaluate: error: unknown method 'nope' (known: static,"),
        (["--update"], "persona evaluate: error: --update needs --methods"),
        (["--reuse"], "persona evaluate: error: --reuse needs --methods"),
    ],
)
def test_one_line_errors_before_any_data(tmp_path, capsys, args, message):
    assert main(["evaluate", *args, f"data.workdir={tmp_path}", f"output_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(message), err
    assert not any(tmp_path.iterdir())


def test_methods_are_checked_by_the_recipe():
    assert check_methods(["all"]) == list(METHODS)
    assert check_methods(["edit", "static"]) == ["edit", "static"]
    with pytest.raises(UnknownMethodError, match="unknown method 'all-of-them'"):
        check_methods(["static", "all-of-them"])
