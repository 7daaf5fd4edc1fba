"""Geometry: Web Mercator tile math, database windows, areas and IoU on the ellipsoid."""
