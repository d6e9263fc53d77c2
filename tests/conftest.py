"""Shared fixtures: every cache points at a temp dir; tiny random checkpoints built once."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.support.checkpoints import build_checkpoint


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point HF caches, XDG dirs and history at a per-test temp dir; no colour, no network."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HF_HOME", str(home / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: no real network
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("XDG_DATA_HOME", str(home / "data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / "cache"))
    monkeypatch.setenv("GPT2_NO_HISTORY", "1")
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    return home


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 layers, 64 wide, 1000-token byte-level BPE; the Hub's unprefixed key layout."""
    return build_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-hub", layout="hub")


@pytest.fixture(scope="session")
def tiny_checkpoint_transformers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Same shape, `transformer.`-prefixed keys with lm_head.weight (recent save_pretrained)."""
    return build_checkpoint(
        tmp_path_factory.mktemp("ckpt") / "tiny-tf", layout="transformers", seed=1
    )


@pytest.fixture(scope="session")
def long_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An 8192-token window: thousands of tokens take seconds, time enough to interrupt."""
    folder = tmp_path_factory.mktemp("ckpt") / "tiny-long"
    return build_checkpoint(folder, n_positions=8192, layout="transformers")


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch):
    """A fake Hugging Face Hub on 127.0.0.1 (tests/fakehub.py); HF_ENDPOINT points at it."""
    from tests.support.fakehub import FakeHub

    hub = FakeHub()
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    yield hub
    hub.stop()


@pytest.fixture(params=[1, 2, 3], ids=["1-thread", "2-threads", "3-threads"])
def threads(request: pytest.FixtureRequest) -> Iterator[int]:
    """torch's thread count for one test (gpt2cli's kernels split their work over them)."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


@pytest.fixture(params=["avx512-vnni", "avx512-no-avx-vnni", "avx-vnni", "avx2"])
def int_dot(request: pytest.FixtureRequest) -> Iterator[str]:
    """Every way the int8 and int4 kernels sum products: AVX-512 VNNI (where the CPU has it;
    for several rows of x, or every row where the CPU has no AVX-VNNI, as Zen 4), AVX-VNNI's
    vpdpbusd, AVX2's vpmaddubsw / vpmaddwd."""
    yield from _products(request.param)


def _products(kind: str) -> Iterator[str]:
    from gpt2cli.model import native
    from gpt2cli.model.linear import Layout

    lib = native.kernels()
    if lib is None:
        pytest.skip("native kernels not built here")
    vnni, avx512 = lib.set_vnni(1), lib.set_avx512(1)
    if (kind == "avx-vnni" and not vnni) or (kind.startswith("avx512") and not avx512):
        pytest.skip(f"this CPU has no {kind.split('-')[0].upper()} VNNI")
    lib.set_vnni(int(kind in ("avx-vnni", "avx512-vnni")))
    lib.set_avx512(int(kind.startswith("avx512")))
    described = Layout("int8", native=True).describe()  # what -v shows
    assert ("(AVX-VNNI products" in described) == (kind in ("avx-vnni", "avx512-vnni"))
    assert ("AVX-512 VNNI" in described) == kind.startswith("avx512")
    yield kind
    lib.set_vnni(1)
    lib.set_avx512(1)
