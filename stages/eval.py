"""``run eval``: recall@N of a descriptor store's photos against its database windows (EarthLoc's protocol).

Queries are the store's photos that have a footprint (a footprints manifest's localized rows, or a truth file:
the sample's ``truth.parquet`` or a CSV like the real sample's); positives, the windows their footprints
intersect (:mod:`pipeline.evaluate`). Writes a JSON summary (recalls beside the random-ranking baseline, query
counts, latency per query, descriptor memory), a per-query Parquet (rank of the first positive, the top-N
window ids, rotations and scores) and, with ``--preview``, a PNG of queries beside their top windows (right
ones framed green, wrong ones red).
"""

from __future__ import annotations

import json
import logging
import time
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from manifests import read_manifest
from manifests.files import atomic_output
from pipeline.descriptors import load_descriptors
from pipeline.evaluate import KS, first_positive_ranks, knn, knn_within, positive_windows, random_recall, recalls
from pipeline.pairs import Database
from pipeline.settings import Settings, setting

from .base import Stage, StageError, StageRun
from .pairs import localized_footprints

log = logging.getLogger(__name__)
CORNERS = ("tl", "tr", "br", "bl")


@dataclass(frozen=True)
class EvalSettings(Settings):
    section = "eval setting"

    store: str = setting(
        "", "the descriptor store's index from `run describe` (default: WORKDIR/descriptors/index.parquet)"
    )
    footprints: str = setting(
        "",
        "the queries' footprints: a footprints manifest, truth.parquet or a truth CSV "
        "(default: WORKDIR/truth.parquet when it exists, else WORKDIR/footprints.parquet)",
    )
    out: str = setting("", "the JSON summary (default: WORKDIR/eval/summary.json; the per-query Parquet beside it)")
    ks: tuple[int, ...] = setting(KS, "the N of recall@N")
    index: str = setting(
        "flat",
        "flat (exact kNN), or a FAISS factory string for a compressed index, e.g. "
        "PCA256,IVF64,PQ32 (its recall is then reported beside the exact one's)",
    )
    space: str = setting(
        "all",
        "the search space: all (the whole database); region (queries whose weak label is "
        "within query_km of center, windows within window_km of it, as EarthLoc's test "
        "regions); visible (per query, the windows within the ISS's view of the photo's "
        "nadir, visible_km2: AstroLoc's)",
        choices=("all", "region", "visible"),
    )
    center: tuple[float, ...] = setting((), "for space region: lon, lat of its centre, degrees", metavar="LON,LAT")
    query_km: float = setting(0.0, "for space region: queries whose weak label lies within this distance, km")
    window_km: float = setting(0.0, "for space region: windows whose centre lies within this distance, km")
    visible_km2: float = setting(20e6, "for space visible: the area seen from the nadir, km2 (a spherical cap)")
    preview: str | None = setting(
        None, "also draw the first queries beside their top windows into this PNG", runtime=True, metavar="PNG"
    )

    def check(self) -> None:
        self.need(bool(self.ks) and all(k >= 1 for k in self.ks), "ks", "positive integers, e.g. [1, 10, 100]")
        if self.space == "region":
            self.need(len(self.center) == 2, "center", "lon, lat of the region's centre (space region)")
            self.need(
                self.query_km > 0 and self.window_km > 0, "query_km", "query_km and window_km above 0 (space region)"
            )
        self.need(self.visible_km2 > 0, "visible_km2", "an area above 0")


