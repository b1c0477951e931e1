"""Arc State's files load weights-only with exactly numpy.str_ and numpy.int64 allowed; anything else is refused
before it runs."""

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from core.arc.safe_load import load_pickle_file, load_torch_file, plain
from core.errors import CheckpointError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "arc"


class _WritesMarker:
    """Unpickling this runs exec, which writes a marker file: the attack a general unpickle allows."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


def test_arc_maps_with_numpy_str_keys_load_as_plain_labels():
    raw = load_torch_file(FIXTURES / "emb_llama" / "pert_onehot_map.pt")
    assert all(type(k) is np.str_ for k in raw)  # what Arc writes; plain weights_only=True refuses it
    pert_map = plain(raw)
    assert list(pert_map) == ["control", "drugX", "drugY"] and all(type(k) is str for k in pert_map)
    assert torch.equal(pert_map["drugX"], torch.tensor([0.0, 1.0, 0.0]))
    batches = plain(load_torch_file(FIXTURES / "gene_llama" / "batch_onehot_map.torch"))
    assert {k: int(v.argmax()) for k, v in batches.items()} == {"b0": 0, "b1": 1, "b2": 2}


def test_var_dims_pickle_loads_with_the_restricted_unpickler():
    var_dims = plain(load_pickle_file(FIXTURES / "gene_llama" / "var_dims.pkl"))
    assert (var_dims["pert_dim"], var_dims["batch_dim"], var_dims["input_dim"], var_dims["hvg_dim"]) == (3, 3, 16, 24)
    assert var_dims["pert_names"] == ["control", "drugX", "drugY"] and type(var_dims["pert_names"][0]) is str


def test_numpy_int64_hyper_parameter_loads_and_becomes_int(tmp_path):
    path = tmp_path / "np_int.ckpt"
    torch.save({"hyper_parameters": {"gene_dim": np.int64(2000)}, "state_dict": {"w": torch.ones(2)}}, path)
    loaded = plain(load_torch_file(path))
    assert loaded["hyper_parameters"]["gene_dim"] == 2000 and type(loaded["hyper_parameters"]["gene_dim"]) is int


@pytest.mark.parametrize("saver, loader", [(torch.save, load_torch_file),
                                           (lambda obj, p: p.write_bytes(pickle.dumps(obj)), load_pickle_file)])
def test_a_file_with_another_global_is_refused_and_its_code_does_not_run(tmp_path, saver, loader):
    marker = tmp_path / "ran.txt"
    path = tmp_path / "evil.pt"
    saver({"control": torch.ones(1), "payload": _WritesMarker(marker)}, path)
    with pytest.raises(CheckpointError, match=r"asks to run (builtins\.)?exec ") as err:
        loader(path)
    assert "\n" not in str(err.value)
    assert not marker.exists()
    # the same file under a general unpickle does run the payload, so the check above can fail
    with path.open("rb") as fh:
        torch.load(fh, weights_only=False) if loader is load_torch_file else pickle.load(fh)
    assert marker.read_text() == "ran"


def test_numpy_scalars_other_than_str_and_int64_are_refused(tmp_path):
    torch.save({"lr": np.float32(1e-4)}, tmp_path / "f32.pt")
    with pytest.raises(CheckpointError, match="Float32DType"):
        load_torch_file(tmp_path / "f32.pt")
    (tmp_path / "f64.pkl").write_bytes(pickle.dumps({"lr": np.float64(1e-4)}))
    with pytest.raises(CheckpointError, match="numpy float64"):
        load_pickle_file(tmp_path / "f64.pkl")


def test_missing_and_truncated_files_are_one_line_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no perturbation map at"):
        load_torch_file(tmp_path / "pert_onehot_map.pt", "perturbation map")
    truncated = tmp_path / "var_dims.pkl"
    truncated.write_bytes((FIXTURES / "emb_llama" / "var_dims.pkl").read_bytes()[:40])
    with pytest.raises(CheckpointError, match="is not a readable var_dims"):
        load_pickle_file(truncated, "var_dims")
