"""`torchvision:NAME --download`: torch hub's download, refused unless the SHA-256 matches the
prefix in torchvision's file name. The network is replaced by a fake `urlopen` serving bytes,
so torch's own download and hash check run for real."""

from __future__ import annotations

import email.message
import hashlib
import io

import pytest
import torch
import torch.hub

from cnntools.core.errors import CnnError
from cnntools.models import hub


class _Response(io.BytesIO):
    def info(self):
        message = email.message.Message()
        message["Content-Length"] = str(len(self.getvalue()))
        return message


@pytest.fixture
def served(monkeypatch):
    """Serve `served.data` for any URL; `served.urls` records what was asked for."""

    class Server:
        data = b""
        urls: list[str] = []

    def urlopen(request, *args, **kwargs):
        Server.urls.append(getattr(request, "full_url", request))
        return _Response(Server.data)

    monkeypatch.setattr(torch.hub, "urlopen", urlopen)
    return Server


def _weights_bytes():
    from torchvision.models import resnet18

    torch.manual_seed(2)
    buffer = io.BytesIO()
    reference = resnet18()
    torch.save(reference.state_dict(), buffer)
    return reference, buffer.getvalue()


class _Weights:
    """torchvision's resnet18 weights entry, its URL's file name carrying `prefix`."""

    def __init__(self, prefix):
        self.real = hub.default_weights("resnet18")
        self.url = f"https://download.pytorch.org/models/resnet18-{prefix}.pth"

    def __getattr__(self, name):
        return getattr(self.real, name)


def test_download_fetches_checks_the_hash_and_loads(tmp_path, monkeypatch, served):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    reference, data = _weights_bytes()
    served.data = data
    weights = _Weights(hashlib.sha256(data).hexdigest()[:8])
    with pytest.raises(CnnError, match="pass --download"):
        hub.load_cached_state_dict(weights, "resnet18")  # never the network without --download
    assert served.urls == []
    state = hub.load_cached_state_dict(weights, "resnet18", download=True)
    assert served.urls == [weights.url]
    for key, value in reference.state_dict().items():
        assert torch.equal(state[key], value), key
    assert hub.cached_weights_path(weights).is_file()
    hub.load_cached_state_dict(weights, "resnet18", download=True)  # cached now: no second download
    assert served.urls == [weights.url]


def test_a_download_with_the_wrong_hash_is_refused_and_not_kept(tmp_path, monkeypatch, served):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    served.data = b"not the published weights"
    weights = hub.default_weights("resnet18")  # resnet18-f37072fd.pth
    with pytest.raises(CnnError) as error:
        hub.load_cached_state_dict(weights, "resnet18", download=True)
    assert "invalid hash value" in str(error.value) and '"f37072fd"' in str(error.value)
    folder = tmp_path / "hub" / "checkpoints"
    assert list(folder.iterdir()) == []  # neither the file nor torch's .partial


def test_the_cli_passes_download_through(cli, tmp_path, monkeypatch, served):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    served.data = b"tampered"
    missing = cli("eval", "torchvision:resnet18", "--image", tmp_path / "x.png")
    assert missing.exit_code == 1 and "pass --download" in missing.stderr and served.urls == []
    refused = cli("eval", "torchvision:resnet18", "--image", tmp_path / "x.png", "--download")
    assert refused.exit_code == 1 and "invalid hash value" in refused.stderr, refused.stderr
    assert served.urls == [hub.default_weights("resnet18").url]
