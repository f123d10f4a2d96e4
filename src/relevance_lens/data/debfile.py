"""Reading .deb packages (ar archive + data.tar) in pure Python, and finding or fetching them."""

from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
import tarfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from relevance_lens.errors import InputError

# ---------------------------------------------------------------- .deb files


@dataclass
class DebPackage:
    """A ``.deb``'s identity and the files it holds (only those asked for are kept)."""

    name: str
    version: str
    path: Path
    sha256: str
    files: dict[str, bytes]  # path inside the package (no leading "./") -> bytes


def _ar_members(data: bytes, path: Path) -> dict[str, bytes]:
    if not data.startswith(b"!<arch>\n"):
        raise InputError(f"{path}: not a .deb (no ar archive header); re-download it")
    members, pos = {}, 8
    while pos + 60 <= len(data):
        header = data[pos : pos + 60]
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        members[name] = data[pos + 60 : pos + 60 + size]
        pos += 60 + size + (size % 2)
    return members


def _tar_stream(member_name: str, blob: bytes, deb: Path, part: str) -> tarfile.TarFile:
    if member_name.endswith((".xz", ".gz", ".bz2")) or member_name.endswith(".tar"):
        return tarfile.open(fileobj=io.BytesIO(blob), mode="r:*")
    # zstd and friends: let dpkg-deb decompress (it knows every format dpkg supports)
    if shutil.which("dpkg-deb") is None:
        raise InputError(
            f"{deb}: {member_name} needs dpkg-deb to decompress; install dpkg or use an xz-compressed .deb"
        )
    flag = "--fsys-tarfile" if part == "data" else "--ctrl-tarfile"
    tar = subprocess.run(["dpkg-deb", flag, str(deb)], check=True, capture_output=True).stdout
    return tarfile.open(fileobj=io.BytesIO(tar), mode="r:")


def read_deb(path: Path, want: Callable[[str], bool]) -> DebPackage:
    """Read a ``.deb`` with no external tools: its control fields and the regular files ``want`` accepts.

    Symlinks are skipped (man-page aliases are symlinks; the real page is read once).
    """
    data = path.read_bytes()
    members = _ar_members(data, path)
    control_name = next((n for n in members if n.startswith("control.tar")), None)
    data_name = next((n for n in members if n.startswith("data.tar")), None)
    if control_name is None or data_name is None:
        raise InputError(f"{path}: no control.tar/data.tar member; expected a Debian binary package")
    fields: dict[str, str] = {}
    with _tar_stream(control_name, members[control_name], path, "control") as tar:
        for member in tar:
            if member.name.lstrip("./") == "control":
                for line in tar.extractfile(member).read().decode("utf-8").split("\n"):  # type: ignore[union-attr]
                    key, sep, value = line.partition(":")
                    if sep and not line[:1].isspace():
                        fields[key] = value.strip()
    files: dict[str, bytes] = {}
    with _tar_stream(data_name, members[data_name], path, "data") as tar:
        for member in tar:
            name = str(PurePosixPath(member.name.lstrip("."))).lstrip("/")
            if member.isfile() and want(name):
                files[name] = tar.extractfile(member).read()  # type: ignore[union-attr]
    return DebPackage(
        fields.get("Package", ""), fields.get("Version", ""), path, hashlib.sha256(data).hexdigest(), files
    )


def find_debs(packages: Iterable[str], deb_dir: Path | None, download_dir: Path) -> dict[str, Path]:
    """Locate ``<pkg>_*.deb`` in ``deb_dir``; fetch the missing ones with ``apt-get download``."""
    found: dict[str, Path] = {}
    missing = []
    for package in packages:
        candidates = sorted(deb_dir.glob(f"{package}_*.deb")) if deb_dir is not None else []
        if len(candidates) > 1:
            names = ", ".join(c.name for c in candidates)
            raise InputError(f"{deb_dir}: several .deb files for {package} ({names}); keep exactly one")
        if candidates:
            found[package] = candidates[0]
        else:
            missing.append(package)
    if missing:
        if shutil.which("apt-get") is None:
            raise InputError(
                f"missing .deb files for {', '.join(missing)} and no apt-get to fetch them; "
                f"download them on a Debian machine (apt-get download {' '.join(missing)}) and pass their folder"
            )
        done = subprocess.run(["apt-get", "download", *missing], cwd=download_dir, capture_output=True, text=True)
        if done.returncode != 0:
            raise InputError(f"apt-get download {' '.join(missing)} failed: {done.stderr.strip()[-500:]}")
        for package in missing:
            candidates = sorted(download_dir.glob(f"{package}_*.deb"))
            if not candidates:
                raise InputError(f"apt-get download {package} produced no .deb in {download_dir}")
            found[package] = candidates[-1]
    return found
