"""Detections in map coordinates: box polygons in a raster's CRS, as GeoJSON (and GeoPackage /
Shapefile through fiona).

A detection box [x0, y0, x1, y1] in pixels of a georeferenced raster becomes the polygon of its
four corners mapped by the raster's affine transform (rasterio's ``dataset.transform``: pixel
(col, row) -> map (x, y), pixel corners at integer coordinates, so (0, 0) is the outer corner of
the top-left pixel). For a north-up raster (no rotation) the polygon is the box's footprint on
the ground; with a rotated transform it is the rotated quadrilateral. Rings are closed and
counter-clockwise (RFC 7946's right-hand rule).

Source: GeoJSON is RFC 7946 (https://www.rfc-editor.org/rfc/rfc7946) plus the legacy ``"crs"``
member of the 2008 GeoJSON spec naming the raster's CRS (``urn:ogc:def:crs:EPSG::<code>``, or
its WKT when it has no EPSG code), which GDAL/QGIS/geopandas read; RFC 7946 alone would mean
WGS 84 longitude/latitude, which the raster's CRS usually is not.
"""
import json
from typing import Optional, Sequence

import numpy as np

__all__ = ["box_polygons", "crs_member", "detections_feature_collection", "write_geojson",
           "write_vector", "VECTOR_DRIVERS", "require_georeference"]

#: ``--vector-format`` values written through fiona (GDAL/OGR drivers), file extension of each.
VECTOR_DRIVERS = {"gpkg": ("GPKG", ".gpkg"), "shp": ("ESRI Shapefile", ".shp")}


def require_georeference(path: str, crs, transform) -> None:
    """Raise unless the raster ``path`` has a CRS and a non-identity transform.

    Raises:
        ValueError: naming the file and why map coordinates cannot be written (no CRS, or pixel
            coordinates only: the identity transform GDAL reports for a plain image).
    """
    if crs is None or transform is None or transform.is_identity:
        why = "no CRS" if crs is None else "no geotransform (pixel coordinates only)"
        raise ValueError(f"{path} has {why}: detections cannot be written in map coordinates "
                         "(GeoJSON/GeoPackage); its pixel results are in results.json. Georeference the image "
                         "(e.g. gdal_translate -a_srs EPSG:XXXX -a_ullr ...) or leave out --geojson")


def box_polygons(boxes: np.ndarray, transform) -> np.ndarray:
    """Map polygons of pixel boxes.

    Args:
        boxes: [N, 4] XYXY pixels (x1/y1: the right/bottom edge, as detectron2's boxes).
        transform: ``affine.Affine``, pixel (col, row) -> map (x, y), map units.

    Returns:
        [N, 5, 2] float64 closed rings (x, y in map units), counter-clockwise.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    x0, y0, x1, y1 = boxes.T
    cols = np.stack([x0, x1, x1, x0, x0], axis=1)
    rows = np.stack([y0, y0, y1, y1, y0], axis=1)
    a, b, c, d, e, f = transform.a, transform.b, transform.c, transform.d, transform.e, transform.f
    ring = np.stack([a * cols + b * rows + c, d * cols + e * rows + f], axis=2)
    # shoelace over the ring: negative = clockwise (north-up rasters, whose e < 0), reversed then
    area2 = (ring[:, :-1, 0] * ring[:, 1:, 1] - ring[:, 1:, 0] * ring[:, :-1, 1]).sum(axis=1)
    ring[area2 < 0] = ring[area2 < 0, ::-1]
    return ring


def crs_member(crs) -> Optional[dict]:
    """The legacy GeoJSON ``"crs"`` member naming ``crs`` (a ``rasterio.crs.CRS``): its EPSG URN
    when it has an EPSG code, else its WKT; None for None."""
    if crs is None:
        return None
    epsg = crs.to_epsg()
    name = f"urn:ogc:def:crs:EPSG::{epsg}" if epsg else crs.to_wkt()
    return {"type": "name", "properties": {"name": name}}


def detections_feature_collection(boxes: np.ndarray, scores: Sequence[float], classes: Sequence[int],
                                  class_names: Sequence[str], category_ids: Sequence[int], crs,
                                  transform, image: str = "") -> dict:
    """A GeoJSON FeatureCollection of detections: one Polygon feature per box, in the raster's CRS.

    Args:
        boxes: [N, 4] XYXY pixels. scores: N in [0, 1]. classes: N contiguous class indices.
        class_names, category_ids: per contiguous class (the model's, see
            ``d2_anchorfree.checkpoint.classes``).
        crs: ``rasterio.crs.CRS``. transform: ``affine.Affine`` (pixel -> map units).
        image: the input's name, stored in each feature's properties.

    Returns:
        dict: ``{"type": "FeatureCollection", "crs": ..., "features": [...]}``; each feature's
        ``properties``: ``score``, ``category_id`` (dataset id), ``class_name``, ``image`` and
        ``bbox_px`` ([x, y, w, h] pixels, as results.json).
    """
    rings = box_polygons(boxes, transform)
    features = []
    for ring, box, score, cls in zip(rings, np.asarray(boxes).reshape(-1, 4), scores, classes):
        x0, y0, x1, y1 = (float(v) for v in box)
        features.append({
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [ring.tolist()]},
            "properties": {"score": float(score), "category_id": int(category_ids[int(cls)]),
                           "class_name": str(class_names[int(cls)]), "image": image,
                           "bbox_px": [x0, y0, x1 - x0, y1 - y0]},
        })
    collection = {"type": "FeatureCollection", "features": features}
    member = crs_member(crs)
    if member is not None:
        collection["crs"] = member
    return collection


def write_geojson(path: str, collection: dict) -> None:
    """Write ``collection`` to ``path`` (UTF-8 JSON)."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(collection, f)


def write_vector(path: str, collection: dict, crs, fmt: str) -> int:
    """Write the features of ``collection`` to a GeoPackage or Shapefile at ``path`` through
    fiona (GDAL/OGR), in ``crs``; properties as in GeoJSON but with Shapefile-safe names (at
    most 10 characters): ``score``, ``category`` (the dataset category id), ``class_name``,
    ``image``, and ``bbox_px`` split into ``x``, ``y``, ``w``, ``h`` (pixels).

    Args:
        path: the output file. collection: a :func:`detections_feature_collection` result.
        crs: its ``rasterio.crs.CRS``. fmt: a key of :data:`VECTOR_DRIVERS`.

    Returns:
        int: the number of features written.

    Raises:
        ValueError: unknown ``fmt``. ImportError: fiona is not installed (naming the extra).
    """
    if fmt not in VECTOR_DRIVERS:
        raise ValueError(f"--vector-format must be one of {sorted(VECTOR_DRIVERS)}, got {fmt!r}")
    try:
        import fiona
    except ImportError as e:
        raise ImportError("GeoPackage / Shapefile output needs fiona: pip install 'd2_anchorfree[geo]'") from e
    schema = {"geometry": "Polygon", "properties": {"score": "float", "category": "int", "class_name": "str",
                                                    "image": "str", "x": "float", "y": "float", "w": "float",
                                                    "h": "float"}}
    with fiona.open(path, "w", driver=VECTOR_DRIVERS[fmt][0], schema=schema, crs_wkt=crs.to_wkt()) as out:
        for feat in collection["features"]:
            p = feat["properties"]
            x, y, w, h = p["bbox_px"]
            out.write({"geometry": feat["geometry"],
                       "properties": {"score": p["score"], "category": p["category_id"],
                                      "class_name": p["class_name"], "image": p["image"],
                                      "x": x, "y": y, "w": w, "h": h}})
    return len(collection["features"])
