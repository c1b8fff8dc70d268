"""Widgets both windows share, drawn from plain values (a result, a notice, a legend): the tile inspector and its
probability bars, the heatmap's category toggles, colour bars, filter notice and domain banner, the legend's Qt
drawing. They hold no viewer state and connect to no model; the panels bind them to it.
"""
