"""Demo data: one synthetic landscape seen by Sentinel-2 L2A and Landsat 8/9 C2 L2.

A seeded land-cover map (water, forest, cropland, grassland, urban, bare soil) on a 10 m
grid in UTM 31N is "observed" on three Sentinel-2 L2A and two Landsat Collection 2
Level-2 dates, with plausible surface reflectance spectra, crop phenology, clouds, cloud
shadows, cirrus and no-data borders, written in the products' own layouts (GeoTIFF
instead of JPEG2000 for Sentinel-2). Labels, the land-cover raster and a STAC catalogue
of the same scenes come with them. Layout under ``out_dir``::

    landcover_10m.tif            uint8 class codes (nodata 0), 10 m grid
    landcover_classes.json       {"1": "water", ...}
    labels.geojson               polygons inside homogeneous land cover, EPSG:4326
    manifest.json                what was written (also returned by :func:`generate`)
    scenes/sentinel2/<PRODUCT>.SAFE/MTD_MSIL2A.xml
    scenes/sentinel2/<PRODUCT>.SAFE/GRANULE/<GRANULE>/IMG_DATA/R10m/T31UFS_<time>_B02_10m.tif
                                                         .../R20m/..._B05_20m.tif, _SCL_20m.tif
                                                         .../R60m/..._B01_60m.tif
    scenes/landsat/<ID>/<ID>_SR_B1.TIF .. _SR_B7.TIF, <ID>_QA_PIXEL.TIF, <ID>_QA_RADSAT.TIF,
                        <ID>_MTL.txt
    stac/catalog.json            -> <collection>/collection.json -> <collection>/<id>/<id>.json

Every raster is a pure function of ``(size, seed)``: pixels are computed from their
coordinates and seeded parameters, in row blocks, so any size up to a full 10980 x 10980
Sentinel-2 tile stays within bounded memory, and the same seed gives byte-identical files.
Run as ``python -m pipelines.demo --out data/demo --size 512``.

Decisions
---------
* Metadata follow the real products (checked against real ``MTD_MSIL2A.xml`` of baselines
  02.12, 04.00, 05.09 and a real Landsat 8 C2 L2SP MTL): same element names, nesting and
  order, a subset of the elements (nothing the real files lack). Omitted: Spectral_Response
  curves, PHYSICAL_GAINS, Auxiliary_Data_Info and the quality-check lists (S2); the
  surface-temperature bands and groups and the Level-1 radiance groups (Landsat: the demo
  writes no ST_B10, although an L2SP product has one).
* Sentinel-2 DN (ESA L2A product definition): reflectance = (DN + BOA_ADD_OFFSET) /
  BOA_QUANTIFICATION_VALUE with quantification 10000 and, from baseline 04.00, offset
  -1000, so DN = round(reflectance * 10000) + 1000. Valid pixels are clamped to 1..65534:
  0 is NODATA and 65535 SATURATED (``Special_Values``). Before 04.00 a negative
  reflectance cannot be encoded and ends at DN 1.
* Sen2Cor over-corrects dark water in the SWIR (:data:`S2_WATER_OVERCORRECTION`), so part
  of the water pixels of the 04.00+ scenes have DN < 1000, i.e. negative reflectance, as
  real products show.
* Landsat DN (USGS LSDS-1619): reflectance = DN * 2.75e-5 - 0.2; clear surfaces stay in
  the documented valid range 7273..43636 (reflectance 0..1).
* Saturation: a few bright roofs (:attr:`Layout.roof_units`) saturate the visible bands.
  Sentinel-2 writes DN 65535 there and SCL class 1 (saturated or defective); Landsat sets
  QA_RADSAT bit n-1 for each saturated SR band n (LSDS-1619) and writes that band's
  QUANTIZE_CAL_MAX (65535). QA_RADSAT is 0 elsewhere, fill included, without a nodata tag
  (as the real file).
* STAC: platform names in STAC form (``sentinel-2a``, ``landsat-8``). ``raster:bands``
  describe the DNs as written (value = DN * scale + offset): Sentinel-2 offset
  BOA_ADD_OFFSET / 10000 (-0.1 from baseline 04.00, 0 before) with
  ``earthsearch:boa_offset_applied: false``, Earth Search v1's flag for DNs left as ESA
  wrote them; Landsat the MTL's REFLECTANCE_MULT / ADD. Landsat items carry
  ``landsat:correction`` (the processing level, USGS items), Sentinel-2 items
  ``processing:level`` and ``s2:processing_baseline``.
"""

# Where things live (pipelines/demo/, in the order a scene is made):
#   grid.py        CRS, origin, pixel sizes, Grid, corners, the GeoTIFF profile
#   noise.py       smooth seeded random fields (forest, clouds, cirrus)
#   landscape.py   land-cover classes, the seeded layout, landcover_10m.tif
#   scenes.py      SceneSpec, the five SCENES, select_scenes, SceneRecord
#   sky.py         clouds, shadows, cirrus, data footprint; Pixels of one block
#   radiometry.py  spectra, phenology, DN encoding, SCL / QA_PIXEL / QA_RADSAT
#   bands.py       render and write every band of one scene
#   sentinel2.py   SAFE layout and MTD_MSIL2A.xml
#   landsat.py     USGS layout and <ID>_MTL.txt
#   stac.py        STAC items, collections and catalogue
#   labels.py      labels.geojson
#   build.py       generate(): the whole run and manifest.json
#   cli.py         main(): python -m pipelines.demo

from __future__ import annotations

from pipelines.demo.build import generate
from pipelines.demo.cli import main
from pipelines.demo.landscape import (
    BARE,
    CLASSES,
    CROPLAND,
    FOREST,
    GRASSLAND,
    URBAN,
    WATER,
    make_layout,
)
from pipelines.demo.radiometry import COMMON_NAMES, ENDMEMBERS, qa_pixel_values
from pipelines.demo.scenes import SCENES, SceneSpec, select_scenes
from pipelines.demo.sky import Pixels

__all__ = [
    "BARE",
    "CLASSES",
    "COMMON_NAMES",
    "CROPLAND",
    "ENDMEMBERS",
    "FOREST",
    "GRASSLAND",
    "SCENES",
    "URBAN",
    "WATER",
    "Pixels",
    "SceneSpec",
    "generate",
    "main",
    "make_layout",
    "qa_pixel_values",
    "select_scenes",
]
