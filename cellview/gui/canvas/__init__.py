"""The slide on screen: the pyramid view (``view.SlideView``, pyqtgraph) with its scene items (overlay, contours,
hatching, regions) and its overlay widgets (scale bar, overview, empty-canvas hint), and the loaders that read
display tiles and inspector patches on worker threads. Both windows show the slide through these; nothing here
knows a window.
"""
