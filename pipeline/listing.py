"""The inputs of a preprocessing run: a folder (recursive), an s3:// prefix, or a list file."""

from __future__ import annotations

import os
from pathlib import PurePosixPath

import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline.storage import is_remote, join, resolve

VIDEO_EXTENSIONS = frozenset(
    {
        ".mp4",
        ".m4v",
        ".mov",
        ".mkv",
        ".webm",
        ".avi",
        ".mpg",
        ".mpeg",
        ".ts",
        ".mts",
        ".m2ts",
        ".flv",
        ".wmv",
        ".3gp",
        ".ogv",
    }
)
"""Suffixes (compared lower-case) of the files a folder or prefix contributes."""

LIST_FILE_SUFFIXES = (".txt", ".csv", ".parquet")
URI_COLUMN = "uri"


def _uri_of(input_uri: str, path: str) -> str:
    """The URI of `path`, a path inside the filesystem that holds `input_uri`."""
    if is_remote(input_uri):
        return f"{input_uri.split('://', 1)[0]}://{path}"
    return path


def _has_video_suffix(name: str) -> bool:
    """As `PurePosixPath(name).suffix.lower() in VIDEO_EXTENSIONS`, without its cost per file."""
    stem, dot, suffix = name.rpartition("/")[2].rpartition(".")
    return bool(stem and dot) and f".{suffix.lower()}" in VIDEO_EXTENSIONS


def _list_folder(uri: str, fs: pafs.FileSystem, path: str) -> list[str]:
    if isinstance(fs, pafs.LocalFileSystem):  # directory entries tell files from folders: no stat per file
        return [f"{folder}/{name}" for folder, _, names in os.walk(path) for name in names if _has_video_suffix(name)]
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))  # S3: sizes come with the listing
    return [
        _uri_of(uri, info.path) for info in infos if info.type == pafs.FileType.File and _has_video_suffix(info.path)
    ]


def _read_list_file(uri: str, fs: pafs.FileSystem, path: str) -> list[str]:
    """URIs from a .txt (one per line, # comments) or a .csv/.parquet `uri` column; relative
    paths are taken from the list file's folder (on its filesystem, S3 included)."""
    suffix = PurePosixPath(path).suffix.lower()
    if suffix == ".txt":
        with fs.open_input_stream(path) as stream:
            lines = stream.read().decode("utf-8").splitlines()
        entries = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    else:
        with fs.open_input_file(path) as stream:
            table = pq.read_table(stream) if suffix == ".parquet" else pacsv.read_csv(stream)
        if URI_COLUMN not in table.column_names:
            raise ValueError(f"{uri}: list file has no '{URI_COLUMN}' column (columns: {table.column_names})")
        entries = [str(value) for value in table.column(URI_COLUMN).to_pylist() if value]
    folder = _uri_of(uri, str(PurePosixPath(path).parent))
    return [entry if is_remote(entry) or entry.startswith("/") else join(folder, entry) for entry in entries]


def list_inputs(uri: str) -> list[str]:
    """All input media URIs under `uri`, sorted and without repeats."""
    fs, path = resolve(uri)
    kind = fs.get_file_info(path).type
    if kind == pafs.FileType.NotFound:
        raise ValueError(f"{uri}: input does not exist")
    if kind == pafs.FileType.File:
        if PurePosixPath(path).suffix.lower() not in LIST_FILE_SUFFIXES:
            raise ValueError(
                f"{uri}: an input file must be a list ({', '.join(LIST_FILE_SUFFIXES)}); "
                "give the folder that holds a video instead"
            )
        found = _read_list_file(uri, fs, path)
    else:
        found = _list_folder(uri, fs, path)
    if not found:
        raise ValueError(f"{uri}: no inputs found (video suffixes: {', '.join(sorted(VIDEO_EXTENSIONS))})")
    return sorted(set(found))
