"""Weights as untrusted input: names vs paths, verified downloads, the cache, bad files, and the
torch / Keras versions that are trusted to read them safely."""

import hashlib
import http.server
import logging
import os
import pathlib
import threading
import zipfile

import numpy as np
import pytest
import torch_files

import resnext_tf
from resnext_tf.errors import WeightsError
from resnext_tf.weights import (
    WeightsUnavailable,
    load_keras_model,
    load_weights,
    loading,
    pretrained,
    resolve_weights,
)
from resnext_tf.weights.convert import main as convert_main
from resnext_tf.weights.pretrained import Pretrained
from resnext_tf.weights.state_dict import compressed_zip_record

MODEL = "resnext50_32x4d"


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RESNEXT_TF_CACHE", str(tmp_path / "cache"))
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "cache"


def tiny_cifar():
    return resnext_tf.build_resnext(11, 2, 4, stem="cifar", num_classes=10)


def tiny_state(num_classes=10):
    rng = np.random.default_rng(1)
    return torch_files.random_state_dict(
        rng, (64, 128, 256), (1, 1, 1), 2, 4, 3, num_classes, counters=False
    )


# Names and paths ---------------------------------------------------------------------------


@pytest.fixture
def fetched(monkeypatch):
    """Records the entries `fetch` is asked for instead of downloading them."""
    calls = []

    def fake_fetch(entry):
        calls.append(entry)
        return "published-file"

    monkeypatch.setattr(pretrained, "fetch", fake_fetch)
    return calls


@pytest.mark.parametrize("local", ["folder", "file"])
def test_a_known_name_ignores_what_lies_in_the_working_directory(
    tmp_path, monkeypatch, fetched, local
):
    monkeypatch.chdir(tmp_path)
    if local == "folder":
        (tmp_path / "imagenet").mkdir()
    else:
        (tmp_path / "imagenet").write_bytes(b"not the published weights")
    assert resolve_weights("imagenet", MODEL) == "published-file"
    assert fetched == [pretrained.lookup("imagenet", MODEL)]


def test_a_path_is_a_path(tmp_path, monkeypatch, fetched):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "imagenet").write_bytes(b"x")
    assert resolve_weights("./imagenet", MODEL) == "./imagenet"
    assert resolve_weights(pathlib.Path("imagenet"), MODEL) == "imagenet"
    assert fetched == []


def test_a_folder_is_not_a_weights_file(tmp_path):
    with pytest.raises(WeightsError, match=r"is not a file"):
        resolve_weights(str(tmp_path), MODEL)


def test_a_name_of_another_model_says_how_to_reach_a_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fb_wsl").write_bytes(b"x")  # fb_wsl is published for resnext101_32x8d only
    with pytest.raises(WeightsError, match=r"weights='fb_wsl', a published name.*\./fb_wsl"):
        resolve_weights("fb_wsl", MODEL)


def test_known_names_include_every_tag():
    assert {"imagenet", "torchvision_v2", "timm_a1h", "fb_torch7"} <= pretrained.KNOWN_NAMES


# Downloads ---------------------------------------------------------------------------------


@pytest.fixture
def server():
    """A local HTTP server of {path: bytes}; yields (base URL, files)."""
    files = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", files
    httpd.shutdown()
    httpd.server_close()


def served_entry(server, content, prefix=None):
    base, files = server
    prefix = prefix or hashlib.sha256(content).hexdigest()[:8]
    files[f"/w-{prefix}.pth"] = content
    return Pretrained(f"{base}/w-{prefix}.pth", "test licence", "test")


def leftovers(cache):
    return sorted(p.name for p in (cache / "downloads").iterdir())


def test_download_is_verified_then_renamed_into_place(server, cache):
    entry = served_entry(server, b"published weights")
    path = pretrained.fetch(entry)
    assert open(path, "rb").read() == b"published weights"
    assert leftovers(cache) == [entry.filename]  # no temporary file left
    assert pretrained.fetch(entry) == path  # the cached file, checked again


