"""Slide input, the first step of the data's way: one small abstract ``Slide`` (slide) with an OpenSlide
implementation and ``open_slide`` (opening) and a plain-image fallback (image_slide), the µm-per-pixel rules
(slide properties, TIFF tags, objective power, the user's value), pyramid levels checked against level 0
(levels), the direct JPEG-tile TIFF reader (direct_tiff), and the structural guards that refuse damaged
TIFF / DICOM / PNG files before a decoder sees them (guards). Imports only ``base``; format quirks stay here,
at the edge.
"""
