"""The panels, in the spirit of napari's ``_qt`` views: each renders one part of the viewer state and turns
input into calls on that part. A panel creates its widgets and connects them to its part's events; where they
sit is the window's choice, so the desktop's side panel and the kiosk's touch column place the same widgets.
Shared by both windows: the analysis status, the heatmap controls and the tile inspector (composed with the
canvas in ``gui.qt_viewer``); the desktop's alone: the model, run, colour and tissue controls. A panel knows the
model and the canvas, never a window: what it asks of the user goes through the window it is given as host.
"""