def test_download_with_another_hash_is_discarded(server, cache):
    entry = served_entry(server, b"tampered weights", prefix="00000000")
    with pytest.raises(WeightsError, match=r"does not match its published SHA-256 prefix 0+"):
        pretrained.fetch(entry)
    assert leftovers(cache) == []


def test_download_larger_than_any_weights_file_is_refused(server, cache, monkeypatch):
    monkeypatch.setattr(pretrained, "MAX_DOWNLOAD_BYTES", 8)
    entry = served_entry(server, b"more than eight bytes")
    with pytest.raises(WeightsError, match=r"announces 21 bytes, more than the 8 bytes"):
        pretrained.fetch(entry)
    assert leftovers(cache) == []


def test_missing_download_is_unavailable_with_instructions(server, cache):
    base, _ = server
    entry = Pretrained(f"{base}/gone-0123abcd.pth", "test licence", "test")
    with pytest.raises(WeightsUnavailable, match=r"Could not download gone-0123abcd\.pth.*404"):
        pretrained.fetch(entry)
    assert issubclass(WeightsUnavailable, FileNotFoundError)
    assert leftovers(cache) == []


def test_only_http_urls_are_downloaded(cache):
    entry = Pretrained("file:///etc/passwd-0123abcd.pth", "test licence", "test")
    with pytest.raises(WeightsError, match=r"expected an http\(s\) URL"):
        pretrained.fetch(entry)


# The converted-weights cache ---------------------------------------------------------------


@pytest.fixture
def tiny_safetensors(tmp_path):
    from safetensors.numpy import save_file

    state = tiny_state()
    save_file(state, str(tmp_path / "tiny.safetensors"))
    return str(tmp_path / "tiny.safetensors"), state


@pytest.mark.parametrize("skip_classifier", [False, True])
def test_damaged_cache_entry_is_removed_and_converted_again(
    tiny_safetensors, cache, caplog, skip_classifier
):
    path, state = tiny_safetensors
    load_weights(tiny_cifar(), path, skip_classifier=skip_classifier)
    (entry,) = (cache / "converted").iterdir()
    entry.write_bytes(entry.read_bytes()[:1000])  # a copy cut short
    model = tiny_cifar()
    head = model.get_layer("head").kernel.numpy()
    with caplog.at_level(logging.WARNING):
        load_weights(model, path, skip_classifier=skip_classifier)
    assert str(entry) in caplog.text and "converting again" in caplog.text
    np.testing.assert_array_equal(model.get_layer("stem_bn").beta.numpy(), state["bn1.bias"])
    if skip_classifier:
        np.testing.assert_array_equal(model.get_layer("head").kernel.numpy(), head)
    else:
        np.testing.assert_array_equal(model.get_layer("head").bias.numpy(), state["fc.bias"])
    # The entry was written again, whole.
    assert entry.exists() and entry.stat().st_size > 1000
    caplog.clear()
    load_weights(tiny_cifar(), path, skip_classifier=skip_classifier)
    assert "converting again" not in caplog.text


