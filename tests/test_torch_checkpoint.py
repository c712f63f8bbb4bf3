"""solo_tf.torch_checkpoint: files torch itself saved, in both formats; refusals and errors."""

import os
import pickle
import zipfile

import numpy as np
import pytest

from solo_tf import torch_checkpoint

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


def fixture(name):
    return os.path.join(FIXTURES, name)


@pytest.mark.parametrize("name", ["torch_reader_zip.pth", "torch_reader_legacy.pth"])
def test_reads_both_formats_exactly(name):
    expected = np.load(fixture("torch_reader_expected.npz"))
    state = torch_checkpoint.load_state_dict(fixture(name))
    assert sorted(state) == sorted(expected.files)
    for key in expected.files:
        assert state[key].dtype == expected[key].dtype, key
        np.testing.assert_array_equal(state[key], expected[key], err_msg=key)
    # Views keep torch's semantics: "transposed" is base.t(), "sliced" is base[1:3, 2:5].
    np.testing.assert_array_equal(state["transposed"].T[1:3, 2:5], state["sliced"])
    assert state["scalar"].shape == () and state["scalar"] == 2.5


def test_metadata_is_kept_by_load():
    checkpoint = torch_checkpoint.load(fixture("torch_reader_legacy.pth"))
    assert checkpoint["meta"] == {"epoch": 3, "CLASSES": ("a", "b")}


def test_torchvision_style_state_dict_is_read_whole():
    state = torch_checkpoint.load_state_dict(fixture("resnet18_narrow.pth"))
    assert state["conv1.weight"].shape == (64, 3, 7, 7)
    assert state["layer2.0.downsample.0.weight"].shape == (8, 8, 1, 1)
    assert state["layer1.0.bn1.num_batches_tracked"].dtype == np.int64


def test_not_a_checkpoint_names_the_file(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_bytes(b"hello, not a pickle")
    with pytest.raises(ValueError, match="notes.pth"):
        torch_checkpoint.load(str(path))
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        torch_checkpoint.load(str(tmp_path / "missing.pth"))


def test_foreign_globals_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:  # a legacy header, then a pickle that would call os.system
        for obj in (torch_checkpoint.LEGACY_MAGIC_NUMBER, 1001, {"little_endian": True}):
            pickle.dump(obj, f, protocol=2)
        f.write(b"cos\nsystem\n(S'echo hi'\ntR.")
    with pytest.raises(pickle.UnpicklingError, match="os.system"):
        torch_checkpoint.load(str(path))


def test_truncated_storage_names_the_tensor(tmp_path):
    path = tmp_path / "cut.pth"
    with zipfile.ZipFile(fixture("torch_reader_zip.pth")) as src:
        with zipfile.ZipFile(path, "w") as dst:
            for item in src.infolist():
                data = src.read(item.filename)
                if "/data/" in item.filename and len(data) == 3 * 2 * 3 * 3 * 4:
                    data = data[:40]  # the "conv" tensor's storage, cut
                dst.writestr(item, data)
    with pytest.raises(ValueError, match=r"cut.pth: tensor 'state_dict.conv'"):
        torch_checkpoint.load(str(path))


def test_non_tensor_entry_is_named(tmp_path):
    path = tmp_path / "meta_only.pth"
    with open(path, "wb") as f:
        for obj in (torch_checkpoint.LEGACY_MAGIC_NUMBER, 1001, {"little_endian": True}):
            pickle.dump(obj, f, protocol=2)
        pickle.dump({"epoch": 3}, f, protocol=2)
        pickle.dump([], f, protocol=2)
    with pytest.raises(ValueError, match="'epoch' is a int"):
        torch_checkpoint.load_state_dict(str(path))


def test_training_framework_objects_become_inert_stand_ins(tmp_path):
    # An mmengine checkpoint keeps a MessageHub of HistoryBuffers beside the state dict.
    path = tmp_path / "mmengine.pth"
    with open(path, "wb") as f:
        for obj in (torch_checkpoint.LEGACY_MAGIC_NUMBER, 1001, {"little_endian": True}):
            pickle.dump(obj, f, protocol=2)
        f.write(b"(dp0\nS'message_hub'\np1\nc" + b"mmengine.logging.message_hub\nMessageHub\n")
        f.write(b"p2\n(S'hub'\ntRp3\n(dp4\nS'x'\nI1\nsbs.")
        pickle.dump([], f, protocol=2)
    hub = torch_checkpoint.load(str(path))["message_hub"]
    assert isinstance(hub, torch_checkpoint.Opaque) and hub.args == ("hub",)
    assert hub.state == {"x": 1}
    with pytest.raises(ValueError, match="'message_hub' is a mmengine.logging"):
        torch_checkpoint.load_state_dict(str(path))
