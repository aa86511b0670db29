"""Image names → programs (runtime/images.py)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from runtime.images import ImageError, known, lookup, repository, resolve

BIN_DIR = Path(sys.executable).parent


@pytest.mark.parametrize("image, name", [
    ("busybox", "busybox"),
    ("busybox:1.36", "busybox"),
    ("docker.io/library/busybox:1.36@sha256:abcd", "busybox"),
    ("curlimages/curl:8.5.0", "curlimages/curl"),
    ("ghcr.io/example/wisp:0.1.0", "example/wisp"),
    ("localhost:5000/nginx", "nginx"),
])
def test_repository_drops_registry_tag_and_digest(image: str, name: str) -> None:
    assert repository(image) == name


def test_the_projects_image_under_any_tag_or_registry_is_wisp() -> None:
    for image in ("wisp:0.1.0", "wisp:latest", "wisp", "ghcr.io/example/wisp:0.1.0"):
        assert lookup(image).name == "wisp"


def test_the_projects_image_runs_the_command_from_the_packages_bin_dir() -> None:
    argv = resolve("wisp:0.1.0", ["wisp-echo"], ["--http", "8080"], BIN_DIR)
    assert argv == [str(BIN_DIR / "wisp-echo"), "--http", "8080"]


def test_the_projects_image_falls_back_to_the_machines_path() -> None:
    assert resolve("wisp:0.1.0", ["sleep", "1"], None, BIN_DIR)[0] == shutil.which("sleep")


def test_args_alone_replace_the_images_cmd_and_keep_its_entrypoint() -> None:
    if shutil.which("curl") is None:
        pytest.fail("curl is part of the test machine's tools")
    assert resolve("curlimages/curl", None, ["-s", "http://web"], BIN_DIR) == [shutil.which("curl"), "-s", "http://web"]


def test_command_replaces_entrypoint_and_cmd() -> None:
    assert resolve("curlimages/curl", ["sleep"], ["5"], BIN_DIR) == [shutil.which("sleep"), "5"]


def test_nginx_is_an_http_server_on_port_80() -> None:
    assert resolve("nginx:1.27", None, None, BIN_DIR) == [str(BIN_DIR / "wisp-echo"), "--http", "80"]


def test_an_unknown_image_is_err_image_pull_naming_the_known_ones() -> None:
    with pytest.raises(ImageError) as caught:
        resolve("example.com/team/app:2", None, None, BIN_DIR)
    assert caught.value.reason == "ErrImagePull"
    assert "example.com/team/app:2" in caught.value.message
    assert all(name in caught.value.message for name in known())


def test_a_command_not_in_the_image_is_a_run_container_error() -> None:
    with pytest.raises(ImageError) as caught:
        resolve("busybox", ["no-such-program-xyz"], None, BIN_DIR)
    assert caught.value.reason == "RunContainerError" and "no-such-program-xyz" in caught.value.message


def test_an_image_whose_programs_the_machine_lacks_is_err_image_pull() -> None:
    with pytest.raises(ImageError) as caught:
        resolve("curlimages/curl", None, None, BIN_DIR, path="/nonexistent")
    assert caught.value.reason == "ErrImagePull" and "curl" in caught.value.message


def test_no_image_needs_a_command() -> None:
    with pytest.raises(ImageError, match="no command"):
        resolve("", None, None, BIN_DIR)
