"""Config edits on disk, as a user makes them: the demo's way of changing the mesh.

The demo serves a temporary copy of ``examples/bookinfo`` from the config service and
changes it the way an operator would: it replaces one resource in a YAML file (say,
the ``reviews`` VirtualService in ``routes.yaml``) or adds a file. Every write is
atomic (a temporary file in the same directory, then a rename), so the service's
watcher never reads half a file.

Only what the demo needs: documents are told apart by ``---`` lines, and a resource
is found by its ``kind`` and ``metadata.name``.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

import yaml

from meshsdk.config.loader import YAML_SUFFIXES

_SEPARATOR = re.compile(r"^---[ \t]*$", re.M)


def copy_config(source: Path, target: Path) -> list[Path]:
    """Copy the YAML files of directory ``source`` into ``target``; the copies."""
    target.mkdir(parents=True, exist_ok=True)
    copied = []
    for path in sorted(source.iterdir()):
        if path.is_file() and path.suffix in YAML_SUFFIXES:
            copied.append(Path(shutil.copyfile(path, target / path.name)))
    return copied


def write_file(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically (write a sibling, then rename it)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def split_documents(text: str) -> list[str]:
    """The YAML documents of ``text``, as text, split on ``---`` lines (empty ones dropped)."""
    return [doc.strip("\n") for doc in _SEPARATOR.split(text) if doc.strip()]


def resource_key(document: str) -> tuple[str, str] | None:
    """``(kind, metadata.name)`` of one YAML document; None if it is no resource."""
    data = yaml.safe_load(document)
    if not isinstance(data, dict):
        return None
    metadata = data.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    kind = data.get("kind")
    if not isinstance(kind, str) or not isinstance(name, str):
        return None
    return kind, name


def _without_leading_comments(document: str) -> str:
    lines = document.splitlines()
    while lines and (not lines[0].strip() or lines[0].lstrip().startswith("#")):
        lines.pop(0)
    return "\n".join(lines)


def replace_resource(path: Path, replacement: str, note: str = "") -> tuple[str, str]:
    """Put the one resource of ``replacement`` in place of the resource of the same
    kind and name in the YAML file ``path`` (appended if there is none); write the
    file atomically. ``note`` becomes a comment above it. Returns (kind, name).

    Raises ValueError if ``replacement`` is not exactly one resource.
    """
    new_docs = [d for d in split_documents(replacement) if resource_key(d) is not None]
    if len(new_docs) != 1:
        raise ValueError(f"expected one resource to put into {path}, got {len(new_docs)}")
    key = resource_key(new_docs[0])
    assert key is not None
    body = _without_leading_comments(new_docs[0])
    if note:
        body = f"# {note}\n{body}"
    docs = split_documents(path.read_text(encoding="utf-8"))
    for i, doc in enumerate(docs):
        if resource_key(doc) == key:
            docs[i] = body
            break
    else:
        docs.append(body)
    write_file(path, "\n---\n".join(docs) + "\n")
    return key


def add_file(path: Path, text: str) -> None:
    """Create (or replace) a config file, atomically."""
    write_file(path, text)
