"""The slide on screen: the pyramid view (``view.SlideView``, pyqtgraph) with its scene items (overlay, contours,
hatching, regions) and overlay widgets (scale bar, overview, empty-canvas hint); the loaders that read display
tiles and inspector patches on worker threads; ``controller`` binds the view to the model's slide, selection and
regions, and ``painter`` draws the heatmap as the exports do. Both windows show the slide through these; nothing
here knows a window or a panel.
"""
