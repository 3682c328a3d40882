"""MovieLens-100K from the installed `recbole` wheel (never a committed copy: the data's
terms forbid redistribution), as time-ordered histories with a leave-one-out split."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd


def data_dir() -> Path:
    spec = importlib.util.find_spec("recbole")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("MovieLens-100K comes with recbole: pip install --no-deps recbole==1.2.1")
    return Path(spec.submodule_search_locations[0]) / "dataset_example" / "ml-100k"


@dataclass(frozen=True)
class MovieLens:
    histories: dict[int, np.ndarray]  # user -> item indices (1..n_items) in time order
    n_items: int
    genre: np.ndarray  # (n_items + 1,) first listed genre per item index ("" for padding)
    year_band: np.ndarray  # (n_items + 1,) e.g. "1990s"
    age_band: dict[int, str]  # user -> "under 25" | "25-34" | "35-49" | "50+"
    title: np.ndarray  # (n_items + 1,) "Star Wars (1977)"
    raw_id: np.ndarray  # (n_items + 1,) MovieLens item id of each index (0 for padding)


def load() -> MovieLens:
    d = data_dir()
    inter = pd.read_csv(d / "ml-100k.inter", sep="\t")
    inter.columns = ["user", "item", "rating", "ts"]
    items = pd.read_csv(d / "ml-100k.item", sep="\t", dtype=str, keep_default_na=False)
    items.columns = ["item", "title", "year", "genres"]
    users = pd.read_csv(d / "ml-100k.user", sep="\t", dtype=str)
    users.columns = ["user", "age", "gender", "occupation", "zip"]
    # dense item indices 1..n (0 pads)
    codes = {raw: i + 1 for i, raw in enumerate(sorted(inter["item"].unique()))}
    inter["idx"] = inter["item"].map(codes)
    inter = inter.sort_values(["user", "ts", "idx"], kind="stable")
    histories = {int(u): g["idx"].to_numpy() for u, g in inter.groupby("user", sort=True)}
    n = len(codes)
    raw_id = np.zeros(n + 1, dtype=np.int64)
    genre = np.full(n + 1, "", dtype=object)
    year_band = np.full(n + 1, "", dtype=object)
    title = np.full(n + 1, "", dtype=object)
    meta = items.set_index(items["item"].astype(int))
    for raw, idx in codes.items():
        raw_id[idx] = raw
        if raw in meta.index:
            g = meta.at[raw, "genres"].split()  # in alphabetical order: the first listed one
            genre[idx] = g[0] if g else "unknown"
            y = meta.at[raw, "year"]
            year_band[idx] = f"{y[:3]}0s" if y.isdigit() else "unknown"
            title[idx] = f"{meta.at[raw, 'title']} ({y})" if y.isdigit() else meta.at[raw, "title"]

    def band(age: int) -> str:
        return "under 25" if age < 25 else "25-34" if age < 35 else "35-49" if age < 50 else "50+"

    age_band = {int(u): band(int(a)) for u, a in zip(users["user"], users["age"], strict=True)}
    return MovieLens(histories, n, genre, year_band, age_band, title, raw_id)


def left_pad(seqs: list[np.ndarray], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(B, max_len) left-padded with 0 (the last column is the most recent) and lengths."""
    out = np.zeros((len(seqs), max_len), dtype=np.int64)
    lengths = np.zeros(len(seqs), dtype=np.int64)
    for i, s in enumerate(seqs):
        s = s[-max_len:]
        out[i, max_len - len(s):] = s
        lengths[i] = len(s)
    return out, lengths
