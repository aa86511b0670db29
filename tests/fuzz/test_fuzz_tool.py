"""The fuzz entry point's own behaviour (fuzz/__main__.py, fuzz/record.py): a campaign in parts
keeps what it found, a re-recording keeps the seeds captured from a live API server, and the
corpora that could be captured are."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from fuzz.record import record_all
from fuzz.record_live import LIVE_PREFIX

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO / "fuzz" / "corpus"


@pytest.mark.skipif(importlib.util.find_spec("atheris") is None, reason="needs atheris (the fuzz extra)")
def test_a_campaign_in_parts_keeps_the_inputs_it_added_in_its_work_directory(tmp_path):
    work = tmp_path / "work"
    for part in (1, 2):
        result = subprocess.run([sys.executable, "-m", "fuzz", "jwt", "--runs", "3000", "--seed", str(part),
                                 "--work", str(work)], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr[-2000:]
        if part == 1:
            found = sorted(p.name for p in work.iterdir())
            assert found, "the first part added nothing to its work directory"
    # The second part read the first part's inputs back before mutating.
    assert f"{len(found)} files found in {work}" in result.stderr
    assert set(found) <= {p.name for p in work.iterdir()}


def test_re_recording_a_corpus_keeps_its_live_captures_and_replaces_the_rest(tmp_path):
    corpus = tmp_path / "corpus"
    (corpus / "jwt").mkdir(parents=True)
    (corpus / "jwt" / (LIVE_PREFIX + "0123456789abcdef")).write_bytes(b"a.token.from-the-api-server")
    (corpus / "jwt" / "0000000000000000").write_bytes(b"a stale offline seed")
    record_all(corpus, ["jwt"])
    names = sorted(p.name for p in (corpus / "jwt").iterdir())
    assert LIVE_PREFIX + "0123456789abcdef" in names and "0000000000000000" not in names
    assert len(names) == 2  # the live capture and the one token the offline recorder lays out


def test_recording_an_unknown_target_says_which():
    with pytest.raises(SystemExit, match="no recorder for nope"):
        record_all(CORPUS, ["nope"])


def test_the_admission_corpus_holds_reviews_a_real_api_server_sent():
    reviews = [json.loads(p.read_bytes()) for p in (CORPUS / "admission").glob(LIVE_PREFIX + "*")]
    assert reviews, "no captured AdmissionReview; run `python -m fuzz record-live`"
    for review in reviews:
        request = review["request"]
        # What only the API server fills in: who asked, and the object as it stores it.
        assert review["kind"] == "AdmissionReview" and request["userInfo"]["username"]
        assert request["operation"] in ("CREATE", "UPDATE") and request["object"]["metadata"]["uid"]


def test_the_ca_corpus_holds_bodies_ztunnel_s_ca_client_sends():
    bodies = [json.loads(p.read_bytes()) for p in (CORPUS / "ca_csr").iterdir()]
    assert bodies and all(b["csr"].startswith("-----BEGIN CERTIFICATE REQUEST-----") for b in bodies)
    assert {"ttl_seconds" in b for b in bodies} == {True, False}


def test_the_cni_corpus_holds_what_libcni_passed_the_plugin_after_the_bridge():
    seeds = [p.read_bytes() for p in (CORPUS / "cni").glob(LIVE_PREFIX + "*")]
    assert sorted(seed[0] for seed in seeds) == [0, 1, 2]  # ADD, DEL, CHECK (fuzz/targets.py _cni)
    for seed in seeds:
        args, _, stdin = seed[1:].partition(b"\0")
        config = json.loads(stdin)
        assert b"K8S_POD_NAME=" in args and config["type"] == "wisp-cni"
        # The bridge plugin's result as libcni hands it on: the pod's interface and address.
        assert any(i.get("sandbox") for i in config["prevResult"]["interfaces"]) and config["prevResult"]["ips"]
