"""Widgets both windows share, drawn from plain values (a result, a notice, a legend): the one label maker and
the side panel's cards, the tile inspector and its probability bars, the heatmap's category toggles, colour
bars, filter notice and domain banner, the legend's Qt drawing, and the guard that lets a wheel scroll a panel
of controls. They hold no viewer state and connect to no model; the panels bind them to it.
"""
