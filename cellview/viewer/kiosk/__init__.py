"""The kiosk's Qt-free core: its settings file (settings: salvaged field by field when damaged), the watch
folder that hands over slides once they stop growing (watch), and the cases analysed, exported to the outbox
and kept in a recent-cases list (cases). ``gui.kiosk`` is its window, built from the same panels as the desktop's.
"""
