"""Slide input, the first step of the data's way: one small abstract ``Slide`` with an OpenSlide
implementation and a plain-image fallback, the µm-per-pixel rules (slide properties, TIFF tags,
objective power, the user's value), pyramid levels checked against level 0, the direct JPEG-tile TIFF
reader, and the structural guards that refuse damaged TIFF / DICOM / PNG files before a decoder sees them.
Imports only ``base``; format quirks stay here, at the edge.
"""
