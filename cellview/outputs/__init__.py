"""What a run writes and draws: CSV, GeoJSON (QuPath), run metadata JSON, the annotated PNG, the
legend every drawing shares (``legend.describe_legend``: screen, kiosk and files say the same thing),
the overlay's colours and outlines, and the cohort report (cohort.csv / .json / .html). Imports the
engine below it; a new export format is a module here plus its name in ``export.FORMATS``.
"""