class EvalStage(Stage):
    name = "eval"
    help = "recall@N of the described photos against the described database (EarthLoc's protocol)"
    settings_class = EvalSettings

    def resolve(self, s: EvalSettings, workdir: Path) -> EvalSettings:
        footprints = s.footprints or str(workdir / "truth.parquet")
        if not s.footprints and not Path(footprints).exists():
            footprints = str(workdir / "footprints.parquet")
        return replace(
            s,
            store=str(Path(s.store or workdir / "descriptors" / "index.parquet").resolve()),
            footprints=str(Path(footprints).resolve()),
            out=str(Path(s.out or workdir / "eval" / "summary.json").resolve()),
            preview=str(Path(s.preview).resolve()) if s.preview else None,
        )

    def output(self, s: EvalSettings) -> Path:
        return Path(s.out)

    def input_files(self, s: EvalSettings) -> list[Path]:
        return [f for f in (Path(s.store), Path(s.store + ".config.toml"), Path(s.footprints)) if f.is_file()]

    def check(self, run: StageRun) -> None:
        s = run.settings
        if not Path(s.store).is_file():
            raise StageError(f"descriptor store not found: {s.store}; make it with `python -m pipeline run describe`")
        if not Path(s.footprints).is_file():
            raise StageError(
                f"footprints not found: {s.footprints}; pass --footprints with a footprints manifest or a truth file"
            )

    def run(self, run: StageRun) -> str:
        s = run.settings
        folder = Path(s.store).parent
        windows, db_desc = load_descriptors(folder, "window")
        photos, q_desc = load_descriptors(folder, "photo")
        if not len(windows) or not len(photos):
            raise StageError(
                f"{s.store} holds {len(windows)} window and {len(photos)} photo descriptors; describe "
                "both (`run describe` with --queries)"
            )
        fp = localized_footprints(s.footprints).drop_duplicates("photo_id").set_index("photo_id")
        has = photos["id"].isin(fp.index).to_numpy()
        photos, q_desc = photos[has].reset_index(drop=True), q_desc[has]
        ids = windows["id"].to_numpy()
        zxy = np.array([t.split("_") for t in pd.unique(ids)], dtype=np.int64)
        size = self._size_tiles(s.store)
        db = Database.from_columns(zxy[:, 0], zxy[:, 1], zxy[:, 2], size)
        rows = fp.loc[photos["id"]]
        lon = rows[[f"{c}_lon" for c in CORNERS]].to_numpy(np.float64)
        lat = rows[[f"{c}_lat" for c in CORNERS]].to_numpy(np.float64)
        positives = positive_windows(lon, lat, db)
        kept = np.array([len(p) > 0 for p in positives], bool)
        dropped = int((~kept).sum())
        photos, q_desc = photos[kept].reset_index(drop=True), q_desc[kept]
        positives = [p for p, k in zip(positives, kept) if k]
        allowed, space_line = None, "the whole database"
        if s.space != "all":
            photos, q_desc, positives, windows, db_desc, allowed, space_line = self._space(
                s, photos, q_desc, positives, windows, db_desc, size
            )
            ids = windows["id"].to_numpy()
        pos_entries = np.array(
            [int(np.isin(ids if allowed is None else ids[allowed[i]], list(p)).sum()) for i, p in enumerate(positives)],
            dtype=np.int64,
        )
        searchable = pos_entries > 0  # a query with no positive where it is searched is dropped and counted
        dropped += int((~searchable).sum())
        photos, q_desc, pos_entries = (
            photos[searchable].reset_index(drop=True),
            q_desc[searchable],
            pos_entries[searchable],
        )
        positives = [p for p, keep in zip(positives, searchable) if keep]
        if allowed is not None:
            allowed = allowed[searchable]
        entries = allowed.sum(axis=1) if allowed is not None else len(ids)
        k = max(s.ks)
        t0 = time.perf_counter()
        if allowed is None:
            scores, nearest = knn(db_desc, q_desc, k, s.index)
        else:
            scores, nearest = knn_within(db_desc, q_desc, k, allowed)
        search_s = (time.perf_counter() - t0) / max(len(photos), 1)
        ranks = first_positive_ranks(nearest, ids, positives)
        summary = {
            "queries": len(photos),
            "dropped_no_positive": dropped,
            "queries_without_footprint": int((~has).sum()),
            "database_windows": int(len(db.keys)),
            "database_entries": int(len(ids)),
            "recall": {str(n): v for n, v in recalls(ranks, s.ks).items()},
            "random_recall": {str(n): v for n, v in random_recall(entries, pos_entries, s.ks).items()},
            "space": s.space,
            "space_detail": space_line,
            "search_ms_per_query": 1e3 * search_s,
            "index": s.index,
            "descriptor_memory_mb": float(db_desc.nbytes / 2**20),
            "dim": int(db_desc.shape[1]),
        }
        if s.index != "flat" and allowed is None:
            _, exact = knn(db_desc, q_desc, k, "flat")
            summary["exact_recall"] = {
                str(n): v for n, v in recalls(first_positive_ranks(exact, ids, positives), s.ks).items()
            }
        rot = windows["rotation_deg"].to_numpy()
        per_query = pa.table(
            {
                "photo_id": photos["id"].astype(str).to_numpy(),
                "positives": [len(p) for p in positives],
                "first_positive_rank": ranks,
                "top_ids": [[str(ids[i]) for i in r if i >= 0] for r in nearest],
                "top_rotations": [[int(rot[i]) for i in r if i >= 0] for r in nearest],
                "top_scores": [[float(v) for v, i in zip(sc, r) if i >= 0] for sc, r in zip(scores, nearest)],
            }
        )
        out = Path(s.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(out.with_name("queries.parquet")) as tmp:
            pq.write_table(per_query, tmp)
        with atomic_output(out) as tmp:
            tmp.write_text(json.dumps(summary, indent=1) + "\n")
            run.before_replace(tmp)
        lines = [
            f"eval: {len(photos)} queries ({dropped} dropped: no positive in the database; "
            f"{summary['queries_without_footprint']} photos without a footprint) against "
            f"{len(db.keys)} windows x rotations = {len(ids)} entries, searched: {space_line} -> {out}"
        ]
        lines.append("  recall@N   " + "  ".join(f"@{n}: {summary['recall'][str(n)]:.3f}" for n in s.ks))
        lines.append("  random     " + "  ".join(f"@{n}: {summary['random_recall'][str(n)]:.3f}" for n in s.ks))
        if "exact_recall" in summary:
            lines.append("  exact      " + "  ".join(f"@{n}: {summary['exact_recall'][str(n)]:.3f}" for n in s.ks))
        lines.append(
            f"  search {summary['search_ms_per_query']:.2f} ms per query ({s.index}); descriptors "
            f"{summary['descriptor_memory_mb']:.1f} MiB ({summary['dim']} values x {len(ids)} entries)"
        )
        if s.preview:
            lines.append("  preview: " + self._preview(s, per_query, positives, size))
        return "\n".join(lines)

    @staticmethod
    def _space(s: EvalSettings, photos, q_desc, positives, windows, db_desc, size: int):
        """Restrict the search (see ``space``): the queries and entries kept, and for ``visible`` each query's
        allowed entries (Q, M) bool."""
        from pipeline.evaluate import cap_radius_km, great_circle_km
        from pipeline.geometry.windows import Window

        cfg, queries = EvalStage._described(s.store)
        q = queries.loc[photos["id"]]
        unique = pd.unique(windows["id"])
        centres = {t: Window.from_tile_id(t, size).corners_lonlat().mean(axis=0) for t in unique}
        wc = np.array([centres[t] for t in windows["id"]])
        if s.space == "region":
            lon0, lat0 = s.center
            qk = great_circle_km(q["center_lon"], q["center_lat"], lon0, lat0) <= s.query_km
            wk = great_circle_km(wc[:, 0], wc[:, 1], lon0, lat0) <= s.window_km
            photos, q_desc = photos[qk].reset_index(drop=True), q_desc[qk]
            positives = [p for p, keep in zip(positives, qk) if keep]
            windows, db_desc = windows[wk].reset_index(drop=True), db_desc[wk]
            return (
                photos,
                q_desc,
                positives,
                windows,
                db_desc,
                None,
                f"a region: queries within {s.query_km:g} km and windows within {s.window_km:g} km of "
                f"lon {lon0:g}, lat {lat0:g}",
            )
        if not {"nadir_lon", "nadir_lat"} <= set(q.columns) or q[["nadir_lon", "nadir_lat"]].isna().any().any():
            raise StageError(
                f"--space visible needs every query's nadir_lat and nadir_lon ({cfg['queries']} lacks "
                "some); use --space all or region"
            )
        r = cap_radius_km(s.visible_km2)
        allowed = (
            great_circle_km(
                q["nadir_lon"].to_numpy()[:, None], q["nadir_lat"].to_numpy()[:, None], wc[None, :, 0], wc[None, :, 1]
            )
            <= r
        )
        return (
            photos,
            q_desc,
            positives,
            windows,
            db_desc,
            allowed,
            f"per query, the windows within {r:.0f} km of its nadir ({s.visible_km2:.3g} km2)",
        )

    @staticmethod
    def _described(store: str) -> tuple[dict, pd.DataFrame]:
        """What the describe run behind ``store`` read: its settings (the ``[describe]`` table saved beside the
        store) and its queries indexed by photo_id (text)."""
        from manifests import read_queries

        cfg = tomllib.loads(Path(store + ".config.toml").read_text())["describe"]
        q, _ = read_queries(cfg["queries"], check_images=False, on_error="collect")
        return cfg, q.assign(photo_id=q["photo_id"].astype(str)).set_index("photo_id")

    @staticmethod
    def _size_tiles(store: str) -> int:
        """The windows' size, from the describe run's database (recorded beside the store)."""
        cfg = Path(store + ".config.toml")
        try:
            database = tomllib.loads(cfg.read_text())["describe"]["database"]
            return int(
                read_manifest(database, "database", columns=["size_tiles"], geometry=False)["size_tiles"].iloc[0]
            )
        except (OSError, KeyError, IndexError, ValueError):
            return 4

    @staticmethod
    def _preview(
        s: EvalSettings, per_query: pa.Table, positives: list[set[str]], size: int, n: int = 8, top: int = 5
    ) -> str:
        """Queries beside their top windows, framed green (a positive) or red."""
        import cv2

        from pipeline.descriptors import rotate
        from pipeline.geometry.windows import Window
        from pipeline.imagery.photos import read_photo
        from pipeline.tile_sources import open_tile_source

        cfg, queries = EvalStage._described(s.store)
        paths = queries["image_path"].to_dict()
        source = open_tile_source(cfg["tiles"])
        cell = 160
        rows = []
        for r in range(min(n, per_query.num_rows)):
            pid = per_query["photo_id"][r].as_py()
            tiles = [cv2.resize(read_photo(paths[pid]), (cell, cell), interpolation=cv2.INTER_AREA)]
            for tid, rot in list(zip(per_query["top_ids"][r].as_py(), per_query["top_rotations"][r].as_py()))[:top]:
                img = rotate(source.read_window(Window.from_tile_id(tid, size)).rgb, rot)
                img = cv2.resize(img, (cell, cell), interpolation=cv2.INTER_AREA)
                color = (40, 200, 40) if tid in positives[r] else (220, 40, 40)
                tiles.append(cv2.copyMakeBorder(img[6:-6, 6:-6], 6, 6, 6, 6, cv2.BORDER_CONSTANT, value=color))
            tiles += [np.zeros((cell, cell, 3), np.uint8)] * (top + 1 - len(tiles))
            rows.append(np.concatenate(tiles, axis=1))
        sheet = np.concatenate(rows, axis=0)
        with atomic_output(s.preview) as tmp:
            ok, png = cv2.imencode(".png", sheet[..., ::-1])
            tmp.write_bytes(png.tobytes())
        return f"{s.preview} ({len(rows)} queries: photo, then the top {top} windows; green right, red wrong)"


__all__ = ["EvalSettings", "EvalStage"]
