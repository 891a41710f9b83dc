"""torch.export archives that run code when torch.export.load opens them, proved against torch's own loader.

Each hostile archive is first opened with plain ``torch.export.load`` to show
that it really reaches one of torch's unpickling paths (the marker appears);
then rtool must refuse the same bytes before torch sees them. A property test
generates payload tables and checks the other direction: whatever rtool
accepts, torch loads without calling any unpickler.
"""

from __future__ import annotations

import io
import json
import pickle
import zipfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtimes import open_runtime
from toolkit.errors import BadInputError, UnsafeFileError
from toolkit.safety import check_pt2_archive

from conftest import assert_one_line_error, run_cli
from reliability.payloads import ExecPayload


class WithConstant(torch.nn.Module):
    """The smallest program with both payload tables filled: a weight and a tensor constant."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 2)
        self.offset = torch.ones(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) + self.offset


@pytest.fixture(scope="module")
def real_pt2(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pt2") / "model.pt2"
    torch.export.save(torch.export.export(WithConstant(), (torch.randn(1, 4),)), path)
    return path


def rebuild(
    real: Path,
    out: Path,
    *,
    table: str | None = None,
    entry: dict | None = None,
    add: dict[str, bytes] | None = None,
    replace: dict[str, bytes] | None = None,
) -> Path:
    """A copy of ``real`` with one payload-table entry added (``table`` = weights|constants) and members added."""
    with zipfile.ZipFile(real) as src:
        members = {info.filename: src.read(info.filename) for info in src.infolist()}
    root = next(iter(members)).split("/", 1)[0]
    if table:
        name = f"{root}/data/{table}/model_{table}_config.json"
        config = json.loads(members[name])
        config["config"]["injected"] = entry
        members[name] = json.dumps(config).encode()
    for name, data in (replace or {}).items():
        members[f"{root}/{name}"] = data
    for name, data in (add or {}).items():
        members[f"{root}/{name}"] = data
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for name, data in members.items():
            dst.writestr(name, data)
    return out


def tensor_meta() -> dict:
    return {
        "dtype": 7,
        "sizes": [{"as_int": 2}],
        "requires_grad": False,
        "device": {"type": "cpu", "index": None},
        "strides": [{"as_int": 1}],
        "storage_offset": {"as_int": 0},
        "layout": 7,
    }


def payload_bytes(marker: Path, how: str) -> bytes:
    if how == "pickle":
        # torch first maps every use_pickle=false record as float32, so the length must be a multiple of 4;
        # pickle ignores what follows its STOP opcode
        data = pickle.dumps(ExecPayload(marker))
        return data + b"\0" * (-len(data) % 4)
    buffer = io.BytesIO()
    torch.save(ExecPayload(marker) if how == "torch" else ((ExecPayload(marker),), {}), buffer)
    return buffer.getvalue()


def hostile_variants(real: Path, folder: Path, marker: Path) -> dict[str, Path]:
    """Every way torch.export.load runs code that we know of, each as its own archive."""
    folder.mkdir(parents=True, exist_ok=True)
    entry = {"is_param": False, "tensor_meta": tensor_meta()}
    return {
        # the reported attack: a folder below opaque_obj_, use_pickle false
        "opaque-folder": rebuild(
            real,
            folder / "a.pt2",
            table="constants",
            entry={**entry, "path_name": "opaque_obj_x/p", "use_pickle": False},
            add={"data/constants/opaque_obj_x/p": payload_bytes(marker, "pickle")},
        ),
        "opaque": rebuild(
            real,
            folder / "b.pt2",
            table="constants",
            entry={**entry, "path_name": "opaque_obj_0", "use_pickle": False},
            add={"data/constants/opaque_obj_0": payload_bytes(marker, "pickle")},
        ),
        "constant-use-pickle": rebuild(
            real,
            folder / "c.pt2",
            table="constants",
            entry={**entry, "path_name": "tensor_9", "use_pickle": True},
            add={"data/constants/tensor_9": payload_bytes(marker, "torch")},
        ),
        "weight-use-pickle": rebuild(
            real,
            folder / "d.pt2",
            table="weights",
            entry={**entry, "path_name": "weight_9", "use_pickle": True, "is_param": True},
            add={"data/weights/weight_9": payload_bytes(marker, "torch")},
        ),
        "sample-inputs": rebuild(
            real, folder / "e.pt2", replace={"data/sample_inputs/model.pt": payload_bytes(marker, "inputs")}
        ),
    }


# torch._C._pickle_load_obj (custom_obj_) runs TorchScript's unpickler, which refuses Python payloads by itself;
# rtool refuses the name anyway, as it refuses the AOTInductor folder (compiled code torch would load).
REFUSED_BY_NAME = {
    "custom-object": ("constants", "custom_obj_0", "data/constants/custom_obj_0"),
    "climbing-path": ("constants", "tensor_0/../../weights/weight_0", None),
}


@pytest.mark.parametrize(
    "kind", ["opaque-folder", "opaque", "constant-use-pickle", "weight-use-pickle", "sample-inputs"]
)
def test_torch_runs_the_payload_and_rtool_refuses_it(kind, real_pt2, tmp_path, marker):
    path = hostile_variants(real_pt2, tmp_path / "files", marker)[kind]
    with pytest.raises(UnsafeFileError, match=r"refused .*\.pt2: .*torch\.export\.load would unpickle"):
        check_pt2_archive(path)
    with pytest.raises(UnsafeFileError):
        open_runtime("pt2", path)
    assert not marker.exists(), "rtool opened a hostile archive"
    try:  # the same bytes through torch alone: the payload runs, so the variant is a real attack
        torch.export.load(path)
    except Exception:
        pass
    assert marker.exists(), f"{kind}: torch.export.load did not reach the payload; the variant tests nothing"


@pytest.mark.parametrize("kind", sorted(REFUSED_BY_NAME))
def test_other_unpickled_names_are_refused(kind, real_pt2, tmp_path, marker):
    table, path_name, member = REFUSED_BY_NAME[kind]
    path = rebuild(
        real_pt2,
        tmp_path / "x.pt2",
        table=table,
        entry={"path_name": path_name, "use_pickle": False, "is_param": False, "tensor_meta": tensor_meta()},
        add={member: payload_bytes(marker, "pickle")} if member else None,
    )
    with pytest.raises(UnsafeFileError, match="torch.export.load would unpickle"):
        check_pt2_archive(path)


@pytest.mark.parametrize(
    "member",
    [
        "data/aotinductor/model/model.so",
        "data/weights/model.pt",
        "data/constants/model.pt",
        "data/executorch/model.pte",
        "evil.pkl",
    ],
)
def test_parts_outside_the_allowlist_are_refused(member, real_pt2, tmp_path):
    path = rebuild(real_pt2, tmp_path / "x.pt2", add={member: b"\x7fELF"})
    with pytest.raises(UnsafeFileError, match=f"it holds the part '{member}'"):
        check_pt2_archive(path)


def test_cli_refuses_with_one_line_and_runs_nothing(real_pt2, tmp_path, marker, digit_png):
    path = hostile_variants(real_pt2, tmp_path / "files", marker)["opaque-folder"]
    assert_one_line_error(run_cli("infer", path, digit_png), contains="refused")
    assert not marker.exists()


def test_genuine_archives_pass(real_pt2, cpu_export_dir):
    check_pt2_archive(real_pt2)
    check_pt2_archive(cpu_export_dir / "model.pt2")


def test_a_damaged_table_is_one_line(real_pt2, tmp_path):
    path = rebuild(real_pt2, tmp_path / "x.pt2", replace={"data/constants/model_constants_config.json": b"[" * 10**5})
    with pytest.raises(BadInputError, match="model_constants_config.json nests JSON"):
        check_pt2_archive(path)


class UnpicklerSpy:
    """Records every call torch.export.load makes into an unpickler that can run code."""

    def __init__(self, monkeypatch) -> None:
        self.calls: list[str] = []
        real_load, real_loads = torch.load, pickle.loads

        def load(*args, **kwargs):
            if kwargs.get("weights_only") is False:
                self.calls.append("torch.load(weights_only=False)")
            return real_load(*args, **kwargs)

        def loads(*args, **kwargs):
            self.calls.append("pickle.loads")
            return real_loads(*args, **kwargs)

        def load_obj(*args, **kwargs):
            self.calls.append("torch._C._pickle_load_obj")
            raise RuntimeError("blocked by the test")

        monkeypatch.setattr(torch, "load", load)
        monkeypatch.setattr(pickle, "loads", loads)
        monkeypatch.setattr(torch._C, "_pickle_load_obj", load_obj)


PATH_NAMES = st.one_of(
    st.sampled_from(
        [
            "tensor_0",
            "tensor_7",
            "weight_0",
            "weight_3",
            "opaque_obj_0",
            "custom_obj_0",
            "tensor_",
            "opaque_obj_x/p",
            "tensor_0/x",
            "../weights/weight_0",
            "tensor_00",
        ]
    ),
    st.builds(
        lambda prefix, rest: prefix + rest,
        st.sampled_from(["tensor_", "weight_", "opaque_obj_", "custom_obj_", ""]),
        st.text(alphabet="0123456789_/.ab", max_size=6),
    ),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    table=st.sampled_from(["weights", "constants"]),
    path_name=PATH_NAMES,
    use_pickle=st.sampled_from([False, True, None, 0, "false"]),
    with_member=st.booleans(),
)
def test_what_rtool_accepts_torch_loads_without_unpickling(
    table, path_name, use_pickle, with_member, real_pt2, tmp_path, monkeypatch
):
    marker = tmp_path / "ran"
    entry = {
        "path_name": path_name,
        "use_pickle": use_pickle,
        "is_param": table == "weights",
        "tensor_meta": tensor_meta(),
    }
    add = {f"data/{table}/{path_name}": payload_bytes(marker, "pickle")} if with_member and path_name else None
    path = rebuild(real_pt2, tmp_path / "p.pt2", table=table, entry=entry, add=add)
    try:
        check_pt2_archive(path)
    except BadInputError:  # refused (UnsafeFileError is one): nothing reaches torch
        return
    spy = UnpicklerSpy(monkeypatch)
    try:
        torch.export.load(path)
    except Exception:
        pass  # a malformed but safe file may fail to load; what matters is that nothing was unpickled
    assert spy.calls == [] and not marker.exists(), f"accepted {entry} but torch called {spy.calls}"
