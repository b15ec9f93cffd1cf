"""The device runtime needs numpy and onnxruntime only: importing and running it loads no torch, RecBole or pydantic
(a subprocess where importing them fails), it imports nothing else, and it installs on its own (device/)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import ROOT
from tests.device_models import trained
from tests.import_rules import imports_of, refusing

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

FORBIDDEN = ("torch", "recbole", "pydantic", "recsys", "llm_cloud", "serving", "codebook", "recipes")
RUN_ALONE = refusing(FORBIDDEN) + """
from persona_device.runtime import OnnxDeviceRuntime
rt = OnnxDeviceRuntime.load({export!r})
items, scores = rt.rank([1, 2, 3], 5, exclude={{1, 2, 3}})
assert len(items) == 5 and not {{1, 2, 3}} & set(items), items
print(sorted(m.split(".")[0] for m in sys.modules if m.split(".")[0] in {forbidden!r}))
"""


@pytest.fixture(scope="module")
def export_dir(ml100k_split, tmp_path_factory):
    return trained("sasrec", ml100k_split, tmp_path_factory.mktemp("torch-free")).export_dir


def test_the_runtime_ranks_in_a_process_where_torch_cannot_be_imported(export_dir):
    code = RUN_ALONE.format(forbidden=FORBIDDEN, export=str(export_dir))
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"


def test_the_package_imports_only_the_standard_library_numpy_and_onnxruntime():
    for path in sorted((ROOT / "persona_device").rglob("*.py")):
        others = {n for n in imports_of(path) if n not in sys.stdlib_module_names}
        assert others <= {"numpy", "onnxruntime", "persona_device"}, (path.name, others)


def test_the_standalone_package_and_the_device_extra_need_the_same_two_packages():
    own = tomllib.loads((ROOT / "device" / "pyproject.toml").read_text())
    main = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert own["project"]["dependencies"] == main["project"]["optional-dependencies"]["device"]
    assert [d.split(">")[0] for d in own["project"]["dependencies"]] == ["numpy", "onnxruntime"]
    assert own["tool"]["setuptools"]["packages"] == ["persona_device"]
    assert "persona_device*" in main["tool"]["setuptools"]["packages"]["find"]["include"]