def test_atomic_write_syncs_a_per_process_temporary_file(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(loading.os, "fsync", lambda fd: events.append("fsync") or real_fsync(fd))

    def replace(src, dst):
        events.append(("replace", os.path.basename(src)))
        real_replace(src, dst)

    monkeypatch.setattr(loading.os, "replace", replace)
    loading.save_weights_atomic(tiny_cifar(), str(tmp_path / "w.weights.h5"))
    assert events[0] == "fsync"
    assert events[1][0] == "replace" and f".tmp-{os.getpid()}-" in events[1][1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.weights.h5"]


# Bad files ---------------------------------------------------------------------------------


def write_bad_file(tmp_path, kind):
    """A file that must not load, and a marker that its content would create if it ran."""
    from safetensors.numpy import save_file

    marker = tmp_path / "code-ran"
    if kind == "truncated.safetensors":
        save_file(tiny_state(), str(tmp_path / "good.safetensors"))
        data = (tmp_path / "good.safetensors").read_bytes()
        path = tmp_path / kind
        path.write_bytes(data[: len(data) // 2])
    elif kind == "wrong_shapes.safetensors":
        path = tmp_path / kind
        save_file(tiny_state(num_classes=7), str(path))
    elif kind == "truncated.weights.h5":
        model = tiny_cifar()
        model.save_weights(str(tmp_path / "good.weights.h5"))
        data = (tmp_path / "good.weights.h5").read_bytes()
        path = tmp_path / kind
        path.write_bytes(data[: len(data) // 2])
    else:  # not the format the suffix names
        path = tmp_path / kind
        path.write_bytes(b"PK\x03\x04 this is not what the suffix says" * 10)
    return path, marker


BAD_FILES = [
    "truncated.safetensors",
    "wrong_shapes.safetensors",
    "garbage.safetensors",
    "truncated.weights.h5",
    "garbage.weights.h5",
    "garbage.h5",
    "garbage.keras",
    "garbage.t7",
]


@pytest.mark.parametrize("kind", BAD_FILES)
def test_bad_file_is_a_one_line_weights_error_naming_it(tmp_path, kind):
    path, _ = write_bad_file(tmp_path, kind)
    with pytest.raises(WeightsError) as error:
        load_weights(tiny_cifar(), str(path))
    message = str(error.value)
    assert str(path) in message and "\n" not in message, message


def test_bad_file_ends_the_convert_command_with_exit_code_2(tmp_path, capsys):
    path, _ = write_bad_file(tmp_path, "garbage.safetensors")
    out = tmp_path / "out.weights.h5"
    with pytest.raises(SystemExit) as stop:
        convert_main(["--src", str(path), "--model", "resnext29_8x64d", "--out", str(out)])
    assert stop.value.code == 2
    assert f"error: Cannot read {path} as safetensors" in capsys.readouterr().err


# Torch files -------------------------------------------------------------------------------


class RunsCode:
    """Pickles as a call that creates a folder: what a crafted .pth would do on load."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.fixture
def torch():
    import torch  # the test extra installs it

    return torch


def test_pth_that_would_run_code_is_refused(tmp_path, torch):
    path, marker = tmp_path / "evil.pth", tmp_path / "code-ran"
    torch.save({"conv1.weight": torch.zeros(1), "x": RunsCode(marker)}, str(path))
    with pytest.raises(WeightsError, match=r"evil\.pth with torch\.load\(weights_only=True\)"):
        load_weights(tiny_cifar(), str(path))
    assert not marker.exists()
    # The file really carries code: an unrestricted load would have run it.
    torch.load(str(path), weights_only=False)
    assert marker.exists()


def test_pth_is_refused_with_a_torch_whose_restricted_loader_has_known_bypasses(
    tmp_path, torch, monkeypatch
):
    # torch.load(weights_only=True) is the restricted loader only from MIN_TORCH on; an older
    # torch is refused before it opens the file, so a payload cannot run through its bypasses.
    path, marker = tmp_path / "evil.pth", tmp_path / "code-ran"
    torch.save({"conv1.weight": torch.zeros(1), "x": RunsCode(marker)}, str(path))
    monkeypatch.setattr(torch, "__version__", "2.5.1")
    with pytest.raises(WeightsError, match=r"^Refusing to read .*evil\.pth with torch 2\.5\.1: "):
        load_weights(tiny_cifar(), str(path))
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["truncated", "garbage"])
def test_damaged_pth_is_a_weights_error(tmp_path, torch, kind):
    path = tmp_path / f"{kind}.pth"
    torch.save({k: torch.from_numpy(v) for k, v in tiny_state().items()}, str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if kind == "truncated" else b"\x80\x04garbage")
    with pytest.raises(WeightsError, match=rf"Cannot read {path}"):
        load_weights(tiny_cifar(), str(path))


def test_pth_with_a_compressed_record_is_refused_before_torch_inflates_it(
    tmp_path, torch, monkeypatch
):
    # torch.save's archive again, deflated, its storage record grown to 128 MiB of zeros:
    # torch.load would inflate it whole (the tensor views one value of it) before any check.
    saved, path = tmp_path / "saved.pth", tmp_path / "deflated.pth"
    torch.save({"fc.bias": torch.zeros(1)}, str(saved))
    with zipfile.ZipFile(saved) as source, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as out:
        for info in source.infolist():
            with out.open(info.filename, "w", force_zip64=True) as record:
                if info.filename.endswith("/data/0"):
                    for _ in range(128):
                        record.write(bytes(2**20))
                else:
                    record.write(source.read(info))
    assert path.stat().st_size < 2**20

    def inflate(*args, **kwargs):
        raise AssertionError("torch.load ran")

    monkeypatch.setattr(torch, "load", inflate)
    with pytest.raises(WeightsError) as error:
        load_weights(tiny_cifar(), str(path))
    assert str(error.value) == (
        f"{path} holds the compressed record 'saved/data.pkl'; torch.save writes every record "
        "uncompressed, and torch.load would inflate it whole before any check. Save the weights "
        "again with torch.save, or convert them to .safetensors."
    )


@pytest.mark.parametrize("form", ["zip", "zip64", "legacy"])
def test_what_torch_save_writes_passes_the_compressed_record_check(tmp_path, torch, form):
    path = tmp_path / "w.pth"
    if form == "legacy":
        torch.save({"a": torch.zeros(3)}, str(path), _use_new_zipfile_serialization=False)
    else:  # over 65,535 records, the archive has zip64 end records
        count = 65_600 if form == "zip64" else 3
        torch.save({str(i): torch.zeros(1) for i in range(count)}, str(path))
    assert compressed_zip_record(path) is None


def test_old_torch_is_refused(tmp_path, torch, monkeypatch):
    path = tmp_path / "w.pth"
    torch.save({"fc.bias": torch.zeros(10)}, str(path))
    monkeypatch.setattr(torch, "__version__", "2.9.1")
    with pytest.raises(WeightsError, match=r"torch 2\.9\.1.*torch>=2\.10.*\.safetensors"):
        load_weights(tiny_cifar(), str(path))


# Keras files -------------------------------------------------------------------------------


MARKER_ENV = "RESNEXT_TF_TEST_MARKER"  # spelled out in the lambda, which sees no globals here


@pytest.fixture
def lambda_model(tmp_path, monkeypatch):
    """A .keras file whose Lambda layer creates a marker folder when the model is rebuilt."""
    import keras

    marker = tmp_path / "lambda-ran"
    monkeypatch.setenv(MARKER_ENV, str(marker))
    inputs = keras.Input((4,))
    # Keras stores the lambda's bytecode in the file; it names nothing of this module.
    layer = keras.layers.Lambda(
        lambda x: (
            [__import__("os").makedirs(__import__("os").environ["RESNEXT_TF_TEST_MARKER"])] and x
        )
    )
    path = tmp_path / "lambda.keras"
    keras.Model(inputs, layer(inputs)).save(str(path))
    if marker.exists():  # building the model called the lambda once
        marker.rmdir()
    return path, marker


def test_keras_file_with_a_lambda_is_refused_without_running_it(lambda_model):
    import keras

    path, marker = lambda_model
    assert not marker.exists()
    with pytest.raises(WeightsError, match=rf"{path}.*safe_mode") as error:
        load_keras_model(str(path))
    assert "\n" not in str(error.value)
    with pytest.raises(WeightsError, match=str(path)):
        load_weights(tiny_cifar(), str(path))  # reads the weights only
    assert not marker.exists()
    # The file really carries code: loading it outside safe mode runs the lambda.
    keras.saving.load_model(str(path), safe_mode=False)
    assert marker.exists()


def test_keras_files_need_keras_3_11(tmp_path, monkeypatch):
    import keras

    path = tmp_path / "m.keras"
    tiny_cifar().save(str(path))
    monkeypatch.setattr(keras, "__version__", "3.10.0")
    for load in (lambda: load_keras_model(str(path)), lambda: load_weights(tiny_cifar(), path)):
        with pytest.raises(WeightsError, match=r"Keras 3\.10\.0.*keras>=3\.11"):
            load()
    monkeypatch.undo()
    load_keras_model(str(path))  # a safe file loads
