"""``cellview serve``: the viewer as a web page, for a lab that shares one analysis machine. A Starlette app
(``app``) over the same Qt-free core as the desktop: uploads are checked by content and by the slide guards
(``uploads``), queue for one inference worker or a Dask cluster and are cached as in the CLI (``jobs``,
``cluster``), the slide is shown by OpenSeadragon from openslide-python's Deep Zoom generator (``deepzoom``),
and every readout (the call, the legend, the domain banner, a tile's scores) comes from the descriptions the
screen and the files use (``readouts``). Security by default (``security``): localhost only unless a token is
set, sessions that see only their own jobs. The page's JavaScript and CSS ship in ``static/``. Imports the
core, the outputs, the scale layer and the viewer's Qt-free state; nothing but ``cli`` imports it.
"""
