"""Relocate an unpacked env pack to the prefix it now lives at.  Runs on compute nodes.

This file is copied into every pack (``.hpcenv-pack/relocate.py``) and run there by the env's
own python (``bin/python -I -S``), or by the node's ``python3`` when the env has none, so it
imports nothing but the standard library and keeps to Python 3.6 syntax: nodes have neither
hpcenv nor conda.  The env's python can relocate its own prefix, itself included, because a
CPython finds its standard library from the executable's location, not from a path compiled
in, and every rewritten file is written beside the old one and renamed over it (a running
executable cannot be opened for writing, but its directory entry can be replaced).

What is rewritten is what the pack's manifest lists (see :mod:`hpcenv.store.pack`):

* ``text`` files: every occurrence of the old prefix becomes the new one, as conda does at
  install.  A ``#!`` line in ``bin/`` longer than 127 bytes (the kernel's limit on older
  systems) becomes ``#!/usr/bin/env PROGRAM``, conda's fix for long prefixes; the activated
  env's ``bin`` is first on PATH, so it finds the same program.
* ``binary`` files: each NUL-terminated string starting with the old prefix is rewritten to the
  new prefix and padded with NULs to its old length, as conda pads binary placeholders; a new
  prefix longer than the old one cannot fit, and is refused before anything is changed.
* ``links``: symlinks whose target is an absolute path into the old prefix.

Usage: ``python relocate.py DIR NEW_PREFIX``: DIR holds the unpacked files; NEW_PREFIX is where
they will be used from (usually DIR itself, or where DIR is renamed to once relocated).  Exit
status 0 on success, 3 when the new prefix is too long for the binary files, 1 otherwise; one
line on stderr says why.
"""

import json
import os
import re
import sys

MANIFEST = ".hpcenv-pack/manifest.json"
SHEBANG_LIMIT = 127
EXIT_TOO_LONG = 3


class RelocationError(Exception):
    """A pack cannot be relocated: the message says why, for one line on stderr."""

    exit_code = 1


class PrefixTooLong(RelocationError):
    exit_code = EXIT_TOO_LONG


def read_manifest(directory):
    with open(os.path.join(directory, MANIFEST), encoding="utf-8") as handle:
        return json.load(handle)


def relocate_text(data, old, new, path):
    """``data`` with ``old`` replaced by ``new``; long shebangs in bin/ shortened."""
    data = data.replace(old, new)
    if path.startswith("bin/") and data.startswith(b"#!"):
        end = data.find(b"\n")
        line = data[:end] if end >= 0 else data
        if len(line) > SHEBANG_LIMIT:
            words = line[2:].strip().split()
            if words:
                program = os.path.basename(words[0])
                line = b"#!/usr/bin/env " + b" ".join([program] + words[1:])
                data = line + (data[end:] if end >= 0 else b"")
    return data


def relocate_binary(data, old, new):
    """``data`` with each NUL-terminated string starting with ``old`` rewritten to start with
    ``new``, padded with NULs so that every offset in the file stays where it was."""
    if len(new) > len(old):
        raise PrefixTooLong("new prefix is longer than the old one")
    pattern = re.compile(re.escape(old) + b"[^\0]*\0")

    def replace(match):
        # Every occurrence in the string (a search path may name the prefix twice).
        whole = match.group(0)
        text = whole[:-1].replace(old, new)
        return text + b"\0" * (len(whole) - len(text))

    return pattern.sub(replace, data)


def _rewrite(full, data):
    """Write ``data`` to ``full`` through a new file renamed over it, keeping its mode."""
    mode = os.lstat(full).st_mode & 0o7777
    tmp = full + ".hpcenv-relocate"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, full)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise


def relocate(directory, new_prefix):
    """Rewrite the files the manifest in ``directory`` lists for ``new_prefix``; returns how
    many files and links were changed."""
    manifest = read_manifest(directory)
    old = manifest["prefix"].encode("utf-8")
    new = new_prefix.rstrip("/").encode("utf-8")
    files = manifest.get("files", [])
    if len(new) > len(old) and any(f["mode"] == "binary" for f in files):
        raise PrefixTooLong("{} is {} bytes, longer than the packed prefix {} ({} bytes), "
                            "and binary files embed it; stage to a shorter path".format(
                                new_prefix, len(new), manifest["prefix"], len(old)))
    changed = 0
    for entry in files:
        rel = entry["path"]
        full = os.path.join(directory, rel)
        with open(full, "rb") as handle:
            data = handle.read()
        if entry["mode"] == "binary":
            result = relocate_binary(data, old, new)
        else:
            result = relocate_text(data, old, new, rel)
        if result != data:
            _rewrite(full, result)
            changed += 1
    for rel in manifest.get("links", []):
        full = os.path.join(directory, rel)
        target = os.readlink(full).encode("utf-8")
        if target == old or target.startswith(old + b"/"):
            os.unlink(full)
            os.symlink((new + target[len(old):]).decode("utf-8"), full)
            changed += 1
    return changed


def main(argv):
    if len(argv) != 3:
        sys.stderr.write("usage: relocate.py DIR NEW_PREFIX\n")
        return 2
    try:
        relocate(argv[1], argv[2])
    except RelocationError as exc:
        sys.stderr.write("relocate: {}\n".format(exc))
        return exc.exit_code
    except (OSError, ValueError, KeyError) as exc:
        sys.stderr.write("relocate: {}: {}\n".format(argv[1], exc))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
