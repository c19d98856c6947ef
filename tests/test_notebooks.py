"""The notebooks are stored without outputs and run without error on the test run's results."""

import sys
from pathlib import Path

import nbformat
import pytest
from conftest import REPO
from nbclient import NotebookClient

NOTEBOOKS = REPO / "notebooks"
NAMES = ["01_explore_results.ipynb", "02_score_your_own_signature.ipynb"]
# A dataset with two conditions and scored sets, and one whose gene panel scores no set.
DATASETS = ["shalek2014_bmdc_lps", "luecken2021_bmmc_cite"]
# Luecken's random gene panel covers none of notebook 02's sets: it says so and draws nothing.
SCORES_NOTHING = {("02_score_your_own_signature.ipynb", "luecken2021_bmmc_cite")}


def test_the_notebooks_are_all_here():
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_stored_without_outputs_and_with_the_python3_kernel(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.execution_count is None and cell.outputs == [], cell.source[:60]


@pytest.mark.e2e
@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_on_the_test_results(run, monkeypatch, name, dataset):
    monkeypatch.setenv("OSTEOIMMUNE_RESULTS", str(run / "results"))
    monkeypatch.setenv("OSTEOIMMUNE_DATASET", dataset)
    # The venv's own python3 kernelspec (from ipykernel) before any user-wide one.
    monkeypatch.setenv("JUPYTER_PATH", str(Path(sys.prefix) / "share" / "jupyter"))
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = NotebookClient(
        nb, kernel_name="python3", timeout=600, resources={"metadata": {"path": str(NOTEBOOKS)}}
    )
    client.execute()  # raises CellExecutionError, with the cell and traceback, on any error
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs)
    assert dataset in text  # it loaded the dataset asked for
    drew = any("image/png" in o.get("data", {}) for o in outputs)
    if (name, dataset) in SCORES_NOTHING:
        assert not drew and "reached 50% gene coverage" in text
    else:
        assert drew
